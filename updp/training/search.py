"""UPDP step 2: subnet search. Which blocks to prune, under a budget, scored on held-out data.

Budget (`SearchSpace`): exactly K pruned blocks (`target_blocks`, the paper's Pk), or a predicted
speedup of at least S (`target_speedup`, from a `LatencyPredictor`).

Score of a candidate subnet (`updp.training.scoring.SubnetScorer`): the supernet's accuracy with
that subnet active, on the `holdout` split (carved from the training split and never trained on;
`val` stays untouched for reporting), after recalibrating the BatchNorm statistics for that subnet
on a few fixed training batches. The supernet's BNs saw a mixture of subnets during training, and a
BN shared by both forms of a block (ResNet) saw both, so the running statistics fit no single
subnet; recalibration is what makes supernet-inherited accuracy predictive (Cai et al. 2020,
"Once-for-All", §3.3). The BN statistics are restored after every candidate, so candidates cannot
contaminate each other.

Ranking: higher holdout accuracy first; ties (holdout accuracy is a count) go to the lower
predicted latency, then to the lexicographically smaller block list (deterministic).

Methods:

* exhaustive: every feasible subnet, when there are at most `exhaustive_limit`;
* evolutionary (default otherwise; after Guo et al. 2020, "Single Path One-Shot", §3.3): a random
  feasible population; each generation takes the top `parents` of everything scored so far and
  breeds children by mutation (swap one pruned block for an unpruned one; for a speedup budget also
  add or remove one) and crossover (keep the blocks both parents prune, fill from the rest); only
  feasible, never-scored children are kept. It stops at `max_evals` scored subnets or when no new
  child can be bred. Seeded: the same seed and scorer give the same result.

The search's pick is compared with random picks of the same size scored the same way: a search
that does not beat them is not worth its cost.

Latency comes in through `LatencyPredictor`, a small protocol the caller passes in (the ORT
latency table `updp.latency.lut.LatencyLUT` implements it): this module neither exports nor times
anything. Scoring on held-out data is `updp.training.scoring`; the whole step behind
`updp search` (baseline checkpoint → latency table → supernet → search → random-pick comparison →
full-model measurement of the winner → plan) is `updp.workflows.search`.
"""


from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from updp.core.errors import InputError

logger = logging.getLogger(__name__)


class LatencyPredictor(Protocol):
    """Predicted latency of subnets, as the search needs it (implemented by `LatencyLUT`).

    Attributes:
        indices: the block indices it can predict for.
    """

    indices: list[int]

    def predict(self, pruned: Iterable[int]) -> float:
        """Predicted latency (ms) of the subnet that prunes `pruned`."""

    def speedup(self, pruned: Iterable[int]) -> float:
        """Predicted speedup over the unpruned model."""

    def blocks_needed(self, target_speedup: float, candidates: Sequence[int] | None = None) -> tuple[int, int]:
        """(fewest, always enough) numbers of pruned blocks for a speedup target."""


METHODS = ("auto", "evolutionary", "exhaustive")
_COUNT_ENUMERATE_MAX = 20  # speedup budgets: count feasible subsets by enumeration up to 2^20


# ------------------------------------------------------------------ the space

@dataclass
class SearchSpace:
    """Feasible subnets: subsets of `candidates` meeting the budget.

    Attributes:
        candidates: candidate block indices.
        target_blocks: exactly this many pruned blocks.
        target_speedup: predicted speedup >= this (needs `lut`).
        lut: the latency table (predicts latency; optional for a block budget, where it only
            breaks ties and reports).
    """

    candidates: tuple[int, ...]
    target_blocks: int | None = None
    target_speedup: float | None = None
    lut: LatencyPredictor | None = None
    _count: int | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.candidates = tuple(sorted({int(i) for i in self.candidates}))
        n = len(self.candidates)
        if n == 0:
            raise InputError("search: no candidate blocks")
        if (self.target_blocks is None) == (self.target_speedup is None):
            raise InputError("search: give exactly one target: --target-blocks K or --target-speedup S")
        if self.target_blocks is not None and not 1 <= self.target_blocks <= n:
            raise InputError(f"--target-blocks {self.target_blocks}: there are {n} candidate blocks")
        if self.target_speedup is not None:
            if self.lut is None:
                raise InputError("--target-speedup needs a latency table")
            if self.target_speedup <= 0:
                raise InputError(f"--target-speedup must be > 0, got {self.target_speedup}")
            self.lut.blocks_needed(self.target_speedup, self.candidates)  # InputError when out of reach
        if self.lut is not None:
            missing = sorted(set(self.candidates) - set(self.lut.indices))
            if missing:
                raise InputError(f"the latency table does not cover candidate block(s) {missing}")

    def describe(self) -> str:
        if self.target_blocks is not None:
            return f"target {self.target_blocks} blocks"
        return f"target speedup >= {self.target_speedup:g}x (predicted)"

    def feasible(self, s: Iterable[int]) -> bool:
        s = tuple(s)
        if len(set(s)) != len(s) or not set(s) <= set(self.candidates):
            return False
        if self.target_blocks is not None:
            return len(s) == self.target_blocks
        return self.lut.speedup(s) >= self.target_speedup * (1 - 1e-12)

    def latency_ms(self, s: Iterable[int]) -> float | None:
        return self.lut.predict(s) if self.lut is not None else None

    def speedup(self, s: Iterable[int]) -> float | None:
        return self.lut.speedup(s) if self.lut is not None else None

    def count(self) -> int | None:
        """Number of feasible subnets, or None when too many subsets to count."""
        n = len(self.candidates)
        if self.target_blocks is not None:
            return math.comb(n, self.target_blocks)
        if n > _COUNT_ENUMERATE_MAX:
            return None
        if self._count is None:  # up to 2^20 latency predictions: do it once
            self._count = sum(1 for _ in self._enumerate_speedup())
        return self._count

    def _enumerate_speedup(self):
        for k in range(len(self.candidates) + 1):
            for s in itertools.combinations(self.candidates, k):
                if self.feasible(s):
                    yield s

    def enumerate(self) -> list[tuple[int, ...]]:
        """Every feasible subnet (sorted tuples)."""
        if self.target_blocks is not None:
            return list(itertools.combinations(self.candidates, self.target_blocks))
        if len(self.candidates) > _COUNT_ENUMERATE_MAX:
            raise InputError(f"search space too large to enumerate ({len(self.candidates)} candidates with a "
                             "speedup target): use the evolutionary method")
        return list(self._enumerate_speedup())

    def random_member(self, rng: np.random.Generator, size: int | None = None,
                      tries: int = 200) -> tuple[int, ...] | None:
        """A random feasible subnet (of `size` blocks if given), or None if none was found.

        Block budget: a uniform K-subset. Speedup budget without a size: blocks in random order are
        added until the target is met (so the subnet is minimal in that order).
        """
        cand = self.candidates
        if self.target_blocks is not None or size is not None:
            k = self.target_blocks if size is None else int(size)
            if self.target_blocks is not None and k != self.target_blocks:
                return None
            if not 0 <= k <= len(cand):
                return None
            for _ in range(tries):
                s = tuple(sorted(int(cand[j]) for j in rng.choice(len(cand), size=k, replace=False)))
                if self.feasible(s):
                    return s
            return None
        order = [int(cand[j]) for j in rng.permutation(len(cand))]
        chosen: list[int] = []
        for b in order:
            chosen.append(b)
            if self.feasible(sorted(chosen)):
                return tuple(sorted(chosen))
        return None


# ------------------------------------------------------------------ candidates and outcome

@dataclass
class Candidate:
    """A scored subnet."""

    blocks: list[int]
    acc: float
    latency_ms: float | None = None
    speedup: float | None = None
    order: int = 0

    def key(self) -> tuple:
        """Sort key, best first (see the module docstring)."""
        return (-self.acc, self.latency_ms if self.latency_ms is not None else 0.0, tuple(self.blocks))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SearchOutcome:
    """Result of `search`: the best subnet and every scored one, best first."""

    method: str
    rule: str
    best: Candidate
    evaluated: list[Candidate]
    n_evals: int
    space_size: int | None
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)

    def top(self, n: int) -> list[Candidate]:
        return self.evaluated[:n]

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        ev = self.evaluated if top is None else self.evaluated[:top]
        return {"method": self.method, "rule": self.rule, "best": self.best.to_dict(),
                "evaluated": [c.to_dict() for c in ev], "n_evals": self.n_evals, "space_size": self.space_size,
                "seconds": self.seconds, "config": dict(self.config)}


@dataclass
class EvolutionConfig:
    """Evolutionary search settings.

    Attributes:
        population: initial population and children per generation.
        parents: top subnets (of all scored so far) that breed.
        max_evals: budget of scored subnets (repeats are free: scores are cached).
        generations: upper bound on generations.
        mutation_prob: share of children made by mutation (the rest by crossover).
        seed: seeds every random choice.
    """

    population: int
    parents: int
    max_evals: int
    generations: int = 50
    mutation_prob: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.population < 2 or self.parents < 1 or self.max_evals < 1 or self.generations < 0:
            raise InputError(f"evolutionary search needs population >= 2, parents >= 1, max_evals >= 1 "
                             f"(got {self.population}, {self.parents}, {self.max_evals})")
        if not 0.0 <= self.mutation_prob <= 1.0:
            raise InputError(f"mutation_prob must be in [0, 1], got {self.mutation_prob}")


ScoreFn = Callable[[tuple[int, ...]], float]


class _Evaluator:
    """Scores subnets once each (cache), records the order, enforces the budget."""

    def __init__(self, space: SearchSpace, score: ScoreFn, budget: int | None) -> None:
        self.space, self.score, self.budget = space, score, budget
        self.cache: dict[tuple[int, ...], Candidate] = {}

    @property
    def full(self) -> bool:
        return self.budget is not None and len(self.cache) >= self.budget

    def __call__(self, s: Sequence[int]) -> Candidate | None:
        s = tuple(sorted(int(i) for i in s))
        if s in self.cache:
            return self.cache[s]
        if self.full:
            return None
        if not self.space.feasible(s):
            raise InputError(f"search: subnet {list(s)} violates the budget ({self.space.describe()})")
        acc = float(self.score(s))
        c = Candidate(blocks=list(s), acc=acc, latency_ms=self.space.latency_ms(s),
                      speedup=self.space.speedup(s), order=len(self.cache))
        self.cache[s] = c
        logger.info("subnet %s: holdout acc %.4f%s", list(s), acc,
                    f", predicted speedup {c.speedup:.3f}x" if c.speedup is not None else "")
        return c

    def ranked(self) -> list[Candidate]:
        return sorted(self.cache.values(), key=Candidate.key)


def exhaustive_search(space: SearchSpace, score: ScoreFn) -> SearchOutcome:
    """Score every feasible subnet; the best by `Candidate.key`."""
    t0 = time.perf_counter()
    members = space.enumerate()
    if not members:
        raise InputError(f"search: no subnet meets the budget ({space.describe()})")
    ev = _Evaluator(space, score, None)
    for s in members:
        ev(s)
    ranked = ev.ranked()
    return SearchOutcome(method="exhaustive", rule=f"exhaustive: holdout acc, {space.describe()}", best=ranked[0],
                         evaluated=ranked, n_evals=len(ranked), space_size=len(members),
                         seconds=time.perf_counter() - t0)


def _mutate(space: SearchSpace, s: tuple[int, ...], rng: np.random.Generator) -> tuple[int, ...] | None:
    cur, rest = list(s), [c for c in space.candidates if c not in s]
    ops = ["swap"] if space.target_blocks is not None else ["swap", "add", "remove"]
    for _ in range(10):
        op = ops[int(rng.integers(len(ops)))]
        child = list(cur)
        if op in ("swap", "remove"):
            if not child:
                continue
            child.pop(int(rng.integers(len(child))))
        if op in ("swap", "add"):
            pool = [c for c in rest if c not in child]
            if not pool:
                continue
            child.append(pool[int(rng.integers(len(pool)))])
        t = tuple(sorted(child))
        if t != s and space.feasible(t):
            return t
    return None


def _crossover(space: SearchSpace, a: tuple[int, ...], b: tuple[int, ...],
               rng: np.random.Generator) -> tuple[int, ...] | None:
    both = sorted(set(a) & set(b))
    pool = sorted((set(a) | set(b)) - set(both))
    pool = [pool[j] for j in rng.permutation(len(pool))]
    if space.target_blocks is not None:
        need = space.target_blocks - len(both)
        return tuple(sorted(both + pool[:need])) if need <= len(pool) else None
    child = list(both)
    others = [c for c in space.candidates if c not in a and c not in b]
    others = [others[j] for j in rng.permutation(len(others))]
    for extra in pool + others:
        if space.feasible(sorted(child)):
            break
        child.append(extra)
    t = tuple(sorted(child))
    return t if space.feasible(t) else None


def evolutionary_search(space: SearchSpace, score: ScoreFn, cfg: EvolutionConfig) -> SearchOutcome:
    """Evolutionary search (see the module docstring). Deterministic for a seed and scorer."""
    t0 = time.perf_counter()
    rng = np.random.default_rng([int(cfg.seed) & 0xFFFFFFFF, 0xE70])
    ev = _Evaluator(space, score, cfg.max_evals)
    population: list[tuple[int, ...]] = []
    for _ in range(cfg.population * 20):
        if len(population) >= cfg.population:
            break
        s = space.random_member(rng)
        if s is not None and s not in population:
            population.append(s)
    if not population:
        raise InputError(f"search: no subnet meets the budget ({space.describe()})")
    for s in population:
        ev(s)
    generations = 0
    for _ in range(cfg.generations):
        if ev.full:
            break
        parents = [tuple(c.blocks) for c in ev.ranked()[:cfg.parents]]
        children: list[tuple[int, ...]] = []
        for _ in range(cfg.population * 20):
            if len(children) >= cfg.population:
                break
            if len(parents) < 2 or rng.random() < cfg.mutation_prob:
                child = _mutate(space, parents[int(rng.integers(len(parents)))], rng)
            else:
                i, j = rng.choice(len(parents), size=2, replace=False)
                child = _crossover(space, parents[int(i)], parents[int(j)], rng)
            if child is not None and child not in ev.cache and child not in children:
                children.append(child)
        if not children:
            logger.info("evolutionary search: no new child after %d generations; stopping", generations)
            break
        generations += 1
        for c in children:
            if ev(c) is None:
                break
        best = ev.ranked()[0]
        logger.info("generation %d: %d scored, best %s acc %.4f", generations, len(ev.cache), best.blocks, best.acc)
    ranked = ev.ranked()
    return SearchOutcome(method="evolutionary", rule=f"evolutionary: holdout acc, {space.describe()}",
                         best=ranked[0], evaluated=ranked, n_evals=len(ranked), space_size=space.count(),
                         seconds=time.perf_counter() - t0,
                         config={**asdict(cfg), "generations_run": generations})


def search(space: SearchSpace, score: ScoreFn, *, method: str, exhaustive_limit: int,
           evolution: EvolutionConfig) -> SearchOutcome:
    """Pick the best subnet: exhaustive if the space has at most `exhaustive_limit` subnets
    (`method='auto'`), else evolutionary.

    Raises:
        InputError: unknown method, or exhaustive asked for a space too large to enumerate.
    """
    if method not in METHODS:
        raise InputError(f"unknown search method {method!r}; choose from {', '.join(METHODS)}")
    if method == "auto":
        n = space.count()
        method = "exhaustive" if n is not None and n <= exhaustive_limit else "evolutionary"
        logger.info("search space: %s subnets (%s) -> %s", n if n is not None else "too many to count",
                    space.describe(), method)
    if method == "exhaustive":
        return exhaustive_search(space, score)
    return evolutionary_search(space, score, evolution)


def random_picks(space: SearchSpace, score: ScoreFn, size: int, n: int, seed: int = 0,
                 exclude: Sequence[int] | None = None) -> list[Candidate]:
    """Score `n` distinct random feasible subnets of `size` blocks (other than `exclude` if possible)."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x2A4D])
    ev = _Evaluator(space, score, None)
    picks: list[tuple[int, ...]] = []
    skip = tuple(sorted(exclude)) if exclude is not None else None
    for _ in range(max(n, 1) * 50):
        if len(picks) >= n:
            break
        s = space.random_member(rng, size=size)
        if s is None:
            break
        if s not in picks and s != skip:
            picks.append(s)
    if not picks:
        logger.warning("no random subnet of %d blocks meets the budget (%s)", size, space.describe())
    return [ev(s) for s in picks]



__all__ = ["Candidate", "EvolutionConfig", "LatencyPredictor", "METHODS", "SearchOutcome", "SearchSpace",
           "evolutionary_search", "exhaustive_search", "random_picks", "search"]
