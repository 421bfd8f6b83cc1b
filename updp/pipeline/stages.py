"""The stages of `updp run`, each a thin call into the API that the single-step commands use.

A stage declares what it depends on (`inputs`: a config subset and files written by earlier stages
or given by the user) and does its work (`run`), writing only into its own directory of the run.
The runner (`updp.pipeline.run`) hashes the inputs, skips a stage that finished with the same hash,
and records each stage in `<stage>/stage.json`.

| stage    | calls                                            | writes                                |
|----------|--------------------------------------------------|---------------------------------------|
| baseline | `Trainer` (train or fine-tune) or takes a checkpoint | `baseline/base.pt`                |
| search   | `run_search` (or a manual plan from `search.blocks`) | `search/plan.json` (+ lut, supernet) |
| prune    | `prune_checkpoint` (progressive λ, KD)           | `prune/pruned.pt`                     |
| export   | `export_model` on both checkpoints (merge+verify)| `export/baseline.onnx`, `pruned.onnx` |
| eval     | `evaluate_file` (ONNX Runtime) on both           | `eval/result.json`                    |
| bench    | `benchmark` (interleaved) + `profile_nodes`      | `bench/bench.json`                    |
| report   | `updp.pipeline.report`                           | `report.md`, `report.html`, `results.json` |
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from updp.errors import InputError
from updp.pipeline.config import RunConfig, stage_subset

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
    """

    cfg: RunConfig
    run_dir: Path
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    progress: bool = True
    echo: Callable[[str], None] = logger.info
    _data: dict = field(default_factory=dict, repr=False)

    def path(self, stage: str, name: str) -> Path:
        return self.run_dir / stage / name

    def data(self):
        """The dataset at the model's input size (built once per run)."""
        from updp.data import get_datasets

        key = (self.cfg.data.spec, tuple(self.cfg.model.input_size), self.cfg.data.split_seed)
        if key not in self._data:
            self._data[key] = get_datasets(self.cfg.data.spec, self.cfg.model.input_size,
                                           split_seed=self.cfg.data.split_seed)
        return self._data[key]


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

def _train_config(ctx: StageContext, section, out: Path, resume: bool):
    from updp.pruning.train import TrainConfig

    return TrainConfig(epochs=section.epochs, batch_size=section.batch_size, lr=section.lr,
                       weight_decay=section.weight_decay, warmup_epochs=section.warmup_epochs,
                       label_smoothing=getattr(section, "label_smoothing", 0.1), seed=section.seed,
                       device=ctx.cfg.device, out=str(out), resume=resume and out.is_file(),
                       log_jsonl=str(out.with_suffix(".log.jsonl")), progress=ctx.progress,
                       max_steps_per_epoch=ctx.cfg.max_steps_per_epoch, amp=ctx.cfg.amp)


def _restart_log(path: Path, resume: bool) -> None:
    """The per-epoch log of a fresh (not resumed) start begins empty."""
    if not resume and path.exists():
        path.unlink()


def _file(ctx: StageContext, stage: str, key: str) -> Path:
    """An output file of an earlier stage, as recorded in its result."""
    try:
        return ctx.run_dir / ctx.results[stage]["files"][key]
    except KeyError:
        raise InputError(f"stage {stage!r} has not produced {key!r}: run it first") from None


def _epochs_line(history: list[dict]) -> str:
    if not history:
        return ""
    h = history[-1]
    return f"epoch {h['epoch']}: val acc {h['val_acc']:.4f}"


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
    import torch

    from updp.pruning.train import Trainer, build_for_data, evaluate, fast_cpu_math, load_trained

    cfg, b = ctx.cfg, ctx.cfg.baseline
    data = ctx.data()
    out = ctx.path("baseline", "base.pt")
    out.parent.mkdir(parents=True, exist_ok=True)
    module, spec = build_for_data(cfg.model.name, data, input_size=cfg.model.input_size,
                                  model_kwargs=cfg.model.kwargs, seed=b.seed)
    source = "trained from random weights"
    if b.checkpoint:
        loaded = load_trained(str(Path(b.checkpoint).expanduser()), model=cfg.model.name,
                              input_size=cfg.model.input_size, model_kwargs=cfg.model.kwargs,
                              num_classes=data.num_classes)
        if loaded.plan is not None:
            raise InputError(f"baseline.checkpoint {b.checkpoint} is already pruned: give the unpruned baseline")
        if list(loaded.spec["input_size"][1:]) != list(cfg.model.input_size):
            raise InputError(f"baseline.checkpoint {b.checkpoint} was trained at {loaded.spec['input_size'][1:]}, "
                             f"the run config says model.input_size = {list(cfg.model.input_size)}")
        try:
            module.load_state_dict(loaded.module.state_dict())
        except RuntimeError as exc:
            raise InputError(f"baseline.checkpoint {b.checkpoint} does not fit {cfg.model.name} with kwargs "
                             f"{cfg.model.kwargs}: {str(exc).splitlines()[0]}") from None
        source = f"checkpoint {b.checkpoint}" + (f", fine-tuned {b.epochs} epochs" if b.epochs else ", as given")
    if b.epochs == 0:
        if not b.checkpoint:
            raise InputError("baseline.epochs = 0 needs baseline.checkpoint (there is nothing to take)")
        fast_cpu_math()
        ev = evaluate(module.eval(), data.val, batch_size=256)
        from updp._io import atomic_path

        with atomic_path(out) as tmp:
            torch.save({"model": module.state_dict(), "model_spec": spec, "plan": None,
                        "data": data.description}, tmp)
        result = {"val_acc": ev["acc"], "val_loss": ev["loss"], "history": [], "seconds": 0.0}
    else:
        tcfg = _train_config(ctx, b, out, resume)
        _restart_log(Path(tcfg.log_jsonl), tcfg.resume)
        res = Trainer(module, data, tcfg,
                      checkpoint_extra=lambda: {"model_spec": spec, "data": data.description}).fit()
        result = {"val_acc": res.val_acc, "val_loss": res.val_loss, "history": res.history,
                  "seconds": res.seconds, "resumed": tcfg.resume}
    result.update({"source": source, "model_spec": spec, "data": data.description})
    return StageOutcome(outputs={"checkpoint": out}, result=result,
                        summary=f"val acc {result['val_acc']:.4f} ({source})")


# ------------------------------------------------------------------ search

def _search_inputs(ctx: StageContext):
    subset = stage_subset(ctx.cfg, "model", "data", "search", "max_steps_per_epoch", "amp")
    subset["threads"] = ctx.cfg.bench.threads  # the latency table is measured with these
    return subset, {"baseline": _file(ctx, "baseline", "checkpoint")}


def _search_run(ctx: StageContext, resume: bool) -> StageOutcome:
    from updp.pruning import PrunePlan, find_blocks
    from updp.pruning.search import run_search
    from updp.pruning.supernet import load_baseline

    s = ctx.cfg.search
    base = _file(ctx, "baseline", "checkpoint")
    plan_path = ctx.path("search", "plan.json")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    model, spec, chw = load_baseline(str(base))
    blocks = find_blocks(model, (1, *chw))
    prunable = [b.index for b in blocks if b.prunable]
    if s.blocks is not None:
        bad = [i for i in s.blocks if i not in prunable]
        if bad:
            raise InputError(f"search.blocks {bad}: not prunable blocks of {spec['model']} (prunable: {prunable}; "
                             "see `updp blocks`)")
        plan = PrunePlan(model=spec["model"], input_size=chw, blocks=list(s.blocks),
                         block_names=[blocks[i].name for i in s.blocks], lam=1.0,
                         selection_rule="manual (search.blocks in the run config; no search)",
                         model_kwargs=dict(spec["kwargs"]), num_classes=spec.get("num_classes"),
                         notes="updp run: blocks given, search skipped")
        plan.save(str(plan_path))
        result = {"searched": False, "blocks": plan.blocks, "block_names": plan.block_names,
                  "rule": plan.selection_rule, "plan": plan.to_dict()}
        return StageOutcome(outputs={"plan": plan_path}, result=result,
                            summary=f"blocks {plan.blocks} given: no search")
    target_blocks, target_speedup = s.target_blocks, s.target_speedup
    if target_blocks is None and target_speedup is None:
        target_blocks = max(1, len(prunable) // 3)
        logger.info("search: no target given; pruning a third of the %d prunable blocks (%d)", len(prunable),
                    target_blocks)
    lut = plan_path.with_suffix(".lut.json")
    res = run_search(
        str(base), ctx.cfg.data.spec, target_blocks=target_blocks, target_speedup=target_speedup,
        out=str(plan_path), epochs=s.epochs, method=s.method, seed=s.seed, population=s.population,
        parents=s.parents, max_evals=s.max_evals, n_random=s.random_picks, calib_batches=s.calib_batches,
        batch_size=s.batch_size, lr=s.lr, max_steps_per_epoch=ctx.cfg.max_steps_per_epoch, amp=ctx.cfg.amp,
        lut=str(lut) if (resume and lut.is_file()) else None, threads=ctx.cfg.bench.threads,
        bench_repeats=s.bench_repeats, profile_rounds=s.profile_rounds, device=ctx.cfg.device,
        split_seed=ctx.cfg.data.split_seed, progress=ctx.progress, resume=resume)
    result = {"searched": True, "target_blocks": target_blocks, "target_speedup": target_speedup,
              **res.to_dict()}
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
    from updp.pruning import PrunePlan
    from updp.pruning.progressive import PruneConfig, prune_checkpoint

    p = ctx.cfg.prune
    out = ctx.path("prune", "pruned.pt")
    out.parent.mkdir(parents=True, exist_ok=True)
    tcfg = _train_config(ctx, p, out, resume)
    _restart_log(Path(tcfg.log_jsonl), tcfg.resume)
    pcfg = PruneConfig(schedule=p.schedule, ramp_fraction=p.ramp_fraction, kd=p.kd, kd_alpha=p.kd_alpha,
                       kd_temperature=p.kd_temperature, calib_batches=p.calib_batches)
    res = prune_checkpoint(str(_file(ctx, "baseline", "checkpoint")), ctx.data(), train=tcfg, prune=pcfg,
                           plan=PrunePlan.load(str(_file(ctx, "search", "plan"))))
    result = {**res.to_dict(), "resumed": tcfg.resume}
    return StageOutcome(outputs={"checkpoint": out}, result=result,
                        summary=f"blocks {res.plan.blocks}: val acc {res.baseline['acc']:.4f} -> "
                                f"{res.train.val_acc:.4f} (torch, lambda = 1)")


# ------------------------------------------------------------------ export

def _export_inputs(ctx: StageContext):
    subset = stage_subset(ctx.cfg, "export")
    subset["model"] = ctx.cfg.model.name
    return subset, {"baseline": _file(ctx, "baseline", "checkpoint"), "pruned": _file(ctx, "prune", "checkpoint")}


def _export_run(ctx: StageContext, resume: bool) -> StageOutcome:
    from updp.api import ExportOptions, export_model

    e = ctx.cfg.export
    outs, result = {}, {}
    for key in ("baseline", "pruned"):
        out = ctx.path("export", f"{key}.onnx")
        ckpt = _file(ctx, "baseline" if key == "baseline" else "prune", "checkpoint")
        res = export_model(ExportOptions(model=ctx.cfg.model.name, checkpoint=str(ckpt), opset=e.opset,
                                         seed=e.seed), out=out)
        outs[key], result[key] = out, res.to_dict()
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
    from updp.pruning.train import evaluate_file

    result = {}
    for key in ("baseline", "pruned"):
        result[key] = evaluate_file(str(_file(ctx, "export", key)), ctx.cfg.data.spec, split="val",
                                    split_seed=ctx.cfg.data.split_seed)
    out = ctx.path("eval", "eval.json")
    from updp._io import write_text_atomic

    write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    b, p = result["baseline"], result["pruned"]
    return StageOutcome(outputs={"eval": out}, result=result,
                        summary=f"ONNX val acc {b['acc']:.4f} -> {p['acc']:.4f} "
                                f"({100 * (p['acc'] - b['acc']):+.2f} points, n = {p['n']})")


# ------------------------------------------------------------------ bench

def block_labels(path: Path) -> dict[str, str]:
    """`{"<i> <module path>": scope fragment}` from an export's `updp.block_scopes` metadata."""
    from updp.latency import scope_fragment
    from updp.ort import load_onnx

    meta = {p.key: p.value for p in load_onnx(path).metadata_props}
    scopes = json.loads(meta.get("updp.block_scopes", "{}"))
    return {f"{i} {name}": scope_fragment(name) for i, name in sorted(scopes.items(), key=lambda kv: int(kv[0]))}


def interleaved_profiles(files: dict[str, Path], scopes: dict[str, str], setup, *, runs: int,
                         rounds: int = 5) -> dict[str, dict]:
    """Per-block kernel time of each file, profiled in alternating rounds, median per block.

    Why rounds: the kernels of a small model take microseconds, and one profiling session of a
    model right after another drifts by 10-30 % (frequency, caches, thread wake-ups), which showed
    up as unpruned blocks getting "faster". Alternating the files, `rounds` sessions each, and
    taking each block's median over the rounds puts the drift on both alike.
    """
    from updp.latency import median_block_us, profile_blocks_alternating

    per_round = max(1, runs // rounds)
    samples = profile_blocks_alternating({k: str(v) for k, v in files.items()}, scopes, setup, rounds=rounds,
                                         runs_per_round=per_round)
    out = {}
    for key, profs in samples.items():
        med = median_block_us(profs)
        labels = list(med)
        total = sum(med.values())
        out[key] = {"total_us": total, "rounds": rounds, "runs_per_round": per_round,
                    "inherited": list(profs[0].inherited),
                    "blocks": [{"label": lb, "fragment": profs[0].get(lb).fragment, "total_us": med[lb],
                                "share": med[lb] / total if total > 0 else 0.0,
                                "n_nodes": profs[0].get(lb).n_nodes} for lb in labels]}
    return out


def _bench_inputs(ctx: StageContext):
    return (stage_subset(ctx.cfg, "bench"),
            {"baseline": _file(ctx, "export", "baseline"), "pruned": _file(ctx, "export", "pruned")})


def _bench_run(ctx: StageContext, resume: bool) -> StageOutcome:
    from updp._io import write_text_atomic
    from updp.latency import LatencySetup, benchmark

    bc = ctx.cfg.bench
    files = {k: _file(ctx, "export", k) for k in ("baseline", "pruned")}
    setup = LatencySetup(threads=bc.threads, warmup=bc.warmup, repeats=bc.repeats, batch=bc.batch,
                         opt_level="all")
    report = benchmark([(k, str(p)) for k, p in files.items()], setup, opt_levels=list(bc.opt_levels))
    psetup = LatencySetup(threads=bc.threads, warmup=bc.warmup, batch=bc.batch, opt_level=bc.profile_opt_level)
    # The baseline's blocks label both profiles: pruning replaces modules in place, so the module
    # paths (and the node-name scopes) are the same in both exports.
    scopes = block_labels(files["baseline"])
    profiles = interleaved_profiles(files, scopes, psetup, runs=bc.profile_runs)
    from updp.exporter import versions

    result = {"bench": report.to_dict(), "profiles": profiles, "profile_setup": psetup.to_dict(),
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
    from updp.pipeline.report import write_report

    paths = write_report(ctx.run_dir, ctx.cfg, ctx.results)
    return StageOutcome(outputs=paths, result={"files": {k: str(v) for k, v in paths.items()}},
                        summary=f"{paths['html']}")


STAGES: list[Stage] = [
    Stage("baseline", "train the baseline (or take --checkpoint)", _baseline_inputs, _baseline_run),
    Stage("search", "supernet + subnet search", _search_inputs, _search_run),
    Stage("prune", "progressive training (lambda 0 -> 1, KD)", _prune_inputs, _prune_run),
    Stage("export", "ONNX export of both, merge + verify", _export_inputs, _export_run),
    Stage("eval", "ONNX Runtime accuracy of both", _eval_inputs, _eval_run),
    Stage("bench", "interleaved latency + per-block profiles", _bench_inputs, _bench_run),
    Stage("report", "report.md, report.html, results.json", _report_inputs, _report_run),
]
STAGE_NAMES = [s.name for s in STAGES]

__all__ = ["STAGES", "STAGE_NAMES", "Stage", "StageContext", "StageOutcome", "block_labels"]
