"""The `updp` command line: argparse over the workflow configs, and all of updp's printing.

Every subcommand's flags are derived from the fields of its config (`updp.workflows.config`): the
flag, its help text and its default come from the field, so the command line cannot drift from
the Python API or a run config. Flags a user does not give are not passed on, so the config's
defaults apply. A command parses its config, calls its workflow, and prints the result (the human
summary, or JSON with `--json`).

Exit codes (see `updp.core.errors`): 0 ok, 1 internal error, 2 bad input, 3 unsupported pattern,
4 verification failed (no output written), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from updp.core.constants import AMP_MODES
from updp.core.errors import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, InputError, UpdpError
from updp.core.runtime import OPENMP_COMMANDS, choose_openmp_waiting, command_of
from updp.core.version import __version__
from updp.pipeline.config import STAGE_NAMES, RunConfig, demo_config
from updp.workflows.config import (
    WORKFLOW_CONFIGS,
    BenchConfig,
    BlocksConfig,
    DemoConfig,
    EvalConfig,
    ExportConfig,
    OptimizeConfig,
    PruneConfig,
    SearchConfig,
    TrainConfig,
    field_default,
    ordered_fields,
)

logger = logging.getLogger("updp")

EPILOG_EXIT_CODES = """exit codes: 0 ok, 1 internal error (a bug), 2 bad input, 3 unsupported pattern,
4 verification failed (nothing written), 130 interrupted, 141 output pipe closed"""


# ---------------------------------------------------------------- text -> values

def parse_blocks(text: str) -> list[int]:
    """`1,3,5` -> [1, 3, 5] (sorted, distinct)."""
    try:
        out = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects comma-separated integers, got {text!r}") from None
    if not out:
        raise argparse.ArgumentTypeError("is empty")
    return out


def parse_input_size(text: str) -> tuple[int, int]:
    """`224` or `224x160` (H x W)."""
    try:
        parts = [int(p) for p in text.lower().replace(",", "x").split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects S or HxW, got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"expects S or HxW with positive sizes, got {text!r}")
    return parts[0], parts[1]


def parse_kwargs(items: list[str] | None) -> dict:
    """`--model-kwarg patch_size=4` pairs; values parsed as JSON when possible."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"--model-kwarg expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


PARSERS = {"blocks": parse_blocks, "input_size": parse_input_size}
_SCALARS = {"int": int, "float": float, "str": str}


def _scalar_type(f: dataclasses.Field, default: Any):
    """The argparse `type` of a field: from its default, else from its annotation (`int | None`)."""
    if default is not None and default is not dataclasses.MISSING and not isinstance(default, (list, tuple)):
        return type(default)
    head = str(f.type).replace("list[", "").split("|")[0].strip(" ]")
    return _SCALARS.get(head, str)


def _default_note(default: Any) -> str:
    if default is None or default is dataclasses.MISSING or isinstance(default, (bool, dict)) or default == []:
        return ""
    if isinstance(default, (list, tuple)):
        if isinstance(default, tuple):  # an input size (224x160), or names (LayerNormalization,Softmax)
            shown = ("x" if all(isinstance(v, int) for v in default) else ",").join(map(str, default))
        else:
            shown = " ".join(map(str, default))
    else:
        shown = str(default)
    return f" (default {shown})"


def add_config_arguments(sp: argparse.ArgumentParser, config: type) -> None:
    """One argument per CLI field of `config` (see the module docstring)."""
    for f in ordered_fields(config):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        default = field_default(config, f.name)
        kw: dict[str, Any] = {"help": meta["help"] + _default_note(default)}
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        if meta.get("nargs"):
            kw["nargs"] = meta["nargs"]
        if meta.get("choices"):
            kw["choices"] = list(meta["choices"])
        if meta.get("positional"):
            kw.setdefault("metavar", f.name.upper())
            if default is None:
                kw["default"] = None
            sp.add_argument(f.name, type=_scalar_type(f, default), **kw)
            continue
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            kw["action"] = "store_false" if default else "store_true"
            kw["help"] = meta["help"]
        elif meta.get("parse") == "kwargs":
            kw["action"] = "append"
        else:
            kw["type"] = PARSERS.get(meta.get("parse"), None) or _scalar_type(f, default)
            kw["required"] = default is dataclasses.MISSING
        sp.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, **kw)


def config_from_args(config: type, args: argparse.Namespace, **override: Any) -> Any:
    """The config from the flags that were given (the others take the config's defaults)."""
    kw = {}
    for f in dataclasses.fields(config):
        if not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        if f.metadata.get("positional") and value is None:
            continue
        kw[f.name] = parse_kwargs(value) if f.metadata.get("parse") == "kwargs" else value
    if getattr(args, "quiet", False) and any(f.name == "progress" for f in dataclasses.fields(config)):
        kw["progress"] = False
    kw.update(override)
    return config(**kw)


# ---------------------------------------------------------------- output

def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _one_line(message: object) -> str:
    """An error is one line on stderr, whatever the library that raised it put in its text."""
    return " ".join(str(message).split())


def _emit(args, payload: dict, text: str) -> None:
    """Print JSON (for pipelines) or the human summary."""
    if getattr(args, "json", False):
        print(json.dumps(payload, indent=2, sort_keys=True, default=str))
    else:
        print(text)


def _emit_rank0(args, payload: dict, text: str) -> None:
    """Under torchrun every rank runs the command; only rank 0 reports."""
    from updp.core.distributed import is_main_process  # lazy: torch loads only for training commands

    if is_main_process():
        _emit(args, payload, text)


# ---------------------------------------------------------------- commands
# Each checks its config, then imports its workflow: the CLI starts (and `--help` answers, and a
# bad combination of flags is refused) without torch.

def cmd_blocks(args) -> int:
    cfg = config_from_args(BlocksConfig, args)
    from updp.workflows.blocks import list_blocks  # lazy: see above

    report = list_blocks(cfg)
    _emit(args, report.to_dict(), report.format_table())
    return 0


def cmd_export(args) -> int:
    cfg = config_from_args(ExportConfig, args)
    from updp.workflows.export import export  # lazy: see above

    result = export(cfg)
    _emit(args, result.to_dict(), result.format_summary())
    return 0


def cmd_optimize(args) -> int:
    cfg = config_from_args(OptimizeConfig, args)
    from updp.workflows.optimize import optimize  # lazy: see above

    result = optimize(cfg)
    _emit(args, result.to_dict(), result.format_summary())
    return 0


def cmd_bench(args) -> int:
    cfg = config_from_args(BenchConfig, args)
    from updp.workflows.bench import bench  # lazy: see above

    report = bench(cfg)
    _emit(args, report.to_dict(), report.format_table())
    return 0


def cmd_train(args) -> int:
    cfg = config_from_args(TrainConfig, args)
    from updp.workflows.train import train  # lazy: see above

    res = train(cfg, echo=_stderr)
    _emit_rank0(args, res.to_dict(), res.format_summary())
    return 0


def cmd_prune(args) -> int:
    cfg = config_from_args(PruneConfig, args)
    from updp.workflows.prune import prune  # lazy: see above

    res = prune(cfg, echo=_stderr)
    _emit_rank0(args, res.to_dict(), res.format_summary())
    return 0


def cmd_search(args) -> int:
    cfg = config_from_args(SearchConfig, args)
    from updp.workflows.search import run_search  # lazy: see above

    res = run_search(cfg, echo=_stderr)
    _emit_rank0(args, res.to_dict(), res.format_summary())
    return 0


def cmd_eval(args) -> int:
    cfg = config_from_args(EvalConfig, args)
    from updp.workflows.evaluate import evaluate, format_accuracy  # lazy: see above

    res = evaluate(cfg)
    _emit(args, res, format_accuracy(res))
    return 0


# `updp run` flags: shortcuts to run-config keys, (flag dest, section or None for top level, key).
RUN_FLAGS = (("model", "model", "name"), ("input_size", "model", "input_size"), ("data", "data", "spec"),
             ("split_seed", "data", "split_seed"), ("baseline_epochs", "baseline", "epochs"),
             ("blocks", "search", "blocks"), ("search_epochs", "search", "epochs"),
             ("max_evals", "search", "max_evals"), ("prune_epochs", "prune", "epochs"),
             ("quantize", "precision", "quantize"), ("fp16", "precision", "fp16"),
             ("threads", "bench", "threads"), ("repeats", "bench", "repeats"), ("batch", "bench", "batch"),
             ("device", None, "device"),
             ("max_steps_per_epoch", None, "max_steps_per_epoch"), ("amp", None, "amp"))


def run_config_from_args(args):
    """The run config: --config file (or the saved one with --resume, or the defaults), then flags."""
    if args.config:
        cfg = RunConfig.load(args.config)
    elif args.resume:
        saved = Path(args.resume) / "config.json"
        if not saved.is_file():
            raise InputError(f"--resume {args.resume}: no config.json there (not an updp run directory)")
        cfg = RunConfig.from_json(saved.read_text())
    else:
        cfg = RunConfig()
    sections: dict[str, dict] = {}
    top: dict[str, Any] = {}
    for flag, section, key in RUN_FLAGS:
        value = getattr(args, flag)
        if value is not None:
            value = list(value) if isinstance(value, tuple) else value
            (sections.setdefault(section, {}) if section else top)[key] = value
    if (args.checkpoint and args.model is None and not (args.config or args.resume)
            and Path(args.checkpoint).expanduser().is_file()):  # a missing file: the baseline stage says so
        # the model a checkpoint of updp records (flags given beside it still win)
        from updp.workflows.resolve import recorded_model  # lazy: reads the checkpoint with torch

        spec = recorded_model(args.checkpoint)
        if spec is not None:
            cfg = cfg.replace(model={"name": spec["model"], "input_size": list(spec["input_size"][1:]),
                                     "kwargs": spec["kwargs"]})
    if args.model_kwarg:
        sections.setdefault("model", {})["kwargs"] = {**cfg.model.kwargs, **parse_kwargs(args.model_kwarg)}
    if args.checkpoint:
        sections.setdefault("baseline", {})["checkpoint"] = args.checkpoint
        sections["baseline"].setdefault("epochs", 0)  # take it as is unless --baseline-epochs fine-tunes it
    if args.target_blocks is not None or args.target_speedup is not None:
        sections.setdefault("search", {}).update(target_blocks=args.target_blocks,
                                                 target_speedup=args.target_speedup, blocks=None)
    elif args.blocks is not None:
        sections.setdefault("search", {}).update(target_blocks=None, target_speedup=None)
    if args.no_kd:
        sections.setdefault("prune", {})["kd"] = False
    return cfg.replace(**sections, **top)


DATA_PARALLEL_COMMANDS = ("train", "search", "prune")  # the commands that run unchanged under torchrun


def _refuse_under_torchrun(command: str) -> None:
    """Only the training commands run data-parallel. Under torchrun every rank of any other command
    would do the whole job again: write the same files, and in `bench`, `blocks --latency` and the
    run's bench stage time its models while the other ranks load the same cores, so the figures
    would be wrong without any sign of it. WORLD_SIZE is read as torchrun sets it (not through
    `updp.core.distributed`, which imports torch) so that this is decided first."""
    world = os.environ.get("WORLD_SIZE", "1")
    if command in DATA_PARALLEL_COMMANDS or not (world.isdigit() and int(world) > 1):
        return
    if command in ("run", "demo"):
        raise InputError(f"updp {command} runs in one process, not under torchrun (WORLD_SIZE={world}): each rank "
                         "would export, evaluate and time the models again; train data-parallel with "
                         "`torchrun ... -m updp train|search|prune`, then `updp run --checkpoint base.pt` alone")
    raise InputError(f"updp {command} runs in one process, not under torchrun (WORLD_SIZE={world}): each rank would "
                     "do the same work again (and time the models while the others load the same cores); only "
                     f"{', '.join(DATA_PARALLEL_COMMANDS)} run data-parallel")


def cmd_run(args) -> int:
    from updp.pipeline.run import format_headline, run_pipeline  # lazy: see above

    if not args.print_config and bool(args.out) == bool(args.resume):
        raise InputError("give --out DIR for a new run, or --resume DIR to continue one")
    cfg = run_config_from_args(args)
    if args.print_config:
        print(cfg.to_toml(), end="")
        return 0
    echo = (lambda line: None) if args.quiet else _stderr
    outcome = run_pipeline(cfg, args.out or args.resume, resume=bool(args.resume), force=args.force,
                           redo=args.redo, until=args.until, progress=not (args.quiet or args.no_progress),
                           verbose=args.verbose, echo=echo)
    payload = {"run_dir": str(outcome.run_dir), "seconds": outcome.seconds, "headline": outcome.headline(),
               "stages": [vars(s) for s in outcome.stages]}
    _emit(args, payload, format_headline(outcome) if "report" in outcome.results else
          f"stopped after {outcome.stages[-1].stage}: {outcome.run_dir}")
    return 0


def cmd_demo(args) -> int:
    cfg = config_from_args(DemoConfig, args)
    if cfg.latency_only:
        from updp.workflows.demo import latency_what_if  # lazy: see above

        what_if = latency_what_if(cfg.out_dir or "runs/demo_latency", quick=cfg.quick, echo=print)
        print(what_if.report.format_table())
        print("\n" + what_if.headline())
        print(f"results in {what_if.out_dir}/ (bench.json, *.onnx)")
        return 0
    from updp.pipeline.run import format_headline, run_pipeline  # lazy: see above

    echo = (lambda line: None) if args.quiet else _stderr
    outcome = run_pipeline(demo_config(quick=cfg.quick), cfg.out_dir or "runs/demo", progress=not args.quiet,
                           verbose=args.verbose, echo=echo)
    print(format_headline(outcome))
    return 0


# ---------------------------------------------------------------- parser

# name: (one-line help, epilog with examples, handler). A declarative table: the flags come from
# the workflow configs.
COMMANDS: dict[str, tuple[str, str, Any]] = {
    "blocks": ("list the prunable blocks of a model",
               "examples:\n  updp blocks convnext_tiny\n  updp blocks torchvision:resnet50 --latency\n"
               "  updp blocks deit_tiny_patch16_224 --json", cmd_blocks),
    "export": ("export to ONNX, merge pruned blocks, verify",
               "Without --checkpoint the weights are random and pruned blocks sit at lambda=1 with\n"
               "randomized BN statistics: a latency what-if before any training. With a checkpoint of\n"
               "updp, MODEL may be left out (the checkpoint records it).\n\n"
               "examples:\n  updp export convnext_tiny --prune 6 --out convnext_p6.onnx\n"
               "  updp export torchvision:resnet50 --blocks 3,7 --out r50.onnx --json\n"
               "  updp export convnext_tiny --out base.onnx           # unpruned baseline\n"
               "  updp export --checkpoint pruned.pt --out pruned.onnx", cmd_export),
    "optimize": ("merge linear chains and fold norms in any ONNX file",
                 "examples:\n  updp optimize model.onnx --out model.opt.onnx\n"
                 "  updp optimize model.onnx --out model.opt.onnx --json", cmd_optimize),
    "bench": ("interleaved A/B latency with ONNX Runtime",
              "Speedups are relative to the first model.\n\nexamples:\n  updp bench base.onnx p6.onnx\n"
              "  updp bench base.onnx p6.onnx --opt-level disable all --threads 2 --json", cmd_bench),
    "train": ("train a baseline on a local dataset",
              "No hub weights can be downloaded here: models start from random weights, or from\n"
              "your own checkpoint with --checkpoint. num_classes comes from the data. Under\n"
              "torchrun (WORLD_SIZE > 1) training is data-parallel (DDP).\n\n"
              "examples:\n  updp train convnext_atto --data mnist5k --epochs 10 --out base.pt\n"
              "  updp train vit_tiny_patch16_224 --model-kwarg patch_size=4 --model-kwarg depth=6 "
              "--data digits --epochs 30 --out vit.pt\n"
              "  updp train convnext_atto --checkpoint mine.pt --epochs 0 --data mnist5k --out base.pt\n"
              "  torchrun --standalone --nproc_per_node=2 -m updp train resnet18 --data "
              "cifar10:~/cifar --epochs 5 --out r18.pt", cmd_train),
    "prune": ("progressive subnet training (UPDP step 3) of a trained baseline",
              "The chosen blocks start at lambda=0 (the baseline function), their new BatchNorms\n"
              "are calibrated, then lambda rises to 1 over --ramp-fraction of the steps and stays 1;\n"
              "the output checkpoint is exactly mergeable and carries its plan for `updp export`.\n"
              "Distillation from the frozen baseline is on by default (--no-kd).\n\n"
              "examples:\n  updp prune --checkpoint base.pt --prune 2 --data mnist5k --epochs 5 --out p2.pt\n"
              "  updp prune --checkpoint base.pt --plan plan.json --data mnist5k --epochs 5 --out p.pt\n"
              "  updp prune --checkpoint base.pt --blocks 1,3 --method layerfold --data mnist5k --out lf.pt\n"
              "  updp export --checkpoint p2.pt --out p2.onnx", cmd_prune),
    "eval": ("accuracy of an ONNX file (ONNX Runtime) or a checkpoint (torch)",
             "The ONNX file takes the normalized tensor of the data pipeline, as the torch model.\n\n"
             "examples:\n  updp eval p2.onnx --data mnist5k\n  updp eval p2.pt --data mnist5k --json", cmd_eval),
    "search": ("UPDP steps 1-2: supernet training + subnet search -> plan.json",
               "Candidates are scored by held-out accuracy (the holdout split, after BN recalibration) and by a\n"
               "per-block ORT latency table; the winner's speedup is then measured on the full model.\n"
               "The search is evolutionary, or exhaustive when the space has at most --exhaustive-limit subnets.\n\n"
               "examples:\n  updp search base.pt --data mnist5k --target-blocks 4 --epochs 3 --out plan.json\n"
               "  updp search base.pt --data mnist5k --target-speedup 1.3 --epochs 3 --out plan.json\n"
               "  updp prune --checkpoint base.pt --plan plan.json --data mnist5k --epochs 10 --out pruned.pt",
               cmd_search),
}
JSON_COMMANDS = ("blocks", "export", "optimize", "bench", "train", "prune", "eval", "search")
RUN_EPILOG = (
    "Stages write into the run directory and record a hash of their inputs (config subset + input\n"
    "files + the files of a data folder); rerunning skips finished stages whose inputs are unchanged\n"
    "and reruns the rest.\n"
    "Flags override the config file. The report: DIR/report.html, report.md, results.json.\n\n"
    "examples:\n  updp run --out runs/atto                       # defaults: convnext_atto, mnist5k\n"
    "  updp run --config run.toml --out runs/r1\n"
    "  updp run --resume runs/r1                               # continue a killed run\n"
    "  updp run --resume runs/r1 --prune-epochs 10             # only prune and later stages rerun\n"
    "  updp run --checkpoint mine.pt --model convnext_atto --data cifar10:~/c10 --blocks 1,3 --out r2\n"
    "  updp run --print-config > run.toml                      # the defaults, as a file to edit")
DEMO_EPILOG = (
    "Runs `updp run` on the embedded default (mnist5k, timm convnext_atto at 32x32, small budgets):\n"
    "baseline -> supernet + search -> progressive training -> export + merge + verify -> eval ->\n"
    "bench -> report. Re-running skips finished stages.\n\n"
    "examples:\n  updp demo\n  updp demo --latency-only     # ConvNeXt-T P6 what-if on random weights")


def _add_run_arguments(sp: argparse.ArgumentParser) -> None:
    """`updp run`: where, the config, and shortcuts to config keys (`RUN_FLAGS`)."""
    where = sp.add_mutually_exclusive_group()
    where.add_argument("--out", metavar="DIR", help="run directory of a new (or re-run) run")
    where.add_argument("--resume", metavar="DIR", help="continue the run in DIR with its saved config (+ flags)")
    sp.add_argument("--config", metavar="F", help="run config: .toml, .yaml/.yml (pyyaml) or .json")
    sp.add_argument("--force", action="store_true", help="rerun every stage, even when its inputs are unchanged")
    sp.add_argument("--until", choices=STAGE_NAMES, help="stop after this stage")
    sp.add_argument("--redo", action="append", choices=STAGE_NAMES, metavar="STAGE",
                    help="rerun this stage even if its inputs are unchanged (repeatable; later stages rerun "
                         "only if its outputs change)")
    sp.add_argument("--print-config", action="store_true", help="print the resolved config as TOML and exit")
    sp.add_argument("--model", help="model.name: timm:NAME, torchvision:NAME, or a bare NAME (timm)")
    sp.add_argument("--input-size", type=parse_input_size, metavar="S|HxW", help="model.input_size")
    sp.add_argument("--model-kwarg", action="append", metavar="KEY=VALUE", help="model.kwargs (repeatable)")
    sp.add_argument("--data", metavar="SPEC", help="data.spec: mnist5k, digits, imagefolder:PATH, cifar10:PATH")
    sp.add_argument("--split-seed", type=int, help="data.split_seed")
    sp.add_argument("--checkpoint", help="baseline.checkpoint: your baseline weights (taken as is unless "
                                         "--baseline-epochs); a checkpoint of updp records its model, so "
                                         "--model may then be left out")
    sp.add_argument("--baseline-epochs", type=int, help="baseline.epochs (fine-tuning epochs with --checkpoint)")
    tgt = sp.add_mutually_exclusive_group()
    tgt.add_argument("--blocks", type=parse_blocks, metavar="i,j,...", help="search.blocks: prune these (no search)")
    tgt.add_argument("--target-blocks", type=int, metavar="K", help="search.target_blocks: search K blocks")
    tgt.add_argument("--target-speedup", type=float, metavar="S", help="search.target_speedup")
    sp.add_argument("--search-epochs", type=int, help="search.epochs: supernet epochs")
    sp.add_argument("--max-evals", type=int, help="search.max_evals: subnets the search scores")
    sp.add_argument("--prune-epochs", type=int, help="prune.epochs: progressive training epochs")
    sp.add_argument("--no-kd", action="store_true", help="prune.kd = false: no distillation")
    sp.add_argument("--quantize", choices=["int8"], help="precision.quantize: the quantize stage writes int8 files "
                                                          "of both exports (calibrated on the data's train split)")
    sp.add_argument("--fp16", action="store_true", default=None, help="precision.fp16: and float16 files")
    sp.add_argument("--threads", type=int, help="bench.threads: ORT intra-op threads (latency)")
    sp.add_argument("--repeats", type=int, help="bench.repeats: interleaved latency rounds")
    sp.add_argument("--batch", type=int, nargs="+", help="bench.batch: batch size(s) of the latency tables")
    sp.add_argument("--device", help="device: torch device for training (auto, cpu, cuda)")
    sp.add_argument("--max-steps-per-epoch", type=int, help="max_steps_per_epoch: cap steps (smoke runs)")
    sp.add_argument("--amp", choices=list(AMP_MODES), help="amp: bfloat16 autocast of the training forwards")
    sp.add_argument("--no-progress", action="store_true", help="no progress bars")
    sp.add_argument("--json", action="store_true", help="machine-readable summary on stdout")


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line with a hint (not the usage block and the error)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_verbosity(p: argparse.ArgumentParser, *, top: bool) -> None:
    """-v/-q before the subcommand or after it. A subcommand's copies default to SUPPRESS, so
    that not giving them there keeps what the top level parsed."""
    verbosity = p.add_mutually_exclusive_group()
    kw = {} if top else {"default": argparse.SUPPRESS}
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks", **kw)
    verbosity.add_argument("-q", "--quiet", action="store_true", help="only errors", **kw)


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = OneLineErrorParser(
        prog="updp", formatter_class=fmt,
        description="Depth-prune vision models (UPDP), merge the linearized blocks exactly in ONNX, "
                    "and prove the speedup with ONNX Runtime.",
        epilog="examples:\n  updp blocks convnext_tiny\n  updp export convnext_tiny --prune 6 --out p6.onnx\n"
               "  updp bench base.onnx p6.onnx --threads 2\n\n" + EPILOG_EXIT_CODES)
    p.add_argument("--version", action="version", version=f"updp {__version__}")
    _add_verbosity(p, top=True)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, epilog, func) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, formatter_class=fmt, epilog=epilog)
        _add_verbosity(sp, top=False)
        add_config_arguments(sp, WORKFLOW_CONFIGS[name])
        if name in JSON_COMMANDS:
            sp.add_argument("--json", action="store_true", help="machine-readable output on stdout")
        sp.set_defaults(func=func)
    sp = sub.add_parser("run", help="the whole chain: baseline, search, prune, export, eval, bench, report",
                        formatter_class=fmt, epilog=RUN_EPILOG)
    _add_verbosity(sp, top=False)
    _add_run_arguments(sp)
    sp.set_defaults(func=cmd_run)
    sp = sub.add_parser("demo", help="the embedded default: the whole UPDP pipeline on mnist5k + convnext_atto "
                                     "(~3 min)", formatter_class=fmt, epilog=DEMO_EPILOG)
    _add_verbosity(sp, top=False)
    add_config_arguments(sp, DemoConfig)
    sp.set_defaults(func=cmd_demo)
    return p


def _configure_logging(args) -> None:
    level = logging.DEBUG if args.verbose else logging.ERROR if args.quiet else logging.WARNING
    logging.basicConfig(level=level, format="updp: %(levelname)s: %(message)s", stream=sys.stderr)
    if args.verbose:
        logging.getLogger("updp").setLevel(logging.DEBUG)
    # Third-party progress chatter is noise for a CLI user; real errors still raise.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Before any command imports torch: libgomp reads its waiting policy once, when torch loads it.
    waiting = choose_openmp_waiting() if command_of(argv) in OPENMP_COMMANDS else None
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if args.verbose and args.quiet:
        parser.error("-v and -q exclude each other")
    _configure_logging(args)
    if waiting is not None:
        logger.debug("OpenMP threads: %s waiting (%s)", waiting,
                     "other processes kept the CPUs busy" if waiting == "passive" else "no busy process seen")
    t0 = time.perf_counter()
    try:
        if not getattr(args, "print_config", False):  # printing a config runs nothing
            _refuse_under_torchrun(args.command)
        code = args.func(args)
    except UpdpError as exc:
        _stderr(f"updp {args.command}: error: {_one_line(exc)}")
        return exc.exit_code
    except KeyboardInterrupt:
        _stderr(f"updp {args.command}: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader of stdout went away (`updp ... | head`): nothing left to tell it
        with contextlib.suppress(OSError):  # and Python's own flush at exit must not fail on it either
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # a bug: one line by default, the traceback with --verbose
        if args.verbose:
            raise
        if isinstance(exc, OSError) and exc.filename is not None:  # the user's file system: a path to fix
            _stderr(f"updp {args.command}: error: {exc.filename}: {_one_line(exc.strerror or exc)}")
            return 2
        _stderr(f"updp {args.command}: internal error: {type(exc).__name__}: {_one_line(exc)} (rerun with -v "
                "for the traceback)")
        return 1
    logger.debug("%s finished in %.1f s", args.command, time.perf_counter() - t0)
    return code


def console_main() -> NoReturn:
    """The `updp` console script and `python -m updp`: `main`, and its code as the process's status.

    An interrupted command leaves through `os._exit(130)` once its output is flushed. CPython 3.11
    marks a KeyboardInterrupt as unhandled whenever it passes through `exec` of source text, even
    when `main` catches it further up, and then ends the process with SIGINT after `main` returns;
    `dataclasses` and `namedtuple` build their methods that way at import time, so a Ctrl-C that
    lands while torch is being imported would otherwise reach a parent process as "killed by
    signal 2" instead of the documented 130.
    """
    code = main()
    if code == EXIT_INTERRUPTED:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":
    console_main()
