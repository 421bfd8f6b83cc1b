"""The stages of `updp run`, each a call into the workflow that the single-step command uses.

A stage declares what it depends on (`inputs`: a config subset and files written by earlier stages
or given by the user) and does its work (`run`), writing only into its own directory of the run.
Its workflow config comes from the run config (`updp.pipeline.config`: `baseline_config`, ...).
The runner (`updp.pipeline.run`) hashes the inputs, skips a stage that finished with the same hash,
and records each stage in `<stage>/stage.json`.

| stage    | calls (`updp.workflows`)                           | writes                                |
|----------|----------------------------------------------------|---------------------------------------|
| baseline | `train.train` (train, fine-tune or take as is)     | `baseline/base.pt`                    |
| search   | `search.run_search` (or `search.manual_plan`)      | `search/plan.json` (+ lut, supernet)  |
| prune    | `prune.prune` (progressive λ, KD)                  | `prune/pruned.pt`                     |
| export   | `export.export` on both checkpoints (merge+verify) | `export/baseline.onnx`, `pruned.onnx` |
| eval     | `evaluate.evaluate` (ONNX Runtime) on both         | `eval/eval.json`                      |
| quantize | `precision.derive_files` on both (off by default)  | `quantize/{baseline,pruned}.int8.onnx` (.fp16) |
| bench    | `bench.bench` (interleaved) + `bench.block_profiles` | `bench/bench.json`                  |
| report   | `updp.pipeline.report`                             | `report.md`, `report.html`, `results.json` |
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from updp.core.errors import InputError
from updp.core.io import write_text_atomic
from updp.exporter.torch_export import versions
from updp.latency.runner import LatencySetup
from updp.ort import load_onnx
from updp.pipeline.config import (
    STAGE_FILES,
    STAGE_NAMES,
    RunConfig,
    baseline_config,
    bench_config,
    export_configs,
    in_run_terms,
    precision_config,
    prune_config,
    search_config,
    stage_subset,
)
from updp.pipeline.report import write_report
from updp.workflows.bench import bench, block_profiles
from updp.workflows.config import EvalConfig
from updp.workflows.evaluate import evaluate
from updp.workflows.export import export
from updp.workflows.precision import AccuracyDropError, derive_files, write_derived
from updp.workflows.prune import prune
from updp.workflows.search import manual_plan, run_search
from updp.workflows.train import train

logger = logging.getLogger(__name__)


@dataclass
class StageContext:
    """What a stage sees: the config, the run directory, earlier stages' results, output options.

    Attributes:
        cfg: the run configuration.
        run_dir: the run directory.
        results: `result` of every stage finished (or skipped) so far, by stage name.
        progress: show tqdm bars for long steps.
        echo: one-line progress messages for the user.
        data_files: the fingerprint of the files of a data folder (`updp.data.data_fingerprint`),
            an input of every stage that reads `[data]`; taken once per invocation (None: bundled data).
    """

    cfg: RunConfig
    run_dir: Path
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    progress: bool = True
    echo: Callable[[str], None] = logger.info
    data_files: str | None = None

    def path(self, stage: str, name: str) -> Path:
        return self.run_dir / stage / name


@dataclass
class StageOutcome:
    """What a stage produced: output files (hashed into its record) and a JSON-ready result."""

    outputs: dict[str, Path]
    result: dict[str, Any]
    summary: str = ""


@dataclass(frozen=True)
class Stage:
    """One stage: `inputs(ctx) -> (config subset, {label: file})`, `run(ctx, resume) -> StageOutcome`.

    `resume` is True when the same stage, with the same inputs, was interrupted: training stages then
    continue from their last epoch checkpoint instead of starting over.
    """

    name: str
    describe: str
    inputs: Callable[[StageContext], tuple[dict[str, Any], dict[str, Path]]]
    run: Callable[[StageContext, bool], StageOutcome]


# ------------------------------------------------------------------ helpers

def _restart_log(path: str | None, resume: bool) -> None:
    """The per-epoch log of a fresh (not resumed) start begins empty."""
    if path and not resume:
        Path(path).unlink(missing_ok=True)


def _file(ctx: StageContext, stage: str, key: str) -> Path:
    """An output file of an earlier stage, as recorded in its result."""
    try:
        return ctx.run_dir / ctx.results[stage]["files"][key]
    except KeyError:
        raise InputError(f"stage {stage!r} has not produced {key!r}: run it first") from None


def _can_resume(ctx: StageContext, key: str, resume: bool) -> bool:
    """Training continues from its last epoch checkpoint only when the stage was interrupted."""
    return resume and (ctx.run_dir / STAGE_FILES[key]).is_file()


# ------------------------------------------------------------------ baseline

def _baseline_inputs(ctx: StageContext):
    files = {}
    if ctx.cfg.baseline.checkpoint:
        p = Path(ctx.cfg.baseline.checkpoint).expanduser()
        if not p.is_file():
            raise InputError(f"baseline.checkpoint {p}: no such file")
        files["checkpoint"] = p
    return stage_subset(ctx.cfg, "model", "data", "baseline", "max_steps_per_epoch", "amp"), files


def _baseline_run(ctx: StageContext, resume: bool) -> StageOutcome:
    cfg = baseline_config(ctx.cfg, ctx.run_dir, resume=_can_resume(ctx, "baseline", resume), progress=ctx.progress)
    _restart_log(cfg.log_jsonl, cfg.resume)
    res = train(cfg, echo=ctx.echo)
    result = {"val_acc": res.val_acc, "val_loss": res.val_loss, "history": res.history, "seconds": res.seconds,
              "resumed": cfg.resume, "source": res.source, "model_spec": res.model_spec, "data": res.data}
    return StageOutcome(outputs={"checkpoint": Path(cfg.out)}, result=result,
                        summary=f"val acc {res.val_acc:.4f} ({res.source})")


# ------------------------------------------------------------------ search

def _search_inputs(ctx: StageContext):
    subset = stage_subset(ctx.cfg, "model", "data", "search", "max_steps_per_epoch", "amp")
    subset["threads"] = ctx.cfg.bench.threads  # the latency table is measured with these
    return subset, {"baseline": _file(ctx, "baseline", "checkpoint")}


def _search_run(ctx: StageContext, resume: bool) -> StageOutcome:
    plan_path = ctx.run_dir / STAGE_FILES["plan"]
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    blocks = ctx.cfg.search.blocks
    if blocks is not None:
        plan = manual_plan(str(_file(ctx, "baseline", "checkpoint")), blocks, str(plan_path))
        result = {"searched": False, "blocks": plan.blocks, "block_names": plan.block_names,
                  "rule": plan.selection_rule, "plan": plan.to_dict()}
        return StageOutcome(outputs={"plan": plan_path}, result=result,
                            summary=f"blocks {plan.blocks} given: no search")
    res = run_search(search_config(ctx.cfg, ctx.run_dir, resume=resume, progress=ctx.progress), echo=ctx.echo)
    search = res.plan.search or {}
    result = {"searched": True, "target_blocks": search.get("target_blocks"),
              "target_speedup": search.get("target_speedup"), **res.to_dict()}
    verdict = ("beats every random pick" if res.beats_random else "does NOT beat every random pick"
               ) if res.beats_random is not None else "no random picks"
    return StageOutcome(outputs={"plan": plan_path}, result=result,
                        summary=f"blocks {res.blocks}, holdout acc {res.holdout_acc:.4f} ({verdict}), "
                                f"{res.n_evals} subnets scored")


# ------------------------------------------------------------------ prune

def _prune_inputs(ctx: StageContext):
    return (stage_subset(ctx.cfg, "data", "prune", "max_steps_per_epoch", "device", "amp"),
            {"baseline": _file(ctx, "baseline", "checkpoint"), "plan": _file(ctx, "search", "plan")})


def _prune_run(ctx: StageContext, resume: bool) -> StageOutcome:
    cfg = prune_config(ctx.cfg, ctx.run_dir, resume=_can_resume(ctx, "pruned", resume), progress=ctx.progress)
    _restart_log(cfg.log_jsonl, cfg.resume)
    res = prune(cfg, echo=ctx.echo)
    result = {**res.to_dict(), "resumed": cfg.resume}
    return StageOutcome(outputs={"checkpoint": Path(cfg.out)}, result=result,
                        summary=f"blocks {res.plan.blocks}: val acc {res.baseline['acc']:.4f} -> "
                                f"{res.train.val_acc:.4f} (torch, lambda = 1)")


# ------------------------------------------------------------------ export

def _export_inputs(ctx: StageContext):
    subset = stage_subset(ctx.cfg, "export")
    subset["model"] = ctx.cfg.model.name
    return subset, {"baseline": _file(ctx, "baseline", "checkpoint"), "pruned": _file(ctx, "prune", "checkpoint")}


def _export_run(ctx: StageContext, resume: bool) -> StageOutcome:
    outs, result = {}, {}
    for key, cfg in export_configs(ctx.cfg, ctx.run_dir).items():
        outs[key], result[key] = Path(cfg.out), export(cfg).to_dict()
    pr = result["pruned"]
    diff = pr["max_abs_diff"]
    return StageOutcome(outputs=outs, result=result,
                        summary=f"nodes {result['baseline']['nodes_after']} -> {pr['nodes_after']}, merge verified"
                                + (f" (max abs diff {diff:.1e})" if diff is not None else ""))


# ------------------------------------------------------------------ eval

def _eval_inputs(ctx: StageContext):
    return (stage_subset(ctx.cfg, "data"),
            {"baseline": _file(ctx, "export", "baseline"), "pruned": _file(ctx, "export", "pruned")})


def _eval_run(ctx: StageContext, resume: bool) -> StageOutcome:
    result = {key: evaluate(EvalConfig(file=str(_file(ctx, "export", key)), data=ctx.cfg.data.spec, split="val",
                                       split_seed=ctx.cfg.data.split_seed))
              for key in ("baseline", "pruned")}
    out = ctx.path("eval", "eval.json")
    write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    b, p = result["baseline"], result["pruned"]
    return StageOutcome(outputs={"eval": out}, result=result,
                        summary=f"ONNX val acc {b['acc']:.4f} -> {p['acc']:.4f} "
                                f"({100 * (p['acc'] - b['acc']):+.2f} points, n = {p['n']})")


# ------------------------------------------------------------------ quantize

def _quantize_inputs(ctx: StageContext):
    return (stage_subset(ctx.cfg, "data", "precision"),
            {"baseline": _file(ctx, "export", "baseline"), "pruned": _file(ctx, "export", "pruned")})


def _quantize_run(ctx: StageContext, resume: bool) -> StageOutcome:
    opts = precision_config(ctx.cfg)
    if not opts.writes_derived_files:
        return StageOutcome(outputs={}, result={"enabled": False},
                            summary="off (precision.quantize = \"int8\" or precision.fp16 = true turns it on)")
    made = {}
    for key in ("baseline", "pruned"):  # both checked before either is written
        src = _file(ctx, "export", key)
        try:
            made[key] = derive_files(load_onnx(src), ctx.path("quantize", f"{key}.onnx"), opts, where=str(src))
        except AccuracyDropError as exc:  # its hint names `updp export`'s flags: say the run config's keys
            raise AccuracyDropError(f"{key}: {in_run_terms(str(exc), 'precision')}") from None
    outputs, result = {}, {"enabled": True}
    ctx.path("quantize", "").mkdir(parents=True, exist_ok=True)
    for key, items in made.items():
        for item in write_derived(items):
            outputs[f"{key}.{item.kind}"] = Path(item.out)
            result[f"{key}.{item.kind}"] = item.to_dict()
    parts = [f"{k} {100 * result[k]['accuracy']:.2f} %" for k in outputs if result[k]["accuracy"] is not None]
    return StageOutcome(outputs=outputs, result=result,
                        summary=f"{', '.join(outputs)} written" + (f"; val acc (ORT) {', '.join(parts)}" if parts
                                                                    else ""))


def _derived_files(ctx: StageContext) -> dict[str, Path]:
    """The quantize stage's files by name ('baseline.int8', ...), none when it is off."""
    return {k: ctx.run_dir / v for k, v in (ctx.results.get("quantize") or {}).get("files", {}).items()}


# ------------------------------------------------------------------ bench

def _bench_inputs(ctx: StageContext):
    return (stage_subset(ctx.cfg, "bench"),
            {"baseline": _file(ctx, "export", "baseline"), "pruned": _file(ctx, "export", "pruned"),
             **_derived_files(ctx)})


def _bench_run(ctx: StageContext, resume: bool) -> StageOutcome:
    bc = ctx.cfg.bench
    report = bench(bench_config(ctx.cfg, ctx.run_dir, _derived_files(ctx)))
    psetup = LatencySetup(device=bc.device, threads=bc.threads, warmup=bc.warmup, batch=(bc.batch or [1])[0],
                          opt_level=bc.profile_opt_level)
    files = {k: _file(ctx, "export", k) for k in ("baseline", "pruned")}
    profiles = block_profiles(files, psetup, runs=bc.profile_runs)
    # "bench": the first batch's report (the headline and the profiles' batch); "batches": all of them
    result = {"bench": report.report().to_dict(), "batches": report.to_dict(), "profiles": profiles,
              "profile_setup": psetup.to_dict(),
              "profile_runs": bc.profile_runs, "versions": versions()}
    out = ctx.path("bench", "bench.json")
    write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    fast = {lvl: report.get("pruned", lvl) for lvl in bc.opt_levels}
    text = ", ".join(f"{lvl} {t.speedup:.3f}x" for lvl, t in fast.items())
    return StageOutcome(outputs={"bench": out}, result=result, summary=f"speedup {text}")


# ------------------------------------------------------------------ report

def _report_inputs(ctx: StageContext):
    files = {name: ctx.run_dir / name / "result.json" for name in STAGE_NAMES if name != "report"}
    return {"config": ctx.cfg.to_dict()}, files


def _report_run(ctx: StageContext, resume: bool) -> StageOutcome:
    paths = write_report(ctx.run_dir, ctx.cfg, ctx.results)
    return StageOutcome(outputs=paths, result={"files": {k: str(v) for k, v in paths.items()}},
                        summary=f"{paths['html']}")


STAGES: list[Stage] = [
    Stage("baseline", "train the baseline (or take --checkpoint)", _baseline_inputs, _baseline_run),
    Stage("search", "supernet + subnet search", _search_inputs, _search_run),
    Stage("prune", "progressive training (lambda 0 -> 1, KD)", _prune_inputs, _prune_run),
    Stage("export", "ONNX export of both, merge + verify", _export_inputs, _export_run),
    Stage("eval", "ONNX Runtime accuracy of both", _eval_inputs, _eval_run),
    Stage("quantize", "int8 / float16 files of both, accuracy-checked (off by default)", _quantize_inputs,
          _quantize_run),
    Stage("bench", "interleaved latency + per-block profiles", _bench_inputs, _bench_run),
    Stage("report", "report.md, report.html, results.json", _report_inputs, _report_run),
]
if tuple(s.name for s in STAGES) != STAGE_NAMES:
    raise RuntimeError("updp.pipeline.stages and STAGE_NAMES disagree")

__all__ = ["STAGES", "STAGE_NAMES", "Stage", "StageContext", "StageOutcome"]
