"""`updp search`: UPDP steps 1-2, from a trained baseline checkpoint to a plan.

The whole step: baseline checkpoint → per-block latency table (ORT, built by rank 0 and broadcast
under torchrun) → supernet (built from the baseline, trained with subnet sampling and
distillation, or reused) → subnet search scored on the holdout split → random picks of the same
size, scored the same way → full-model ORT measurement of the winner → `PrunePlan` written
atomically (with `.lut.json`, `.supernet.pt` and `.search.json` beside it).

Under torchrun the supernet trains with DDP, the scoring is sharded over the ranks
(`updp.training.scoring`), and latency is measured by rank 0 alone (ranks timing at once on
shared cores would measure each other) and broadcast.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from tqdm import tqdm

from updp.blocks.discover import BlockInfo, find_blocks, prunable_candidates
from updp.blocks.plan import PrunePlan
from updp.core.distributed import barrier, broadcast_from_main, group_info, init_process_group
from updp.core.errors import InputError
from updp.core.io import check_outputs, write_text_atomic
from updp.data import refuse_outputs_in_data
from updp.latency.lut import LatencyLUT, build_lut
from updp.latency.runner import LatencySetup
from updp.models.checkpoint import load_state, read_checkpoint
from updp.models.fast_compute import fast_compute
from updp.models.zoo import create_from_record
from updp.training.device import fast_cpu_math, resolve_device
from updp.training.scoring import SubnetScorer, fixed_batches
from updp.training.search import EvolutionConfig, SearchOutcome, SearchSpace, random_picks, search
from updp.training.supernet import (
    SubnetSampler,
    SupernetConfig,
    build_supernet,
    frozen_copy,
    k_range_for_target,
    set_subnet,
    train_supernet,
)
from updp.workflows.config import SearchConfig, pick
from updp.workflows.resolve import LoadedModel, data_for, load_baseline

logger = logging.getLogger(__name__)



@dataclass
class SearchResult:
    """What `updp search` did and found (the plan holds the same, in its own format)."""

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


def default_target(n_prunable: int) -> int:
    """Blocks to prune when no target is given: a third of the prunable blocks (at least one)."""
    return max(1, n_prunable // 3)


def _latency_table(cfg: SearchConfig, spec: dict, cand: list[int], setup: LatencySetup,
                   lut_path: str) -> LatencyLUT:
    """The table given with `--lut` (checked), or one measured on random weights by rank 0."""
    chw = tuple(spec["input_size"])
    if cfg.lut:
        table = LatencyLUT.load(cfg.lut)
        if list(table.input_shape) != [1, *chw]:
            raise InputError(f"latency table {cfg.lut} was measured at {table.input_shape}, the model takes "
                             f"{[1, *chw]}")
        return table
    table = None
    if group_info()[0] == 0:
        table = build_lut(create_from_record(spec), (1, *chw), candidates=cand, setup=setup,
                          profile_rounds=cfg.profile_rounds, model_label=spec["model"])
        table.save(lut_path)
    return LatencyLUT.from_dict(broadcast_from_main(table.to_dict() if table is not None else None))


def load_supernet(path: str) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a supernet from its checkpoint (written by `train_supernet`): (supernet, its record)."""
    ck = read_checkpoint(path)
    rec = ck.payload.get("supernet")
    if not isinstance(rec, dict) or ck.model_spec is None:
        raise InputError(f"{path} is not a supernet checkpoint (no 'supernet' / 'model_spec' record)")
    model = create_from_record(ck.model_spec)
    build_supernet(model, rec["candidates"], **dict(rec.get("block_options") or {}))
    load_state(model, ck.state_dict, path)
    return model.eval(), rec


def _supernet(cfg: SearchConfig, baseline: LoadedModel, data, cand: list[int], sampler: SubnetSampler,
              supernet_path: Path, echo) -> tuple[nn.Module, dict]:
    """The supernet and its training summary: reused from `--supernet`, or built and trained."""
    if cfg.reuse_supernet:
        model, rec = load_supernet(str(supernet_path))
        if sorted(rec["candidates"]) != cand:
            raise InputError(f"{supernet_path} was trained with candidates {rec['candidates']}, not {cand}")
        return model, {"reused": str(supernet_path), "sampler": rec.get("sampler")}
    model = copy.deepcopy(baseline.module)
    build_supernet(model, cand)
    teacher = frozen_copy(baseline.module) if cfg.kd_alpha > 0 else None
    scfg = SupernetConfig(**pick(cfg, SupernetConfig, calib_batches=cfg.supernet_calib_batches,
                                 out=str(supernet_path) if cfg.epochs > 0 else None,
                                 resume=bool(cfg.resume and cfg.epochs > 0 and supernet_path.is_file())))
    summary = train_supernet(model, data, sampler, scfg, teacher=teacher,
                             checkpoint_extra={"model_spec": baseline.spec}, echo=echo)
    return model, summary.to_dict()


@dataclass
class _Scored:
    """The search's outcome and the reference scores it is compared with."""

    outcome: SearchOutcome
    randoms: list
    baseline_acc: float
    unpruned_acc: float
    calib_n: int
    holdout_n: int


@fast_cpu_math()
def _score_and_search(cfg: SearchConfig, model: nn.Module, baseline: nn.Module, data,
                      space: SearchSpace) -> _Scored:
    """Score subnets on the holdout split and search; then the random picks and the references."""
    dev = resolve_device(cfg.device)
    model = model.to(dev).eval()
    calib = [x for x, _ in fixed_batches(data.train, cfg.batch_size, cfg.calib_batches, shuffle=True,
                                         seed=cfg.seed + 1)]
    holdout = fixed_batches(data.holdout, 256, None, shuffle=False, seed=0)
    scorer = SubnetScorer(model, calib, holdout, recalibrate=cfg.recalibrate, device=dev)
    baseline_acc = SubnetScorer(baseline.to(dev), [], holdout, recalibrate="none", device=dev).accuracy()
    # The supernet's layout is converted once for the whole search, not once per scored subnet
    # (each scoring then finds it converted: the context nests).
    with fast_compute(model):
        outcome, randoms, unpruned_acc = _search_subnets(cfg, model, scorer, space)
    set_subnet(model, outcome.best.blocks)
    return _Scored(outcome, randoms, baseline_acc, unpruned_acc, len(calib),
                   sum(int(y.numel()) for _, y in holdout))


def _search_subnets(cfg: SearchConfig, model: nn.Module, scorer: SubnetScorer, space: SearchSpace):
    """(search outcome, random picks, the unpruned supernet's score)."""
    unpruned_acc = scorer(())
    evo = EvolutionConfig(population=cfg.population, parents=cfg.parents, max_evals=cfg.max_evals, seed=cfg.seed)
    n_space = space.count()
    exhaustive = cfg.method == "exhaustive" or (cfg.method == "auto" and n_space is not None
                                                and n_space <= cfg.exhaustive_limit)
    is_main = group_info()[0] == 0
    with tqdm(total=n_space if exhaustive else cfg.max_evals, desc="search: scoring subnets", unit="subnet",
              disable=True if not (cfg.progress and is_main) else None, leave=False) as bar:  # None: a terminal only

        def scored(blocks):
            acc = scorer(blocks)
            bar.update(1)
            bar.set_postfix(acc=f"{acc:.4f}")
            return acc

        outcome = search(space, scored, method=cfg.method, exhaustive_limit=cfg.exhaustive_limit, evolution=evo)
    randoms = random_picks(space, scorer, len(outcome.best.blocks), cfg.random_picks, seed=cfg.seed,
                           exclude=outcome.best.blocks)
    return outcome, randoms, unpruned_acc


def _plan(cfg: SearchConfig, spec: dict, blocks: list[BlockInfo], cand: list[int], target: dict, s: _Scored,
          measured: dict | None, table: LatencyLUT, lut_path: str, summary: dict, data_desc: str,
          timings: dict) -> PrunePlan:
    """The plan of the winner, with the evidence: how it was searched, its scores against the
    baseline and the random picks, predicted and measured latency, the supernet."""
    best, outcome, randoms = s.outcome.best, s.outcome, s.randoms
    return PrunePlan(
        model=spec["model"], input_size=tuple(spec["input_size"]), blocks=list(best.blocks),
        block_names=[blocks[i].name for i in best.blocks], lam=1.0, selection_rule=outcome.rule,
        model_kwargs=dict(spec["kwargs"]), num_classes=spec.get("num_classes"),
        notes=f"updp search from {cfg.checkpoint} on {cfg.data}",
        search={"method": outcome.method, **target, "candidates": cand, "seed": cfg.seed,
                "n_evals": outcome.n_evals, "space_size": outcome.space_size,
                "exhaustive_limit": cfg.exhaustive_limit, "config": outcome.config, "recalibrate": cfg.recalibrate,
                "calib_batches": s.calib_n, "score": "holdout top-1 after BN recalibration",
                "data": data_desc, "seconds": timings},
        scores={"metric": "holdout_acc", "holdout_n": s.holdout_n, "winner": best.acc, "baseline": s.baseline_acc,
                "supernet_unpruned": s.unpruned_acc, "random_picks": [c.to_dict() for c in randoms],
                "random_mean": float(np.mean([c.acc for c in randoms])) if randoms else None,
                "beats_random": bool(best.acc > max(c.acc for c in randoms)) if randoms else None,
                "top": [c.to_dict() for c in outcome.top(cfg.top_n)]},
        latency={"predicted_speedup": best.speedup, "predicted_ms": best.latency_ms,
                 "measured_speedup": measured["measured_speedup"] if measured else None,
                 "measured": measured, "lut": lut_path, "lut_setup": table.setup, "lut_base_ms": table.base_ms},
        supernet=dict(summary),
    )


def run_search(cfg: SearchConfig, *, echo: Callable[[str], None] | None = None) -> SearchResult:
    """UPDP steps 1-2 (see the module docstring); the plan is written to `cfg.out`.

    Raises:
        InputError: a bad or pruned checkpoint, data, target, or options (one line).
    """
    t_all, timings = time.perf_counter(), {}
    out_path = Path(cfg.out)
    supernet_path = Path(cfg.supernet) if cfg.supernet else out_path.with_suffix(".supernet.pt")
    if cfg.reuse_supernet and not supernet_path.is_file():
        raise InputError(f"--reuse-supernet: {supernet_path} does not exist")
    written = [out_path, out_path.with_suffix(".search.json"), None if cfg.lut else out_path.with_suffix(".lut.json"),
               None if cfg.reuse_supernet or cfg.epochs == 0 else supernet_path]
    check_outputs(written, [cfg.checkpoint, cfg.lut])
    refuse_outputs_in_data(written, cfg.data)
    distributed = init_process_group(resolve_device(cfg.device))
    is_main = group_info()[0] == 0
    baseline = load_baseline(cfg.checkpoint, what="the search")
    spec = baseline.spec
    data = data_for(spec, cfg.data, split_seed=cfg.split_seed)
    if len(data.holdout) == 0:  # before the latency table and the supernet are built and written
        raise InputError(f"the holdout split of {cfg.data} is empty: the search scores subnets on it (give the "
                         "dataset more training images: the holdout is 10 % of them per class)")
    blocks = find_blocks(baseline.module)
    cand = prunable_candidates(blocks, cfg.candidates, what="--candidates", model=spec["model"])
    target = {"target_blocks": cfg.target_blocks, "target_speedup": cfg.target_speedup}
    if cfg.target_blocks is None and cfg.target_speedup is None:
        target["target_blocks"] = default_target(len(cand))
        logger.info("search: no target given; pruning a third of the %d candidate blocks (%d)", len(cand),
                    target["target_blocks"])

    t0 = time.perf_counter()
    setup = LatencySetup(threads=cfg.threads, opt_level="all", repeats=cfg.bench_repeats)
    lut_path = cfg.lut or str(out_path.with_suffix(".lut.json"))
    table = _latency_table(cfg, spec, cand, setup, lut_path)
    timings["latency_table"] = time.perf_counter() - t0
    space = SearchSpace(tuple(cand), lut=table, **target)

    t0 = time.perf_counter()
    k_min, k_max = k_range_for_target(cand, lut=table, **target)
    sampler = SubnetSampler(tuple(cand), k_min, k_max, seed=cfg.seed)
    model, summary = _supernet(cfg, baseline, data, cand, sampler, supernet_path, echo)
    timings["supernet"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if group_info()[1] > 1 and is_main:
        logger.info("search: scoring sharded over %d ranks", group_info()[1])
    scored = _score_and_search(cfg, model, baseline.module, data, space)
    timings["search"] = time.perf_counter() - t0

    measured = None
    if cfg.measure:
        t0 = time.perf_counter()
        if is_main:
            measured = table.check(create_from_record(spec), scored.outcome.best.blocks, setup=setup).to_dict()
        measured = broadcast_from_main(measured)
        timings["measure"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_all
    plan = _plan(cfg, spec, blocks, cand, target, scored, measured, table, lut_path, summary, data.description,
                 timings)
    result = _result(cfg, plan, scored, measured, lut_path, supernet_path, timings, data.description)
    if is_main:
        plan.save(str(out_path))
        write_text_atomic(out_path.with_suffix(".search.json"), json.dumps(result.to_dict(), indent=2,
                                                                          default=str) + "\n")
    if distributed:
        barrier()  # the plan exists for every rank on return
    logger.info("search done in %.1fs: blocks %s", timings["total"], plan.blocks)
    return result


def _result(cfg: SearchConfig, plan: PrunePlan, s: _Scored, measured: dict | None, lut_path: str,
            supernet_path: Path, timings: dict, data_desc: str) -> SearchResult:
    """The command's result: the plan's content, flattened for the summary and JSON."""
    best, outcome = s.outcome.best, s.outcome
    return SearchResult(
        plan_path=str(cfg.out), plan=plan, blocks=list(best.blocks), block_names=list(plan.block_names),
        rule=outcome.rule, method=outcome.method, holdout_acc=best.acc, baseline_holdout_acc=s.baseline_acc,
        supernet_unpruned_holdout_acc=s.unpruned_acc, random_picks=[c.to_dict() for c in s.randoms],
        predicted_speedup=best.speedup, measured_speedup=measured["measured_speedup"] if measured else None,
        measured=measured, top=plan.scores["top"], n_evals=outcome.n_evals, space_size=outcome.space_size,
        lut_path=lut_path, supernet_checkpoint=str(supernet_path) if (cfg.epochs > 0 or cfg.reuse_supernet) else None,
        supernet=plan.supernet, timings=timings, data=data_desc)


def manual_plan(checkpoint: str, blocks: list[int], out: str) -> PrunePlan:
    """A plan of exactly these blocks of a baseline checkpoint, checked, written to `out`: no search
    (`updp run` with `search.blocks`)."""
    baseline = load_baseline(checkpoint, what="a plan")
    spec = baseline.spec
    found = find_blocks(baseline.module)
    prunable_candidates(found, blocks, what="search.blocks", model=spec["model"])
    plan = PrunePlan(model=spec["model"], input_size=tuple(spec["input_size"]), blocks=list(blocks),
                     block_names=[found[i].name for i in blocks], lam=1.0,
                     selection_rule="manual (search.blocks in the run config; no search)",
                     model_kwargs=dict(spec["kwargs"]), num_classes=spec.get("num_classes"),
                     notes="updp run: blocks given, search skipped")
    plan.check_against(baseline.module, model_name=spec["model"])
    plan.save(out)
    return plan


__all__ = ["SearchResult", "default_target", "load_supernet", "manual_plan", "run_search"]
