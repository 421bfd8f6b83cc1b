"""`updp run`: the whole UPDP chain in one run directory, with stages that skip when nothing changed.

    from updp.pipeline import RunConfig, run_pipeline
    outcome = run_pipeline(RunConfig.load("run.toml"), "runs/atto")
    outcome = run_pipeline(None, "runs/atto", resume=True)       # continue a killed run

Layout of a run directory:

    config.json                 the resolved RunConfig
    <stage>/stage.json          the stage record (below)
    <stage>/result.json         what the stage found (read by later stages and the report)
    <stage>/...                 its outputs (checkpoints, plan, ONNX files, bench.json)
    report.md, report.html, results.json, figures/*.png

The stage record holds a content hash of the stage's inputs: the config subset the stage depends on
and the sha256 of every input file (the previous stages' outputs, or a user checkpoint). A stage is
skipped when its record says "done", its input hash is unchanged and its outputs still have the
recorded hashes; otherwise it runs, and since its outputs then change, so do the input hashes of
the stages after it. A stage that was interrupted (record "running" or "failed" with the same input
hash) runs again; training stages then continue from their last epoch checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch.jit import TracerWarning

from updp.blocks.discover import find_blocks, prunable_candidates
from updp.core.errors import InputError
from updp.core.io import check_writable_dir, write_text_atomic
from updp.core.version import __version__
from updp.data import data_fingerprint, refuse_outputs_in_data
from updp.models.zoo import create_model
from updp.pipeline.config import STAGE_NAMES, RunConfig
from updp.pipeline.report import headline
from updp.pipeline.stages import STAGES, StageContext

logger = logging.getLogger(__name__)

RECORD_VERSION = 1
CONFIG_FILE = "config.json"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_inputs(stage: str, config: dict[str, Any], files: dict[str, str]) -> str:
    """sha256 over the stage name, the record version, the config subset and the input file hashes."""
    blob = json.dumps({"stage": stage, "record_version": RECORD_VERSION, "config": config, "files": files},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


@dataclass
class StageRecord:
    """`<stage>/stage.json`: how a stage ran, on what inputs, with what outputs.

    Attributes:
        stage: its name.
        status: "running" (started; a kill leaves it so), "failed" (raised), or "done".
        input_hash: `hash_inputs` of its inputs.
        inputs: the config subset and `{label: {"path", "sha256"}}` of its input files.
        outputs: `{label: {"path" (relative to the run directory), "sha256"}}`.
        started, finished: UTC timestamps; seconds: wall time of the last attempt.
        attempts: how many times it started with these inputs (> 1 after a resume).
        error: the exception of a failed attempt.
    """

    stage: str
    status: str
    input_hash: str
    inputs: dict[str, Any]
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)
    started: str = ""
    finished: str | None = None
    seconds: float | None = None
    attempts: int = 1
    error: str | None = None
    updp_version: str = __version__
    record_version: int = RECORD_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def read(cls, path: Path) -> StageRecord | None:
        if not path.is_file():
            return None
        try:
            d = json.loads(path.read_text())
            if d.get("record_version") != RECORD_VERSION:
                return None
            return cls(**d)
        except (json.JSONDecodeError, TypeError):
            logger.warning("%s is unreadable: the stage runs again", path)
            return None

    def write(self, path: Path) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")


@dataclass
class StageStatus:
    """One line of the outcome: what happened to a stage in this invocation."""

    stage: str
    action: str          # "ran", "resumed", "skipped"
    seconds: float
    summary: str = ""


@dataclass
class RunOutcome:
    """What `run_pipeline` did; `results` holds every stage's result (ran or skipped)."""

    run_dir: Path
    config: RunConfig
    stages: list[StageStatus]
    results: dict[str, dict[str, Any]]
    seconds: float

    @property
    def ran(self) -> list[str]:
        return [s.stage for s in self.stages if s.action != "skipped"]

    def headline(self) -> dict[str, Any]:
        return headline(self.results)


def _outputs_intact(run_dir: Path, rec: StageRecord) -> bool:
    for out in rec.outputs.values():
        p = run_dir / out["path"]
        if not p.is_file() or sha256_file(p) != out["sha256"]:
            logger.info("stage %s: output %s is missing or changed: it runs again", rec.stage, p)
            return False
    return True


@contextlib.contextmanager
def quiet_third_party(verbose: bool) -> Iterator[None]:
    """Hide known, harmless library chatter; show everything with `verbose`.

    Hidden: TorchScript tracer warnings (expected on timm's Python branches), and the deprecation
    and future notices of torch/timm/onnx internals that a user cannot act on. Warnings raised by
    updp itself and every logged error still show.
    """
    if verbose:
        yield
        return
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("ignore", category=TracerWarning)
        for module in ("torch", "timm", "onnx", "onnxruntime", "onnxsim", "matplotlib"):
            warnings.filterwarnings("ignore", category=UserWarning, module=module)
        yield


def resolve_config(cfg: RunConfig | None, run_dir: Path, resume: bool) -> RunConfig:
    """The config of this invocation: given, or (with `resume`) the one saved in the run directory."""
    saved = run_dir / CONFIG_FILE
    if resume:
        if not saved.is_file():
            raise InputError(f"--resume {run_dir}: no {CONFIG_FILE} there (not an updp run directory, or one killed "
                             "before it started: rerun the original command with --out)")
        return cfg if cfg is not None else RunConfig.from_json(saved.read_text())
    if cfg is None:
        raise InputError("updp run: give a config (--config F.toml or flags), or --resume DIR")
    return cfg


def _check_before_work(cfg: RunConfig, run_dir: str | os.PathLike) -> None:
    """What refuses a run before anything is written or trained: a run folder inside the data, a
    model without prunable blocks."""
    refuse_outputs_in_data([run_dir], cfg.data.spec)
    _check_prunable(cfg)


def _check_prunable(cfg: RunConfig) -> None:
    """Before the baseline trains (minutes): the model has blocks to prune, and the blocks the
    config names are among them. The blocks do not depend on the weights or the class count.

    Raises:
        InputError: no prunable block (a family updp does not linearize), or `search.blocks` that
            are not prunable blocks.
    """
    module, _ = create_model(cfg.model.name, num_classes=2, input_size=(3, *cfg.model.input_size),
                             **dict(cfg.model.kwargs))
    blocks = find_blocks(module)
    if not any(b.prunable for b in blocks):
        raise InputError(f"{cfg.model.name} has no block updp can prune (`updp blocks {cfg.model.name}` lists its "
                         "blocks and why): the run would train its baseline for nothing")
    if cfg.search.blocks is not None:
        prunable_candidates(blocks, cfg.search.blocks, what="search.blocks", model=cfg.model.name)


def run_pipeline(cfg: RunConfig | None, run_dir: str | Path, *, resume: bool = False, force: bool = False,
                 redo: list[str] | None = None, until: str | None = None, progress: bool = True, verbose: bool = False,
                 echo: Callable[[str], None] | None = None) -> RunOutcome:
    """Run the stages of `updp run` in `run_dir` (see the module docstring).

    Args:
        cfg: the configuration; None with `resume` reads `run_dir/config.json`.
        run_dir: the run directory (created).
        resume: continue the run in `run_dir` (its saved config unless `cfg` is given).
        force: run every stage even if its inputs are unchanged.
        redo: run these stages even if their inputs are unchanged (e.g. `["report"]` after an upgrade);
            later stages rerun only if the outputs change.
        until: stop after this stage.
        progress: tqdm bars in training.
        verbose: show every library warning.
        echo: receives one line per stage event (default: the `updp.pipeline` logger at INFO).

    Raises:
        InputError: bad config, unknown stage, a stage's bad input.
    """
    t_all = time.perf_counter()
    checked = isinstance(cfg, RunConfig)
    if checked:  # before the folder is made
        _check_before_work(cfg, run_dir)
    run_dir = check_writable_dir(run_dir)
    echo = echo or logger.info
    cfg = resolve_config(cfg, run_dir, resume)
    if until is not None and until not in STAGE_NAMES:
        raise InputError(f"--until {until!r}: unknown stage; stages are {', '.join(STAGE_NAMES)}")
    bad = sorted(set(redo or []) - set(STAGE_NAMES))
    if bad:
        raise InputError(f"--redo {bad}: unknown stage; stages are {', '.join(STAGE_NAMES)}")
    if not checked:  # a resumed run's config, read from its folder
        _check_before_work(cfg, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / CONFIG_FILE, cfg.to_json())
    ctx = StageContext(cfg=cfg, run_dir=run_dir, progress=progress, echo=echo,
                       data_files=data_fingerprint(cfg.data.spec))
    statuses: list[StageStatus] = []
    n = len(STAGES) if until is None else STAGE_NAMES.index(until) + 1
    echo(f"updp run: {run_dir} ({cfg.model.name} {cfg.model.input_size[0]}x{cfg.model.input_size[1]} on "
         f"{cfg.data.spec})")
    with quiet_third_party(verbose):
        for k, stage in enumerate(STAGES[:n], 1):
            statuses.append(_run_stage(ctx, stage, k, n, force or stage.name in (redo or [])))
    seconds = time.perf_counter() - t_all
    ran = [s.stage for s in statuses if s.action != "skipped"]
    echo(f"updp run: {len(ran)} of {n} stages ran ({', '.join(ran) or 'none: everything up to date'}) in "
         f"{seconds:.1f} s")
    return RunOutcome(run_dir=run_dir, config=cfg, stages=statuses, results=dict(ctx.results), seconds=seconds)


def _run_stage(ctx: StageContext, stage, k: int, n: int, force: bool) -> StageStatus:
    run_dir = ctx.run_dir
    sdir = run_dir / stage.name
    rec_path, res_path = sdir / "stage.json", sdir / "result.json"
    subset, files = stage.inputs(ctx)
    if "data" in subset and ctx.data_files is not None:  # the spec names a folder: what is in it is an input too
        subset = {**subset, "data_files": ctx.data_files}
    file_hashes = {}
    for label, p in files.items():
        if not Path(p).is_file():
            raise InputError(f"stage {stage.name}: input {label} {p} is missing (rerun the stage that writes it)")
        file_hashes[label] = sha256_file(p)
    h = hash_inputs(stage.name, subset, file_hashes)
    prev = StageRecord.read(rec_path)
    tag = f"[{k}/{n}] {stage.name:<8}"
    if (not force and prev is not None and prev.status == "done" and prev.input_hash == h
            and res_path.is_file() and _outputs_intact(run_dir, prev)):
        ctx.results[stage.name] = json.loads(res_path.read_text())
        ctx.echo(f"{tag} skipped (finished, inputs unchanged)")
        return StageStatus(stage.name, "skipped", 0.0)

    resume = (not force and prev is not None and prev.status in ("running", "failed") and prev.input_hash == h)
    if prev is not None and prev.input_hash != h:
        logger.info("stage %s: inputs changed (hash %s -> %s)", stage.name, prev.input_hash[:12], h[:12])
    res_path.unlink(missing_ok=True)
    rec = StageRecord(stage=stage.name, status="running", input_hash=h, started=_now(),
                      inputs={"config": subset, "files": {lb: {"path": str(p), "sha256": file_hashes[lb]}
                                                          for lb, p in files.items()}},
                      attempts=(prev.attempts + 1) if resume else 1)
    rec.write(rec_path)
    ctx.echo(f"{tag} {'resuming' if resume else 'running'}: {stage.describe}")
    t0 = time.perf_counter()
    try:
        outcome = stage.run(ctx, resume)
    except BaseException as exc:
        rec.status, rec.seconds = "failed", time.perf_counter() - t0
        rec.error = f"{type(exc).__name__}: {exc}".strip()
        rec.finished = _now()
        rec.write(rec_path)
        raise
    seconds = time.perf_counter() - t0
    outputs = {}
    for label, p in outcome.outputs.items():
        outputs[label] = {"path": os.path.relpath(p, run_dir), "sha256": sha256_file(p)}
    result = {"files": {lb: o["path"] for lb, o in outputs.items()}, **outcome.result, "seconds_stage": seconds}
    write_text_atomic(res_path, json.dumps(result, indent=2, default=str) + "\n")
    rec.status, rec.outputs, rec.seconds, rec.finished = "done", outputs, seconds, _now()
    rec.write(rec_path)
    ctx.results[stage.name] = json.loads(res_path.read_text())
    ctx.echo(f"{tag} done in {seconds:.1f} s: {outcome.summary}")
    return StageStatus(stage.name, "resumed" if resume else "ran", seconds, outcome.summary)


def format_headline(outcome: RunOutcome) -> str:
    """The lines a user reads at the end of a run: where the report is, and the headline figures."""
    hl = outcome.headline()
    lines = [f"report: {(outcome.run_dir / 'report.html').resolve()} (also report.md, results.json)"]
    if hl.get("baseline_acc") is not None:
        lines.append(f"  accuracy (val, ONNX Runtime): baseline {100 * hl['baseline_acc']:.2f}% -> pruned "
                     f"{100 * hl['pruned_acc']:.2f}% ({hl['acc_delta_points']:+.2f} points, n = {hl['val_n']})")
    if hl.get("pruned_blocks") is not None:
        lines.append(f"  pruned blocks {hl['pruned_blocks']}; ONNX nodes {hl['nodes'][0]} -> {hl['nodes'][1]}")
    for level, name in (("all", "ORT_ENABLE_ALL"), ("disable", "ORT_DISABLE_ALL")):
        if hl.get(f"speedup_{level}") is not None:
            b, p = hl[f"median_ms_{level}"]
            lines.append(f"  speedup under {name}: {hl[f'speedup_{level}']:.3f}x (median {b:.3f} -> {p:.3f} ms, "
                         f"{outcome.config.bench.threads} threads, batch {(outcome.config.bench.batch or [1])[0]})")
    if hl.get("max_abs_diff") is not None:
        lines.append(f"  merge verified: max abs diff {hl['max_abs_diff']:.1e} vs the unmerged export")
    return "\n".join(lines)


__all__ = ["RunOutcome", "StageRecord", "StageStatus", "format_headline", "hash_inputs", "resolve_config",
           "run_pipeline", "sha256_file"]
