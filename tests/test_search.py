"""Subnet search: exhaustive and evolutionary on toy scorers, the BN-recalibrating scorer, plans."""

from __future__ import annotations

import itertools
import json

import pytest
import timm
import torch
from timm.models.resnet import BasicBlock, ResNet

from updp.core.errors import InputError
from updp.pruning import PrunePlan, find_blocks
from updp.pruning.latency_lut import BlockLatency, LatencyLUT
from updp.pruning.search import (
    EvolutionConfig,
    SearchSpace,
    SubnetScorer,
    evolutionary_search,
    exhaustive_search,
    random_picks,
    search,
)
from updp.pruning.supernet import active_subnet, build_supernet, set_subnet

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
    assert search(small, score).method == "exhaustive"  # C(8,2) = 28
    big = SearchSpace(tuple(range(8)), target_blocks=4)  # C(8,4) = 70 > 64
    out = search(big, score, evolution=EvolutionConfig(max_evals=30, seed=1))
    assert out.method == "evolutionary" and out.n_evals <= 30
    with pytest.raises(InputError, match="unknown search method"):
        search(small, score, method="greedy")


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
    out = evolutionary_search(space, _toy_score(DAMAGE), EvolutionConfig(population=8, max_evals=60, seed=0))
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


def test_scorer_recalibrates_and_restores_bn_state():
    torch.manual_seed(0)
    # a ResNet: its BNs are shared by both forms of a block
    model = ResNet(BasicBlock, layers=(1, 1, 1, 1), num_classes=3).eval()
    build_supernet(model, [0, 1])
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(8, 3, SIZE, SIZE, generator=g) for _ in range(2)]
    holdout = [(torch.randn(16, 3, SIZE, SIZE, generator=g), torch.arange(16) % 3)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scorer = SubnetScorer(model, calib, holdout)
    set_subnet(model, [1])
    a = scorer((0,))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # statistics restored, weights untouched
    assert active_subnet(model) == (1,)
    assert scorer((0,)) == a  # no contamination between candidates
    scorer((0, 1))
    assert scorer((0,)) == a
    assert 0.0 <= a <= 1.0 and scorer.n_scored == 4


def test_plan_with_search_records_round_trips_and_v1_loads(tmp_path):
    plan = PrunePlan(model="timm:convnext_atto", input_size=(3, SIZE, SIZE), blocks=[1, 3],
                     block_names=["stages.0.blocks.1", "stages.1.blocks.1"],
                     selection_rule="evolutionary: holdout acc, target 2 blocks",
                     search={"method": "evolutionary", "n_evals": 40},
                     scores={"winner": 0.9, "baseline": 0.92, "random_picks": [{"blocks": [0, 2], "acc": 0.8}]},
                     latency={"predicted_speedup": 1.2, "measured_speedup": 1.18},
                     supernet={"epochs": 3, "kd_alpha": 0.5})
    path = tmp_path / "plan.json"
    plan.save(str(path))
    assert PrunePlan.load(str(path)) == plan
    # a version-1 plan written before these fields existed still loads, and writes the same JSON
    old = {"model": "timm:convnext_atto", "input_size": [3, 64, 64], "blocks": [1, 3], "block_names": [],
           "lam": 1.0, "selection_rule": "manual", "model_kwargs": {}, "num_classes": None,
           "block_options": {}, "notes": "", "schema_version": 1}
    loaded = PrunePlan.from_dict(old)
    assert loaded.scores is None and loaded.search is None
    assert json.loads(loaded.to_json()) == old
    with pytest.raises(InputError, match="scores must be a JSON object"):
        PrunePlan.from_dict({**old, "scores": [1]})


def test_plan_naming_missing_blocks_is_one_line_input_error():
    model = timm.create_model("convnext_atto", depths=(1, 1, 2, 1))
    ok = PrunePlan(model="timm:convnext_atto", input_size=(3, SIZE, SIZE), blocks=[1],
                   block_names=[find_blocks(model)[1].name])
    assert [b.index for b in ok.check_model(model)] == [1]
    for bad, match in [
        (PrunePlan(model="timm:convnext_atto", input_size=(3, SIZE, SIZE), blocks=[7]), "block 7 does not exist"),
        (PrunePlan(model="timm:convnext_atto", input_size=(3, SIZE, SIZE), blocks=[1],
                   block_names=["stages.2.blocks.5"]), "plan names 'stages.2.blocks.5'"),
    ]:
        with pytest.raises(InputError, match=match) as e:
            bad.check_model(model)
        assert "\n" not in str(e.value)


def test_run_search_end_to_end(tmp_path):
    from updp.pruning.search import run_search

    torch.manual_seed(0)
    kwargs = {"depths": [1, 1, 2, 1]}
    model = timm.create_model("convnext_atto", num_classes=10, **kwargs).eval()
    spec = {"model": "timm:convnext_atto", "kwargs": kwargs, "num_classes": 10, "input_size": [3, SIZE, SIZE]}
    torch.save({"model": model.state_dict(), "model_spec": spec, "plan": None}, tmp_path / "base.pt")
    res = run_search(str(tmp_path / "base.pt"), "digits", target_blocks=2, out=str(tmp_path / "plan.json"),
                     epochs=1, max_steps_per_epoch=2, batch_size=32, calib_batches=1, n_random=2,
                     bench_repeats=10, profile_rounds=2, progress=False, device="cpu")
    assert res.method == "exhaustive" and res.n_evals == 10 and len(res.blocks) == 2
    assert len(res.random_picks) == 2 and res.measured_speedup > 0 and res.predicted_speedup > 1
    plan = PrunePlan.load(str(tmp_path / "plan.json"))
    assert plan.blocks == res.blocks and plan.block_names == res.block_names
    assert plan.selection_rule == "exhaustive: holdout acc, target 2 blocks"
    assert plan.scores["winner"] == res.holdout_acc and len(plan.scores["random_picks"]) == 2
    assert plan.latency["measured_speedup"] == res.measured_speedup and plan.latency["lut_setup"]["threads"] == 2
    assert plan.supernet["epochs"] == 1
    assert (tmp_path / "plan.lut.json").is_file() and (tmp_path / "plan.supernet.pt").is_file()
    assert "pruned blocks" in res.format_summary() and json.dumps(res.to_dict(), default=str)
    plan.check_model(model)
    # the trained supernet is reused without training, and a wrong target is one line
    again = run_search(str(tmp_path / "base.pt"), "digits", target_blocks=2, out=str(tmp_path / "plan2.json"),
                       epochs=1, reuse_supernet=True, supernet_out=str(tmp_path / "plan.supernet.pt"),
                       lut=str(tmp_path / "plan.lut.json"), calib_batches=1, n_random=0, measure=False,
                       batch_size=32, progress=False, device="cpu")
    assert again.blocks == res.blocks and again.holdout_acc == res.holdout_acc
    with pytest.raises(InputError, match="exactly one of"):
        run_search(str(tmp_path / "base.pt"), "digits", out=str(tmp_path / "p.json"), epochs=0)


def test_pool_running_stats_equals_calibrating_on_all_batches():
    """Sharded BN calibration pooled by batch counts = calibration on every batch (float64, exact)."""
    from updp.pruning.convert import calibrate_bn
    from updp.pruning.search import pool_running_stats

    torch.manual_seed(0)
    batches = [torch.randn(4 + i, 3, 5, 5, dtype=torch.float64) * (1 + i) + i for i in range(5)]

    def stats(bs):
        m = torch.nn.Sequential(torch.nn.BatchNorm2d(3).double())
        calibrate_bn(m, bs, which="all")
        return torch.cat([m[0].running_mean, m[0].running_var])

    whole = stats(batches)
    for world in (2, 3):
        shards = [batches[r::world] for r in range(world)]
        pooled = pool_running_stats([len(s) for s in shards], torch.stack([stats(s) for s in shards]))
        torch.testing.assert_close(pooled, whole, rtol=1e-12, atol=1e-12)
    # an unweighted mean of the shards would be wrong for uneven shards (3 + 2 batches)
    uneven = torch.stack([stats(batches[0::2]), stats(batches[1::2])])
    assert not torch.allclose(uneven.mean(0), whole, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="do not fit"):
        pool_running_stats([1], uneven)
    with pytest.raises(ValueError, match="do not fit"):
        pool_running_stats([0, 0], uneven)
