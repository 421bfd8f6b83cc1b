"""Subnet search: exhaustive and evolutionary on toy scorers, budgets, random picks."""

from __future__ import annotations

import itertools

import pytest

from updp.core.errors import InputError
from updp.latency.lut import BlockLatency, LatencyLUT
from updp.training.search import EvolutionConfig, SearchSpace, evolutionary_search, exhaustive_search, random_picks
from updp.training.search import search as run_search_algorithm

EVO = EvolutionConfig(population=16, parents=6, max_evals=60)


SIZE = 32


def _lut(n: int = 8) -> LatencyLUT:
    """A synthetic table: 1 ms baseline of n blocks, block i saves (i + 1) * 10 µs of wall time."""
    blocks = [BlockLatency(index=i, name=f"blocks.{i}", base_us=100.0, pruned_us=100.0 - 10.0 * (i + 1))
              for i in range(n)]
    k0 = 100.0 * n
    return LatencyLUT(model="toy", input_shape=[1, 3, 8, 8], blocks=blocks, base_ms=1.0, all_pruned_ms=0.0,
                      ms_per_kernel_us=1e-3, remainder_ms=1.0 - 1e-3 * k0)


def _toy_score(weights):
    """Accuracy = 1 - sum of the pruned blocks' damage."""
    return lambda s: 1.0 - sum(weights[i] for i in s)


DAMAGE = {0: 0.05, 1: 0.01, 2: 0.08, 3: 0.02, 4: 0.03, 5: 0.04, 6: 0.07, 7: 0.06}


def test_exhaustive_finds_the_best_k_subset():
    space = SearchSpace(tuple(range(8)), target_blocks=3, lut=_lut())
    calls = []
    score = _toy_score(DAMAGE)
    out = exhaustive_search(space, lambda s: calls.append(s) or score(s))
    assert out.best.blocks == [1, 3, 4]
    assert out.n_evals == out.space_size == 56 == len(set(calls))
    assert out.evaluated[0] is out.best and out.best.acc == pytest.approx(0.94)
    assert out.rule == "exhaustive: holdout acc, target 3 blocks"


def test_ties_go_to_the_faster_subnet():
    space = SearchSpace(tuple(range(8)), target_blocks=2, lut=_lut())
    out = exhaustive_search(space, lambda s: 0.5)  # every subnet scores the same
    assert out.best.blocks == [6, 7]  # the two largest savings
    assert out.best.speedup == pytest.approx(1.0 / (1.0 - 0.15))


def test_auto_picks_exhaustive_for_small_spaces_else_evolutionary():
    score = _toy_score(DAMAGE)
    small = SearchSpace(tuple(range(8)), target_blocks=2)
    picked = run_search_algorithm(small, score, method="auto", exhaustive_limit=64, evolution=EVO)
    assert picked.method == "exhaustive"  # C(8,2) = 28
    big = SearchSpace(tuple(range(8)), target_blocks=4)  # C(8,4) = 70 > 64
    out = run_search_algorithm(big, score, method="auto", exhaustive_limit=64,
                               evolution=EvolutionConfig(population=16, parents=6, max_evals=30, seed=1))
    assert out.method == "evolutionary" and out.n_evals <= 30
    with pytest.raises(InputError, match="unknown search method"):
        run_search_algorithm(small, score, method="greedy", exhaustive_limit=64, evolution=EVO)


def test_evolutionary_respects_block_budget_and_is_seeded():
    damage = {i: 0.01 * ((7 * i) % 13 + 1) for i in range(16)}
    space = SearchSpace(tuple(range(16)), target_blocks=4)
    cfg = EvolutionConfig(population=10, parents=4, max_evals=80, seed=3)
    a = evolutionary_search(space, _toy_score(damage), cfg)
    b = evolutionary_search(space, _toy_score(damage), cfg)
    assert [c.blocks for c in a.evaluated] == [c.blocks for c in b.evaluated]
    assert all(len(c.blocks) == 4 and len(set(c.blocks)) == 4 for c in a.evaluated)
    assert a.n_evals <= 80
    best = sorted(range(16), key=lambda i: damage[i])[:4]
    # 80 of 1820 subnets scored: the separable toy objective must be solved or nearly so
    assert 1 - a.best.acc <= sum(damage[i] for i in best) + 0.02
    c = evolutionary_search(space, _toy_score(damage), EvolutionConfig(population=10, parents=4, max_evals=80, seed=4))
    assert [x.blocks for x in c.evaluated] != [x.blocks for x in a.evaluated]


def test_evolutionary_respects_speedup_budget():
    lut = _lut(8)
    space = SearchSpace(tuple(range(8)), target_speedup=1.25, lut=lut)  # saving >= 0.2 ms
    out = evolutionary_search(space, _toy_score(DAMAGE), EvolutionConfig(population=8, parents=6, max_evals=60, seed=0))
    assert out.evaluated and all(lut.speedup(c.blocks) >= 1.25 - 1e-9 for c in out.evaluated)
    # exhaustive reference over every feasible subnet
    feasible = [s for k in range(9) for s in itertools.combinations(range(8), k) if space.feasible(s)]
    ref = exhaustive_search(space, _toy_score(DAMAGE))
    assert ref.n_evals == len(feasible)
    assert out.best.acc <= ref.best.acc
    assert out.best.acc >= ref.best.acc - 0.02


def test_space_errors():
    with pytest.raises(InputError, match="exactly one target"):
        SearchSpace((0, 1, 2))
    with pytest.raises(InputError, match="3 candidate blocks"):
        SearchSpace((0, 1, 2), target_blocks=4)
    with pytest.raises(InputError, match="needs a latency table"):
        SearchSpace((0, 1, 2), target_speedup=1.2)
    with pytest.raises(InputError, match="out of reach"):
        SearchSpace(tuple(range(8)), target_speedup=10.0, lut=_lut())


def test_random_picks_same_size_and_distinct():
    space = SearchSpace(tuple(range(8)), target_blocks=3)
    picks = random_picks(space, _toy_score(DAMAGE), 3, 5, seed=0, exclude=[1, 3, 4])
    assert len(picks) == 5 and len({tuple(p.blocks) for p in picks}) == 5
    assert all(len(p.blocks) == 3 and p.blocks != [1, 3, 4] for p in picks)
    assert [p.blocks for p in picks] == [p.blocks for p in random_picks(space, _toy_score(DAMAGE), 3, 5, seed=0,
                                                                         exclude=[1, 3, 4])]

