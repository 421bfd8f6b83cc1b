"""UPDP step 2: subnet search. Which blocks to prune, under a budget, scored on held-out data.

Budget (`SearchSpace`): exactly K pruned blocks (`target_blocks`, the paper's Pk), or a predicted
speedup of at least S (`target_speedup`, from the ORT latency table `LatencyLUT`).

Score of a candidate subnet (`SubnetScorer`): the supernet's accuracy with that subnet active, on
the `holdout` split (carved from the training split and never trained on; `val` stays untouched for
reporting), after recalibrating the BatchNorm statistics for that subnet on a few fixed training
batches. The supernet's BNs saw a mixture of subnets during training, and a BN shared by both forms
of a block (ResNet) saw both, so the running statistics fit no single subnet; recalibration is what
makes supernet-inherited accuracy predictive (Cai et al. 2020, "Once-for-All", §3.3). The BN
statistics are restored after every candidate, so candidates cannot contaminate each other.

Ranking: higher holdout accuracy first; ties (holdout accuracy is a count) go to the lower
predicted latency, then to the lexicographically smaller block list (deterministic).

Methods:

* exhaustive: every feasible subnet, when there are at most `exhaustive_limit` (default 64);
* evolutionary (default otherwise; after Guo et al. 2020, "Single Path One-Shot", §3.3): a random
  feasible population; each generation takes the top `parents` of everything scored so far and
  breeds children by mutation (swap one pruned block for an unpruned one; for a speedup budget also
  add or remove one) and crossover (keep the blocks both parents prune, fill from the rest); only
  feasible, never-scored children are kept. It stops at `max_evals` scored subnets or when no new
  child can be bred. Seeded: the same seed and scorer give the same result.

The search's pick is compared with random picks of the same size scored the same way: a search
that does not beat them is not worth its cost.

`run_search` is the whole step behind `updp search`: baseline checkpoint → latency table →
supernet (`updp.pruning.supernet`) → search → random-pick comparison → full-model ORT measurement
of the winner → `PrunePlan` written atomically.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm import tqdm

from updp.errors import InputError

logger = logging.getLogger(__name__)

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
    lut: Any = None
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

    population: int = 16
    parents: int = 6
    max_evals: int = 120
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


def evolutionary_search(space: SearchSpace, score: ScoreFn, cfg: EvolutionConfig | None = None) -> SearchOutcome:
    """Evolutionary search (see the module docstring). Deterministic for a seed and scorer."""
    cfg = cfg or EvolutionConfig()
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


def search(space: SearchSpace, score: ScoreFn, *, method: str = "auto", exhaustive_limit: int = 64,
           evolution: EvolutionConfig | None = None) -> SearchOutcome:
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


# ------------------------------------------------------------------ scoring on held-out data

def _bn_state(model: nn.Module) -> dict[str, tuple[torch.Tensor, ...]]:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, _BatchNorm) and m.running_mean is not None:
            out[name] = (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
    return out


def _restore_bn(model: nn.Module, state: dict[str, tuple[torch.Tensor, ...]]) -> None:
    with torch.no_grad():
        for name, m in model.named_modules():
            if name in state:
                mean, var, nbt = state[name]
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(nbt)


def pool_running_stats(batch_counts: Sequence[int], stats: torch.Tensor) -> torch.Tensor:
    """BN running statistics over all calibration batches, from those of disjoint shards of them.

    `calibrate_bn` (momentum=None) leaves each BN's running mean and variance at the plain average
    of the per-batch means and (unbiased) variances. Shard r of the batches, with n_r batches,
    holds the average over its own batches, so the average over all of them is
    Σ_r n_r · stats_r / Σ_r n_r: exact, whatever the split. Computed in float64.

    Args:
        batch_counts: n_r, the batches each shard calibrated on (≥ 0, not all 0).
        stats: (shards, ...) the shards' running statistics, stacked.

    Returns:
        The pooled statistics, shaped like one shard's, in `stats`'s dtype.
    """
    counts = torch.as_tensor(list(batch_counts), dtype=torch.float64)
    if counts.numel() != stats.shape[0] or bool((counts < 0).any()) or float(counts.sum()) <= 0:
        raise ValueError(f"batch counts {list(batch_counts)} do not fit {stats.shape[0]} shards")
    weights = (counts / counts.sum()).reshape(-1, *([1] * (stats.dim() - 1)))
    return (weights * stats.to(torch.float64)).sum(0).to(stats.dtype)


def _process_group() -> tuple[int, int]:
    """(rank, world size) of the initialized process group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class SubnetScorer:
    """Holdout accuracy of a supernet's subnet after BN recalibration (see the module docstring).

    Under torchrun (an initialized process group) the work is sharded: rank r calibrates on
    calibration batches r, r + world, … and the BN statistics are pooled exactly
    (`pool_running_stats`); it scores holdout batches r, r + world, … and the correct counts are
    summed. Every rank gets the same accuracy, so every rank's search takes the same path.

    Args:
        model: the supernet.
        calib_batches: fixed input batches for the BN recalibration (the same for every candidate).
        holdout: (inputs, labels) batches of the holdout split.
        recalibrate: 'all' BN-type modules (default), 'pruned' (the BNs added by pruning) or 'none'.
        device: where to run (default: the model's device).
    """

    def __init__(self, model: nn.Module, calib_batches: Sequence[torch.Tensor],
                 holdout: Sequence[tuple[torch.Tensor, torch.Tensor]], *, recalibrate: str = "all",
                 device: torch.device | str | None = None) -> None:
        if recalibrate not in ("all", "pruned", "none"):
            raise InputError(f"recalibrate must be 'all', 'pruned' or 'none', got {recalibrate!r}")
        if recalibrate != "none" and not calib_batches:
            raise InputError("BN recalibration needs at least one calibration batch")
        if not holdout:
            raise InputError("the holdout split is empty: nothing to score subnets on")
        p = next(model.parameters())
        self.device = torch.device(device) if device is not None else p.device
        self.model = model.to(self.device).eval()
        self.rank, self.world = _process_group()
        # Shard the calibration only when every rank gets a batch (calibrate_bn needs one).
        self.calib_counts = ([len(calib_batches[r::self.world]) for r in range(self.world)]
                             if self.world > 1 and len(calib_batches) >= self.world else None)
        mine = calib_batches[self.rank::self.world] if self.calib_counts else calib_batches
        self.calib = [x.to(self.device) for x in mine]
        self.holdout = [(x.to(self.device), y.to(self.device)) for x, y in holdout[self.rank::self.world]]
        self.recalibrate = recalibrate
        self.n_scored = 0
        self.seconds = 0.0

    @torch.no_grad()
    def accuracy(self) -> float:
        """Holdout accuracy of the model as it is (eval mode)."""
        self.model.eval()
        correct = n = 0
        for x, y in self.holdout:
            logits = self.model(x)
            if isinstance(logits, (tuple, list)):
                logits = logits[0]
            correct += int((logits.argmax(1) == y).sum())
            n += int(y.numel())
        if self.world > 1:
            import torch.distributed as dist

            counts = torch.tensor([correct, n], dtype=torch.int64, device=self.device)
            dist.all_reduce(counts)
            correct, n = (int(v) for v in counts.tolist())
        return correct / n

    def _pool_calibration(self) -> None:
        """Every rank's recalibrated BNs get the statistics over all ranks' batches."""
        import torch.distributed as dist

        from updp.pruning.convert import _target_bns

        bns = _target_bns(self.model, self.recalibrate)
        if not bns:
            return
        flat = torch.cat([t for bn in bns for t in (bn.running_mean, bn.running_var)])
        gathered = [torch.empty_like(flat) for _ in range(self.world)]
        dist.all_gather(gathered, flat)
        pooled = pool_running_stats(self.calib_counts, torch.stack(gathered))
        offset = 0
        with torch.no_grad():
            for bn in bns:
                for t in (bn.running_mean, bn.running_var):
                    t.copy_(pooled[offset:offset + t.numel()].view_as(t))
                    offset += t.numel()
                bn.num_batches_tracked.fill_(sum(self.calib_counts))

    def __call__(self, blocks: Sequence[int]) -> float:
        from updp.pruning.convert import calibrate_bn
        from updp.pruning.supernet import active_subnet, set_subnet

        t0 = time.perf_counter()
        before = active_subnet(self.model)
        saved = _bn_state(self.model)
        try:
            set_subnet(self.model, blocks)
            if self.recalibrate != "none":
                # identity_init_inserted=False: the inserted BNs' affines are trained weights now.
                calibrate_bn(self.model, self.calib, which=self.recalibrate, identity_init_inserted=False)
                if self.calib_counts:
                    self._pool_calibration()
            return self.accuracy()
        finally:
            _restore_bn(self.model, saved)
            set_subnet(self.model, before)
            self.n_scored += 1
            self.seconds += time.perf_counter() - t0


def _batches(dataset, batch_size: int, n: int | None, *, shuffle: bool, seed: int) -> list:
    from updp.data import make_loader

    out = []
    for batch in make_loader(dataset, batch_size, shuffle=shuffle, seed=seed):
        out.append(batch)
        if n is not None and len(out) >= n:
            break
    return out


# ------------------------------------------------------------------ the whole step

@dataclass
class SearchResult:
    """What `run_search` did and found (the plan holds the same, in its own format)."""

    plan_path: str
    plan: Any
    blocks: list[int]
    block_names: list[str]
    rule: str
    method: str
    holdout_acc: float
    baseline_holdout_acc: float
    supernet_unpruned_holdout_acc: float
    random_picks: list[dict[str, Any]]
    predicted_speedup: float | None
    measured_speedup: float | None
    measured: dict[str, Any] | None
    top: list[dict[str, Any]]
    n_evals: int
    space_size: int | None
    lut_path: str | None
    supernet_checkpoint: str | None
    supernet: dict[str, Any]
    timings: dict[str, float]
    data: str = ""

    @property
    def random_mean_acc(self) -> float | None:
        accs = [r["acc"] for r in self.random_picks]
        return float(np.mean(accs)) if accs else None

    @property
    def beats_random(self) -> bool | None:
        """The pick scores above every random pick of the same size (None without random picks)."""
        accs = [r["acc"] for r in self.random_picks]
        return bool(self.holdout_acc > max(accs)) if accs else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["plan"] = self.plan.to_dict()
        d["random_mean_acc"] = self.random_mean_acc
        d["beats_random"] = self.beats_random
        return d

    def format_summary(self) -> str:
        lines = [f"wrote {self.plan_path}",
                 f"  {self.rule} ({self.n_evals} subnets scored"
                 + (f" of {self.space_size}" if self.space_size is not None else "") + ")",
                 "  pruned blocks: " + ", ".join(f"{i} {n}" for i, n in zip(self.blocks, self.block_names)),
                 f"  holdout acc: pick {self.holdout_acc:.4f} | baseline {self.baseline_holdout_acc:.4f} | "
                 f"supernet unpruned {self.supernet_unpruned_holdout_acc:.4f}"]
        if self.random_picks:
            accs = ", ".join(f"{r['acc']:.4f}" for r in self.random_picks)
            verdict = "beats" if self.beats_random else "does NOT beat"
            lines.append(f"  random picks of {len(self.blocks)} blocks: {accs} (mean {self.random_mean_acc:.4f}); "
                         f"the pick {verdict} all of them")
        if self.predicted_speedup is not None:
            s = f"  speedup: predicted {self.predicted_speedup:.3f}x (latency table)"
            if self.measured_speedup is not None and self.measured is not None:
                s += (f", measured {self.measured_speedup:.3f}x (ORT, full model, "
                      f"{self.measured['baseline_ms']:.3f} -> {self.measured['measured_ms']:.3f} ms)")
            lines.append(s)
        lines.append("  top subnets: " + "; ".join(
            f"{c['blocks']} {c['acc']:.4f}" for c in self.top[:5]))
        lines.append("  time: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items()))
        return "\n".join(lines)


def run_search(checkpoint: str, data: str, *, target_blocks: int | None = None,
               target_speedup: float | None = None, out: str, epochs: int = 10, method: str = "auto",
               candidates: list[int] | None = None, seed: int = 0,
               population: int = 16, parents: int = 6, max_evals: int = 120, exhaustive_limit: int = 64,
               n_random: int = 3, calib_batches: int = 8, recalibrate: str = "all",
               batch_size: int = 128, lr: float = 1e-3, kd_alpha: float = 0.5, kd_temperature: float = 1.0,
               max_steps_per_epoch: int | None = None, amp: str = "off",
               supernet_out: str | None = None,
               reuse_supernet: bool = False, lut: str | None = None, threads: int = 2,
               measure: bool = True, bench_repeats: int = 50, profile_rounds: int = 15,
               device: str = "auto", split_seed: int = 0,
               top_n: int = 10, progress: bool = True, log_jsonl: str | None = None,
               resume: bool = False) -> SearchResult:
    """UPDP steps 1–2: train a supernet from a baseline checkpoint and search the blocks to prune.

    Args:
        checkpoint: baseline checkpoint of `updp train` (state dict + `model_spec`).
        data: `--data` spec (`updp.data.get_datasets`); its `holdout` split scores subnets.
        target_blocks: exactly K pruned blocks ...
        target_speedup: ... or a predicted ORT speedup of at least S (exactly one of the two).
        out: the plan (JSON), written atomically.
        epochs: supernet training epochs (0: no training, only the initial BN calibration: the
            ablation "search on inherited weights").
        method: 'auto' (exhaustive if <= `exhaustive_limit` subnets), 'evolutionary', 'exhaustive'.
        candidates: block indices allowed to be pruned (default: every prunable block).
        seed: training, sampling, search and random-pick seed.
        population, parents, max_evals: evolutionary settings (`EvolutionConfig`).
        n_random: random picks of the winner's size to compare against.
        calib_batches: training batches for each candidate's BN recalibration.
        recalibrate: 'all', 'pruned' or 'none' (ablation).
        batch_size, lr, kd_alpha, kd_temperature, max_steps_per_epoch, amp: supernet training.
        supernet_out: supernet checkpoint (default: `<out>.supernet.pt`).
        reuse_supernet: load `supernet_out` instead of training (it must exist).
        lut: a saved latency table to reuse (JSON); default: build one and save `<out>.lut.json`.
        threads: ORT intra-op threads for the latency table and the measurement.
        measure: measure the winner end to end against the baseline (ORT, interleaved).
        bench_repeats: timed runs per model for the latency table and the measurement.
        profile_rounds: profiling rounds per graph for the latency table (`build_lut`).
        device: torch device for training and scoring.
        split_seed: dataset split seed.
        top_n: scored subnets recorded in the plan.
        progress, log_jsonl: training progress bars and per-epoch log.
        resume: continue the supernet training from `supernet_out` after its last finished epoch
            when that file exists (a killed run; `updp run --resume`).

    Raises:
        InputError: bad checkpoint, data, target, or options (one line).
    """
    from updp._io import write_text_atomic
    from updp.data import get_datasets
    from updp.latency import LatencySetup
    from updp.models import create_model
    from updp.pruning.discover import find_blocks, prunable_candidates
    from updp.pruning.latency_lut import LatencyLUT, build_lut
    from updp.pruning.plan import PrunePlan
    from updp.pruning.supernet import (
        SubnetSampler,
        SupernetConfig,
        build_supernet,
        frozen_copy,
        k_range_for_target,
        load_baseline,
        load_supernet,
        set_subnet,
        train_supernet,
    )
    from updp.pruning.train import _init_distributed, resolve_device

    t_all = time.perf_counter()
    timings: dict[str, float] = {}
    if (target_blocks is None) == (target_speedup is None):
        raise InputError("updp search: give exactly one of --target-blocks K or --target-speedup S")
    if method not in METHODS:
        raise InputError(f"unknown search method {method!r}; choose from {', '.join(METHODS)}")
    if epochs < 0:
        raise InputError(f"--epochs must be >= 0, got {epochs}")
    out_path = Path(out)
    supernet_path = Path(supernet_out) if supernet_out else out_path.with_suffix(".supernet.pt")
    if reuse_supernet and not supernet_path.is_file():
        raise InputError(f"--reuse-supernet: {supernet_path} does not exist")
    # Under torchrun: the supernet trains with DDP, the scoring is sharded over the ranks
    # (`SubnetScorer`), and latency is measured by rank 0 alone (ranks timing at once on shared
    # cores would measure each other) and broadcast.
    distributed = _init_distributed(resolve_device(device))
    rank, world = _process_group()
    is_main = rank == 0

    # ---- baseline, data, candidates
    baseline, spec, chw = load_baseline(checkpoint)
    bundle = get_datasets(data, chw[1:], split_seed=split_seed)
    if bundle.num_classes != spec.get("num_classes"):
        raise InputError(f"{data} has {bundle.num_classes} classes, the checkpoint's model "
                         f"{spec.get('num_classes')}")
    blocks = find_blocks(baseline)
    cand = prunable_candidates(blocks, candidates, what="--candidates", model=spec["model"])

    # ---- latency table (random weights are fine for latency)
    t0 = time.perf_counter()
    setup = LatencySetup(threads=threads, opt_level="all", repeats=bench_repeats)
    lut_path: str | None
    if lut:
        table = LatencyLUT.load(lut)
        if list(table.input_shape) != [1, *chw]:
            raise InputError(f"latency table {lut} was measured at {table.input_shape}, the model takes "
                             f"{[1, *chw]}")
        lut_path = lut
    else:
        lut_path = str(out_path.with_suffix(".lut.json"))
        if is_main:
            fresh, _ = create_model(spec["model"], num_classes=spec.get("num_classes"), **spec["kwargs"])
            table = build_lut(fresh, (1, *chw), candidates=cand, setup=setup, profile_rounds=profile_rounds,
                              model_label=spec["model"])
            table.save(lut_path)
        if distributed:
            table = LatencyLUT.from_dict(_broadcast_from_main(table.to_dict() if is_main else None))
    timings["latency_table"] = time.perf_counter() - t0
    space = SearchSpace(tuple(cand), target_blocks=target_blocks, target_speedup=target_speedup, lut=table)

    # ---- supernet
    t0 = time.perf_counter()
    k_min, k_max = k_range_for_target(cand, target_blocks=target_blocks, target_speedup=target_speedup, lut=table)
    sampler = SubnetSampler(tuple(cand), k_min, k_max, seed=seed)
    scfg = SupernetConfig(epochs=epochs, batch_size=batch_size, lr=lr, kd_alpha=kd_alpha,
                          kd_temperature=kd_temperature, seed=seed, device=device,
                          max_steps_per_epoch=max_steps_per_epoch, amp=amp,
                          out=str(supernet_path) if epochs > 0 else None,
                          progress=progress, log_jsonl=log_jsonl,
                          resume=bool(resume and epochs > 0 and supernet_path.is_file()))
    if reuse_supernet:
        model, _, _, rec = load_supernet(str(supernet_path))
        if sorted(rec["candidates"]) != cand:
            raise InputError(f"{supernet_path} was trained with candidates {rec['candidates']}, not {cand}")
        summary = {"reused": str(supernet_path), "sampler": rec.get("sampler")}
    else:
        model = copy.deepcopy(baseline)
        build_supernet(model, cand)
        teacher = frozen_copy(baseline) if kd_alpha > 0 else None
        summary = train_supernet(model, bundle, sampler, scfg, teacher=teacher,
                                 checkpoint_extra={"model_spec": spec}).to_dict()
    timings["supernet"] = time.perf_counter() - t0

    # ---- search
    t0 = time.perf_counter()
    dev = resolve_device(device)
    model = model.to(dev).eval()
    calib = [x for x, _ in _batches(bundle.train, batch_size, calib_batches, shuffle=True, seed=seed + 1)]
    holdout = _batches(bundle.holdout, 256, None, shuffle=False, seed=0)
    scorer = SubnetScorer(model, calib, holdout, recalibrate=recalibrate, device=dev)
    baseline_acc = SubnetScorer(baseline.to(dev), [], holdout, recalibrate="none", device=dev).accuracy()
    unpruned_acc = scorer(())
    evo = EvolutionConfig(population=population, parents=parents, max_evals=max_evals, seed=seed)
    n_space = space.count()
    exhaustive = method == "exhaustive" or (method == "auto" and n_space is not None and n_space <= exhaustive_limit)
    if world > 1 and is_main:
        logger.info("search: scoring sharded over %d ranks", world)
    with tqdm(total=n_space if exhaustive else max_evals, desc="search: scoring subnets", unit="subnet",
              disable=True if not (progress and is_main) else None, leave=False) as bar:  # None: a terminal only

        def scored(blocks):
            acc = scorer(blocks)
            bar.update(1)
            bar.set_postfix(acc=f"{acc:.4f}")
            return acc

        outcome = search(space, scored, method=method, exhaustive_limit=exhaustive_limit, evolution=evo)
    best = outcome.best
    randoms = random_picks(space, scorer, len(best.blocks), n_random, seed=seed, exclude=best.blocks)
    set_subnet(model, best.blocks)
    timings["search"] = time.perf_counter() - t0

    # ---- full-model measurement of the winner
    measured = None
    if measure:
        t0 = time.perf_counter()
        if is_main:
            fresh, _ = create_model(spec["model"], num_classes=spec.get("num_classes"), **spec["kwargs"])
            measured = table.check(fresh, best.blocks, setup=setup).to_dict()
        if distributed:
            measured = _broadcast_from_main(measured)
        timings["measure"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_all

    # ---- plan
    names = [blocks[i].name for i in best.blocks]
    top = [c.to_dict() for c in outcome.top(top_n)]
    plan = PrunePlan(
        model=spec["model"], input_size=tuple(chw), blocks=list(best.blocks), block_names=names, lam=1.0,
        selection_rule=outcome.rule, model_kwargs=dict(spec["kwargs"]), num_classes=spec.get("num_classes"),
        notes=f"updp search from {checkpoint} on {data}",
        search={"method": outcome.method, "target_blocks": target_blocks, "target_speedup": target_speedup,
                "candidates": cand, "seed": seed, "n_evals": outcome.n_evals, "space_size": outcome.space_size,
                "exhaustive_limit": exhaustive_limit, "config": outcome.config, "recalibrate": recalibrate,
                "calib_batches": len(calib), "score": "holdout top-1 after BN recalibration",
                "data": bundle.description, "seconds": timings},
        scores={"metric": "holdout_acc", "holdout_n": sum(int(y.numel()) for _, y in holdout),
                "winner": best.acc, "baseline": baseline_acc, "supernet_unpruned": unpruned_acc,
                "random_picks": [c.to_dict() for c in randoms],
                "random_mean": float(np.mean([c.acc for c in randoms])) if randoms else None,
                "beats_random": bool(best.acc > max(c.acc for c in randoms)) if randoms else None,
                "top": top},
        latency={"predicted_speedup": best.speedup, "predicted_ms": best.latency_ms,
                 "measured_speedup": measured["measured_speedup"] if measured else None,
                 "measured": measured, "lut": lut_path, "lut_setup": table.setup,
                 "lut_base_ms": table.base_ms},
        supernet=summary if isinstance(summary, dict) else dict(summary),
    )
    if is_main:
        plan.save(str(out_path))
    result = SearchResult(
        plan_path=str(out_path), plan=plan, blocks=list(best.blocks), block_names=names, rule=outcome.rule,
        method=outcome.method, holdout_acc=best.acc, baseline_holdout_acc=baseline_acc,
        supernet_unpruned_holdout_acc=unpruned_acc, random_picks=[c.to_dict() for c in randoms],
        predicted_speedup=best.speedup, measured_speedup=measured["measured_speedup"] if measured else None,
        measured=measured, top=top, n_evals=outcome.n_evals, space_size=outcome.space_size, lut_path=lut_path,
        supernet_checkpoint=str(supernet_path) if (epochs > 0 or reuse_supernet) else None,
        supernet=plan.supernet, timings=timings, data=bundle.description)
    if is_main:
        write_text_atomic(out_path.with_suffix(".search.json"), _json(result.to_dict()))
    if distributed:
        import torch.distributed as dist

        dist.barrier()  # the plan exists for every rank on return
    logger.info("search done in %.1fs: blocks %s", timings["total"], best.blocks)
    return result


def _broadcast_from_main(obj: Any) -> Any:
    """Rank 0's picklable `obj`, on every rank."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _json(d: dict[str, Any]) -> str:
    import json

    return json.dumps(d, indent=2, default=str) + "\n"


__all__ = ["Candidate", "EvolutionConfig", "METHODS", "SearchOutcome", "SearchResult", "SearchSpace",
           "SubnetScorer", "evolutionary_search", "exhaustive_search", "random_picks", "run_search", "search"]
