"""The `updp` command line. Each subcommand is a thin wrapper over the Python API.

Exit codes (see `updp.errors`): 0 ok, 1 internal error, 2 bad input, 3 unsupported pattern,
4 verification failed (no output written), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from updp import __version__
from updp.errors import InputError, UpdpError

logger = logging.getLogger("updp")

EPILOG_EXIT_CODES = """exit codes: 0 ok, 1 internal error (a bug), 2 bad input, 3 unsupported pattern,
4 verification failed (nothing written), 130 interrupted"""


def _parse_blocks(text: str) -> list[int]:
    try:
        out = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--blocks expects comma-separated integers, got {text!r}") from None
    if not out:
        raise argparse.ArgumentTypeError("--blocks is empty")
    return out


def _parse_input_size(text: str) -> tuple[int, int]:
    """`224` or `224x160` (H x W)."""
    try:
        parts = [int(p) for p in text.lower().replace(",", "x").split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input-size expects S or HxW, got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"--input-size expects S or HxW with positive sizes, got {text!r}")
    return parts[0], parts[1]


def _parse_kwargs(items: list[str] | None) -> dict:
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


def _emit(args, payload: dict, text: str) -> None:
    """Print JSON (for pipelines) or the human table."""
    if getattr(args, "json", False):
        print(json.dumps(payload, indent=2, sort_keys=True))
    else:
        print(text)


# ---------------------------------------------------------------- commands

def cmd_blocks(args) -> int:
    from updp.api import list_blocks

    report = list_blocks(args.model, input_size=args.input_size, model_kwargs=_parse_kwargs(args.model_kwarg),
                         latency=args.latency, threads=args.threads)
    _emit(args, report.to_dict(), report.format_table())
    return 0


def cmd_export(args) -> int:
    from updp.api import ExportOptions, export_model

    opts = ExportOptions(
        model=args.model, blocks=args.blocks, prune=args.prune, checkpoint=args.checkpoint,
        input_size=args.input_size, batch=args.batch, dynamic_batch=args.dynamic_batch,
        optimize=not args.no_optimize, verify=not args.no_verify, opset=args.opset, seed=args.seed,
        model_kwargs=_parse_kwargs(args.model_kwarg), num_classes=args.num_classes)
    result = export_model(opts, out=args.out)
    _emit(args, result.to_dict(), result.format_summary())
    return 0


def cmd_optimize(args) -> int:
    from updp.api import optimize_file

    result = optimize_file(args.input, args.out, verify=not args.no_verify, polish=not args.no_onnxsim,
                           fold_layernorm_affine=args.fold_layernorm)
    _emit(args, result.to_dict(), result.format_summary())
    return 0


def cmd_bench(args) -> int:
    from updp.api import bench_files

    report = bench_files(args.models, threads=args.threads, opt_levels=args.opt_level, batch=args.batch,
                         warmup=args.warmup, repeats=args.repeats, device=args.device)
    if args.save:
        report.to_json(args.save)
    _emit(args, report.to_dict(), report.format_table())
    return 0


def cmd_demo(args) -> int:
    if args.latency_only:
        from updp.api import demo

        return demo(out_dir=args.out_dir or "runs/demo_latency", quick=args.quick)
    from updp.pipeline import demo_pipeline

    return demo_pipeline(args.out_dir or "runs/demo", quick=args.quick, verbose=args.verbose, quiet=args.quiet)


# ---------------------------------------------------------------- training commands (issue #3)

def _train_config(args, **over):
    from updp.pruning.train import TrainConfig

    kw = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
              warmup_epochs=args.warmup_epochs, label_smoothing=args.label_smoothing, seed=args.seed,
              device=args.device, out=args.out, resume=args.resume, log_jsonl=args.log_jsonl,
              progress=not (args.no_progress or args.quiet), max_steps_per_epoch=args.max_steps_per_epoch,
              amp=args.amp)
    kw.update(over)
    return TrainConfig(**kw)


def _emit_rank0(args, payload: dict, text: str) -> None:
    """Under torchrun every rank runs the command; only rank 0 reports."""
    from updp.pruning.train import dist_info

    if dist_info()[0] == 0:
        _emit(args, payload, text)


def _history_text(history: list[dict]) -> list[str]:
    lines = []
    for h in history:
        lam = f"  lambda {h['lam']:.2f}" if h.get("lam") is not None else ""
        lines.append(f"  epoch {h['epoch']:>3}  train loss {h['train_loss']:.4f} acc {h['train_acc']:.4f}  "
                     f"val loss {h['val_loss']:.4f} acc {h['val_acc']:.4f}{lam}  {h['seconds']:.1f} s")
    return lines


def cmd_train(args) -> int:
    from updp.data import get_datasets
    from updp.models import load_checkpoint
    from updp.pruning.train import Trainer, build_for_data

    data = get_datasets(args.data, args.input_size or (32, 32), split_seed=args.split_seed)
    module, spec = build_for_data(args.model, data, model_kwargs=_parse_kwargs(args.model_kwarg), seed=args.seed)
    if args.checkpoint:
        load_checkpoint(module, args.checkpoint)
    cfg = _train_config(args)
    result = Trainer(module, data, cfg, checkpoint_extra=lambda: {"model_spec": spec, "data": data.description}).fit()
    payload = {"model_spec": spec, "data": data.description, "val_acc": result.val_acc, "val_loss": result.val_loss,
               "checkpoint": result.checkpoint, "seconds": result.seconds, "history": result.history}
    text = "\n".join([f"wrote {result.checkpoint}", f"  {spec['model']} {tuple(spec['input_size'])}, "
                      f"{data.description}", *_history_text(result.history),
                      f"  val acc {result.val_acc:.4f} in {result.seconds:.1f} s"])
    _emit_rank0(args, payload, text)
    return 0


def cmd_prune(args) -> int:
    from updp.pruning import PrunePlan
    from updp.pruning.progressive import PruneConfig, prune_checkpoint

    options = {}
    if args.swap_at_start:
        options["swap_at_start"] = True
    pcfg = PruneConfig(schedule=args.schedule, ramp_fraction=args.ramp_fraction, abrupt=args.abrupt, drop=args.drop,
                       kd=not args.no_kd, kd_alpha=args.kd_alpha, kd_temperature=args.kd_temperature,
                       calib_batches=args.calib_batches, block_options=options)
    if args.no_supernet and args.plan:
        raise InputError("--no-supernet takes the blocks from --blocks or --prune; --plan comes from the search")
    plan = PrunePlan.load(args.plan) if args.plan else None
    res = prune_checkpoint(args.checkpoint, args.data, train=_train_config(args), prune=pcfg, blocks=args.blocks,
                           plan=plan, prune_n=args.prune, model=args.model)
    p = res.plan
    text = "\n".join([
        f"wrote {res.train.checkpoint}",
        f"  {p.model}: pruned blocks ({p.selection_rule}): "
        + ", ".join(f"{i} {n}" for i, n in zip(p.blocks, p.block_names)),
        f"  {p.notes}",
        f"  val acc: baseline {res.baseline['acc']:.4f}, after conversion {res.at_start['acc']:.4f}",
        *_history_text(res.train.history),
        f"  final val acc {res.train.val_acc:.4f} (lambda = 1) in {res.train.seconds:.1f} s",
        f"  next: updp export {p.model} --checkpoint {res.train.checkpoint} --out pruned.onnx"])
    _emit_rank0(args, res.to_dict(), text)
    return 0


def cmd_search(args) -> int:
    from updp.pruning.search import run_search

    res = run_search(
        args.checkpoint, args.data, target_blocks=args.target_blocks, target_speedup=args.target_speedup,
        out=args.out, epochs=args.epochs, method=args.method, candidates=args.candidates, seed=args.seed,
        population=args.population, parents=args.parents, max_evals=args.max_evals,
        exhaustive_limit=args.exhaustive_limit, n_random=args.random_picks, calib_batches=args.calib_batches,
        recalibrate=args.recalibrate, batch_size=args.batch_size, lr=args.lr, kd_alpha=args.kd_alpha,
        kd_temperature=args.kd_temperature, max_steps_per_epoch=args.max_steps_per_epoch, amp=args.amp,
        supernet_out=args.supernet, reuse_supernet=args.reuse_supernet, lut=args.lut, threads=args.threads,
        measure=not args.no_measure, bench_repeats=args.bench_repeats, device=args.device,
        split_seed=args.split_seed, progress=not args.quiet, log_jsonl=args.log_jsonl)
    _emit_rank0(args, res.to_dict(), res.format_summary())
    return 0


def cmd_eval(args) -> int:
    from updp.pruning.train import evaluate_file

    res = evaluate_file(args.file, args.data, split=args.split, batch_size=args.batch_size,
                        input_size=args.input_size, split_seed=args.split_seed, model=args.model)
    text = (f"{res['file']}: {res['split']} accuracy {res['acc']:.4f} ({round(res['acc'] * res['n'])}/{res['n']}), "
            f"loss {res['loss']:.4f}, {res['provider']}, {res['seconds']:.1f} s")
    _emit(args, res, text)
    return 0


def _run_config(args):
    """The run config: --config file (or the saved one with --resume, or the defaults), then flags."""
    from pathlib import Path

    from updp.pipeline import RunConfig

    if args.config:
        cfg = RunConfig.load(args.config)
    elif args.resume:
        saved = Path(args.resume) / "config.json"
        if not saved.is_file():
            raise InputError(f"--resume {args.resume}: no config.json there (not an updp run directory)")
        cfg = RunConfig.from_json(saved.read_text())
    else:
        cfg = RunConfig()
    over: dict = {"model": {}, "data": {}, "baseline": {}, "search": {}, "prune": {}, "bench": {}}
    for flag, section, key in (("model", "model", "name"), ("input_size", "model", "input_size"),
                               ("data", "data", "spec"), ("split_seed", "data", "split_seed"),
                               ("baseline_epochs", "baseline", "epochs"), ("blocks", "search", "blocks"),
                               ("search_epochs", "search", "epochs"), ("max_evals", "search", "max_evals"),
                               ("prune_epochs", "prune", "epochs"), ("threads", "bench", "threads"),
                               ("repeats", "bench", "repeats")):
        value = getattr(args, flag)
        if value is not None:
            over[section][key] = list(value) if isinstance(value, tuple) else value
    if args.model_kwarg:
        over["model"]["kwargs"] = {**cfg.model.kwargs, **_parse_kwargs(args.model_kwarg)}
    if args.checkpoint:
        over["baseline"]["checkpoint"] = args.checkpoint
        over["baseline"].setdefault("epochs", 0)  # take it as is unless --baseline-epochs fine-tunes it
    if args.target_blocks is not None or args.target_speedup is not None:
        over["search"].update(target_blocks=args.target_blocks, target_speedup=args.target_speedup, blocks=None)
    elif args.blocks is not None:
        over["search"].update(target_blocks=None, target_speedup=None)
    if args.no_kd:
        over["prune"]["kd"] = False
    top = {k: getattr(args, k) for k in ("device", "max_steps_per_epoch", "amp") if getattr(args, k) is not None}
    return cfg.replace(**{k: v for k, v in over.items() if v}, **top)


def cmd_run(args) -> int:
    from updp.pipeline import run_pipeline
    from updp.pipeline.run import format_headline

    if not args.print_config and bool(args.out) == bool(args.resume):
        raise InputError("give --out DIR for a new run, or --resume DIR to continue one")
    cfg = _run_config(args)
    if args.print_config:
        print(cfg.to_toml(), end="")
        return 0

    def echo(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    outcome = run_pipeline(cfg, args.out or args.resume, resume=bool(args.resume), force=args.force,
                           redo=args.redo, until=args.until, progress=not (args.quiet or args.no_progress),
                           verbose=args.verbose, echo=echo)
    payload = {"run_dir": str(outcome.run_dir), "seconds": outcome.seconds, "headline": outcome.headline(),
               "stages": [vars(s) for s in outcome.stages]}
    _emit(args, payload, format_headline(outcome) if "report" in outcome.results else
          f"stopped after {outcome.stages[-1].stage}: {outcome.run_dir}")
    return 0


# ---------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="updp",
        description="Depth-prune vision models (UPDP), merge the linearized blocks exactly in ONNX, "
                    "and prove the speedup with ONNX Runtime.",
        epilog="examples:\n  updp blocks convnext_tiny\n  updp export convnext_tiny --prune 6 --out p6.onnx\n"
               "  updp bench base.onnx p6.onnx --threads 2\n\n" + EPILOG_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"updp {__version__}")
    verbosity = p.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    def model_args(sp):
        sp.add_argument("model", help="timm:NAME, torchvision:NAME, or a bare NAME (timm)")
        sp.add_argument("--input-size", type=_parse_input_size, default=None, metavar="S|HxW",
                        help="input resolution (default: the model's own)")
        sp.add_argument("--model-kwarg", action="append", metavar="KEY=VALUE",
                        help="constructor argument, e.g. patch_size=4 (repeatable)")

    sp = sub.add_parser("blocks", help="list the prunable blocks of a model", formatter_class=fmt,
                        epilog="examples:\n  updp blocks convnext_tiny\n  updp blocks torchvision:resnet50 --latency\n"
                               "  updp blocks deit_tiny_patch16_224 --json")
    model_args(sp)
    sp.add_argument("--latency", action="store_true", help="also measure each block's share of ORT time")
    sp.add_argument("--threads", type=int, default=2, help="ORT intra-op threads for --latency (default 2)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_blocks)

    sp = sub.add_parser("export", help="export to ONNX, merge pruned blocks, verify", formatter_class=fmt,
                        epilog="Without --checkpoint the weights are random and pruned blocks sit at lambda=1 with\n"
                               "randomized BN statistics: a latency what-if before any training.\n\n"
                               "examples:\n  updp export convnext_tiny --prune 6 --out convnext_p6.onnx\n"
                               "  updp export torchvision:resnet50 --blocks 3,7 --out r50.onnx --json\n"
                               "  updp export convnext_tiny --out base.onnx           # unpruned baseline")
    model_args(sp)
    sel = sp.add_mutually_exclusive_group()
    sel.add_argument("--prune", type=int, metavar="N",
                     help="prune N blocks chosen by the default rule (largest estimated saving)")
    sel.add_argument("--blocks", type=_parse_blocks, metavar="i,j,...", help="prune exactly these block indices")
    sp.add_argument("--checkpoint", help="weights (.pt state dict, loaded with weights_only=True)")
    sp.add_argument("--num-classes", type=int, default=None, help="classifier size (default: the model's)")
    sp.add_argument("--batch", type=int, default=1, help="export batch size (default 1)")
    sp.add_argument("--dynamic-batch", action="store_true", help="make the batch axis symbolic")
    sp.add_argument("--opset", type=int, default=18)
    sp.add_argument("--seed", type=int, default=0, help="seed for random weights/statistics")
    sp.add_argument("--no-optimize", action="store_true", help="skip the merge passes (plain export)")
    sp.add_argument("--no-verify", action="store_true", help="skip the ORT equivalence check (not advised)")
    sp.add_argument("--out", required=True, help="output .onnx path (written atomically)")
    sp.add_argument("--json", action="store_true", help="machine-readable summary")
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("optimize", help="merge linear chains and fold norms in any ONNX file", formatter_class=fmt,
                        epilog="examples:\n  updp optimize model.onnx --out model.opt.onnx\n"
                               "  updp optimize model.onnx --out model.opt.onnx --json")
    sp.add_argument("input", help="input .onnx")
    sp.add_argument("--out", required=True, help="output .onnx path (written atomically)")
    sp.add_argument("--no-verify", action="store_true", help="skip the ORT equivalence check (not advised)")
    sp.add_argument("--no-onnxsim", action="store_true", help="skip the final onnxsim polish")
    sp.add_argument("--fold-layernorm", action="store_true",
                    help="also fold LayerNorm affines into the next linear (off: ORT applies them for free)")
    sp.add_argument("--json", action="store_true", help="machine-readable summary")
    sp.set_defaults(func=cmd_optimize)

    sp = sub.add_parser("bench", help="interleaved A/B latency with ONNX Runtime", formatter_class=fmt,
                        epilog="Speedups are relative to the first model.\n\nexamples:\n"
                               "  updp bench base.onnx p6.onnx\n"
                               "  updp bench base.onnx p6.onnx --opt-level disable all --threads 2 --json")
    sp.add_argument("models", nargs="+", help="ONNX files; the first is the reference")
    sp.add_argument("--threads", type=int, default=2, help="ORT intra-op threads (default 2)")
    sp.add_argument("--opt-level", nargs="+", default=["all"], choices=["disable", "basic", "extended", "all"],
                    help="ORT graph optimization level(s) (default all)")
    sp.add_argument("--batch", type=int, default=1)
    sp.add_argument("--warmup", type=int, default=10)
    sp.add_argument("--repeats", type=int, default=50)
    sp.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    sp.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    sp.add_argument("--save", metavar="F.json", help="also write the JSON report to a file (atomically)")
    sp.set_defaults(func=cmd_bench)

    # ------------------------------------------------------------ training (issue #3)
    def data_args(sp):
        sp.add_argument("--data", required=True, metavar="SPEC",
                        help="mnist5k, digits, imagefolder:PATH (train/ and val/), cifar10:PATH (python pickles)")
        sp.add_argument("--split-seed", type=int, default=0, help="seed of the train/holdout/val split (default 0)")

    def amp_arg(sp, default: str | None = "off"):
        sp.add_argument("--amp", choices=["off", "bf16"], default=default,
                        help="bfloat16 autocast for training forwards (float32 weights, validation and export); "
                             "faster on CPUs with AVX512-BF16/AMX and recent GPUs (default off; config key amp)")

    def train_args(sp, lr: float, warmup: float):
        sp.add_argument("--epochs", type=int, required=True)
        sp.add_argument("--batch-size", type=int, default=128, help="per process (default 128)")
        sp.add_argument("--lr", type=float, default=lr, help=f"AdamW peak learning rate (default {lr})")
        sp.add_argument("--weight-decay", type=float, default=0.05)
        sp.add_argument("--warmup-epochs", type=float, default=warmup,
                        help=f"linear warm-up, then cosine to 0 (default {warmup})")
        sp.add_argument("--label-smoothing", type=float, default=0.1)
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
        sp.add_argument("--out", required=True, help="checkpoint, written atomically after every epoch")
        sp.add_argument("--resume", action="store_true",
                        help="continue from --out after its last finished epoch (same result as no interruption)")
        sp.add_argument("--log-jsonl", metavar="F.jsonl", help="append one JSON line per epoch")
        sp.add_argument("--max-steps-per-epoch", type=int, default=None, help="cap steps per epoch (smoke tests)")
        amp_arg(sp)
        sp.add_argument("--no-progress", action="store_true", help="no progress bars")
        sp.add_argument("--json", action="store_true", help="machine-readable summary")

    sp = sub.add_parser("train", help="train a baseline on a local dataset", formatter_class=fmt,
                        epilog="No hub weights can be downloaded here: models start from random weights, or from\n"
                               "your own state dict with --checkpoint. num_classes comes from the data. Under\n"
                               "torchrun (WORLD_SIZE > 1) training is data-parallel (DDP).\n\n"
                               "examples:\n  updp train convnext_atto --data mnist5k --epochs 10 --out base.pt\n"
                               "  updp train vit_tiny_patch16_224 --model-kwarg patch_size=4 --model-kwarg depth=6 "
                               "--data digits --epochs 30 --out vit.pt\n"
                               "  torchrun --standalone --nproc_per_node=2 -m updp train resnet18 --data "
                               "cifar10:~/cifar --epochs 5 --out r18.pt")
    sp.add_argument("model", help="timm:NAME, torchvision:NAME, or a bare NAME (timm)")
    sp.add_argument("--input-size", type=_parse_input_size, default=None, metavar="S|HxW",
                    help="training resolution (default 32)")
    sp.add_argument("--model-kwarg", action="append", metavar="KEY=VALUE",
                    help="constructor argument, e.g. patch_size=4 (repeatable)")
    sp.add_argument("--checkpoint", help="initial weights (your own state dict; same classes as the data)")
    data_args(sp)
    train_args(sp, lr=2e-3, warmup=1.0)
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("prune", help="progressive subnet training (UPDP step 3) of a trained baseline",
                        formatter_class=fmt,
                        epilog="The chosen blocks start at lambda=0 (the baseline function), their new BatchNorms\n"
                               "are calibrated, then lambda rises to 1 over --ramp-fraction of the steps and stays 1;\n"
                               "the output checkpoint is exactly mergeable and carries its plan for `updp export`.\n"
                               "Distillation from the frozen baseline is on by default (--no-kd).\n\n"
                               "examples:\n  updp prune --checkpoint base.pt --prune 2 --data mnist5k --epochs 5 "
                               "--out p2.pt\n"
                               "  updp prune --checkpoint base.pt --plan plan.json --data mnist5k --epochs 5 "
                               "--out p.pt\n"
                               "  updp prune --checkpoint base.pt --blocks 1,3 --abrupt --data mnist5k --epochs 5 "
                               "--out abrupt.pt\n"
                               "  updp export convnext_atto --checkpoint p2.pt --out p2.onnx")
    sp.add_argument("--checkpoint", required=True, help="baseline checkpoint from `updp train`")
    sp.add_argument("--model", help="model name (only for a plain state dict; checked otherwise)")
    sel = sp.add_mutually_exclusive_group(required=True)
    sel.add_argument("--plan", metavar="PLAN.json", help="a saved PrunePlan (e.g. from the search)")
    sel.add_argument("--blocks", type=_parse_blocks, metavar="i,j,...", help="prune exactly these block indices")
    sel.add_argument("--prune", type=int, metavar="N", help="N blocks by the default rule (as `updp export --prune`)")
    sp.add_argument("--schedule", choices=["linear", "cosine", "step"], default="linear",
                    help="lambda ramp shape (default linear)")
    sp.add_argument("--ramp-fraction", type=float, default=0.5,
                    help="fraction of the steps over which lambda goes 0 -> 1 (default 0.5)")
    abl = sp.add_mutually_exclusive_group()
    abl.add_argument("--abrupt", action="store_true", help="ablation: lambda = 1 from the first step (DepthShrinker)")
    abl.add_argument("--drop", action="store_true",
                     help="ablation: remove the blocks (identity-shortcut blocks only)")
    sp.add_argument("--no-kd", action="store_true", help="ablation: no distillation from the baseline")
    sp.add_argument("--no-supernet", action="store_true",
                    help="ablation: take the blocks from --blocks/--prune without a supernet search "
                         "(refuses --plan, which comes from the search)")
    sp.add_argument("--kd-alpha", type=float, default=0.5, help="distillation weight (default 0.5)")
    sp.add_argument("--kd-temperature", type=float, default=1.0)
    sp.add_argument("--swap-at-start", action="store_true", help="LN -> BN already at lambda = 0 (ablation)")
    sp.add_argument("--calib-batches", type=int, default=20, help="batches to calibrate the new BNs (default 20)")
    data_args(sp)
    train_args(sp, lr=1e-3, warmup=0.0)
    sp.set_defaults(func=cmd_prune)

    sp = sub.add_parser("eval", help="accuracy of an ONNX file (ONNX Runtime) or a checkpoint (torch)",
                        formatter_class=fmt,
                        epilog="The ONNX file takes the normalized tensor of the data pipeline, as the torch model.\n\n"
                               "examples:\n  updp eval p2.onnx --data mnist5k\n  updp eval p2.pt --data mnist5k --json")
    sp.add_argument("file", help="F.onnx or a checkpoint F.pt")
    data_args(sp)
    sp.add_argument("--split", choices=["val", "holdout", "train"], default="val")
    sp.add_argument("--batch-size", type=int, default=256)
    sp.add_argument("--input-size", type=_parse_input_size, default=None, metavar="S|HxW",
                    help="override (default: from the file)")
    sp.add_argument("--model", help="model name (only for a plain state dict)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_eval)

    sp = sub.add_parser(
        "search", help="UPDP steps 1-2: supernet training + subnet search -> plan.json", formatter_class=fmt,
        epilog="Candidates are scored by held-out accuracy (the holdout split, after BN recalibration) and by a\n"
               "per-block ORT latency table; the winner's speedup is then measured on the full model.\n"
               "The search is evolutionary, or exhaustive when the space has at most --exhaustive-limit subnets.\n\n"
               "examples:\n  updp search base.pt --data mnist5k --target-blocks 4 --epochs 3 --out plan.json\n"
               "  updp search base.pt --data mnist5k --target-speedup 1.3 --epochs 3 --out plan.json\n"
               "  updp prune --checkpoint base.pt --plan plan.json --data mnist5k --epochs 10 --out pruned.pt")
    sp.add_argument("checkpoint", help="the trained baseline (from `updp train`, or your own with a model_spec)")
    data_args(sp)
    target = sp.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-blocks", type=int, metavar="K", help="prune exactly K blocks")
    target.add_argument("--target-speedup", type=float, metavar="S", help="predicted ORT speedup >= S")
    sp.add_argument("--out", required=True, help="plan .json (written atomically; .lut/.supernet/.search beside it)")
    sp.add_argument("--epochs", type=int, default=3, help="supernet training epochs (0: score the baseline's "
                    "weights as they are; default 3)")
    sp.add_argument("--method", choices=["auto", "evolutionary", "exhaustive"], default="auto")
    sp.add_argument("--candidates", type=_parse_blocks, metavar="i,j,...", help="restrict the search to these blocks")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--max-evals", type=int, default=120, help="evolutionary budget of scored subnets")
    sp.add_argument("--population", type=int, default=16)
    sp.add_argument("--parents", type=int, default=6)
    sp.add_argument("--exhaustive-limit", type=int, default=64)
    sp.add_argument("--random-picks", type=int, default=3, help="random subnets of the same size to compare with")
    sp.add_argument("--recalibrate", choices=["all", "pruned", "none"], default="all",
                    help="BN recalibration before scoring each candidate")
    sp.add_argument("--calib-batches", type=int, default=8)
    sp.add_argument("--batch-size", type=int, default=128)
    sp.add_argument("--lr", type=float, default=1e-3)
    sp.add_argument("--kd-alpha", type=float, default=0.5)
    sp.add_argument("--kd-temperature", type=float, default=1.0)
    sp.add_argument("--max-steps-per-epoch", type=int, default=None)
    amp_arg(sp)
    sp.add_argument("--supernet", help="where to save (or, with --reuse-supernet, load) the supernet")
    sp.add_argument("--reuse-supernet", action="store_true")
    sp.add_argument("--lut", help="reuse a saved latency table (.lut.json)")
    sp.add_argument("--threads", type=int, default=2, help="ORT threads for the latency table and measurement")
    sp.add_argument("--bench-repeats", type=int, default=50)
    sp.add_argument("--no-measure", action="store_true", help="skip the full-model measurement of the winner")
    sp.add_argument("--device", default="auto")
    sp.add_argument("--log-jsonl")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_search)

    from updp.pipeline.stages import STAGE_NAMES

    sp = sub.add_parser(
        "run", help="the whole chain: baseline, search, prune, export, eval, bench, report", formatter_class=fmt,
        epilog="Stages write into the run directory and record a hash of their inputs (config subset + input\n"
               "files); rerunning skips finished stages whose inputs are unchanged and reruns the rest.\n"
               "Flags override the config file. The report: DIR/report.html, report.md, results.json.\n\n"
               "examples:\n  updp run --out runs/atto                       # defaults: convnext_atto, mnist5k\n"
               "  updp run --config run.toml --out runs/r1\n"
               "  updp run --resume runs/r1                               # continue a killed run\n"
               "  updp run --resume runs/r1 --prune-epochs 10             # only prune and later stages rerun\n"
               "  updp run --checkpoint mine.pt --model convnext_atto --data cifar10:~/c10 --blocks 1,3 --out r2\n"
               "  updp run --print-config > run.toml                      # the defaults, as a file to edit")
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
    sp.add_argument("--model", help="timm:NAME, torchvision:NAME, or a bare NAME (timm)")
    sp.add_argument("--input-size", type=_parse_input_size, default=None, metavar="S|HxW")
    sp.add_argument("--model-kwarg", action="append", metavar="KEY=VALUE", help="constructor argument (repeatable)")
    sp.add_argument("--data", metavar="SPEC", help="mnist5k, digits, imagefolder:PATH, cifar10:PATH")
    sp.add_argument("--split-seed", type=int, default=None)
    sp.add_argument("--checkpoint", help="your baseline weights (taken as is unless --baseline-epochs)")
    sp.add_argument("--baseline-epochs", type=int, default=None, help="baseline training (fine-tuning) epochs")
    tgt = sp.add_mutually_exclusive_group()
    tgt.add_argument("--blocks", type=_parse_blocks, metavar="i,j,...", help="prune these blocks (no search)")
    tgt.add_argument("--target-blocks", type=int, metavar="K", help="search K blocks to prune")
    tgt.add_argument("--target-speedup", type=float, metavar="S", help="search for a predicted speedup >= S")
    sp.add_argument("--search-epochs", type=int, default=None, help="supernet epochs")
    sp.add_argument("--max-evals", type=int, default=None, help="subnets the search scores")
    sp.add_argument("--prune-epochs", type=int, default=None, help="progressive training epochs")
    sp.add_argument("--no-kd", action="store_true", help="no distillation in the prune stage")
    sp.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (latency)")
    sp.add_argument("--repeats", type=int, default=None, help="interleaved latency rounds")
    sp.add_argument("--device", default=None, help="torch device for training: auto, cpu, cuda")
    sp.add_argument("--max-steps-per-epoch", type=int, default=None, help="cap steps per epoch (smoke runs)")
    amp_arg(sp, default=None)  # None: the config's value
    sp.add_argument("--no-progress", action="store_true", help="no progress bars")
    sp.add_argument("--json", action="store_true", help="machine-readable summary on stdout")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser(
        "demo", help="the embedded default: the whole UPDP pipeline on mnist5k + convnext_atto (~3 min)",
        formatter_class=fmt,
        epilog="Runs `updp run` on the embedded default (mnist5k, timm convnext_atto at 32x32, small budgets):\n"
               "baseline -> supernet + search -> progressive training -> export + merge + verify -> eval ->\n"
               "bench -> report. Re-running skips finished stages.\n\n"
               "examples:\n  updp demo\n  updp demo --latency-only     # ConvNeXt-T P6 what-if on random weights")
    sp.add_argument("--out-dir", default=None, help="run directory (default runs/demo)")
    sp.add_argument("--quick", action="store_true", help="smaller budgets")
    sp.add_argument("--latency-only", action="store_true",
                    help="only the export -> merge -> verify -> bench what-if of ConvNeXt-T P6 (random weights)")
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
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    _configure_logging(args)
    t0 = time.perf_counter()
    try:
        code = args.func(args)
    except UpdpError as exc:
        print(f"updp {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"updp {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line by default, the traceback with --verbose
        if args.verbose:
            raise
        print(f"updp {args.command}: internal error: {type(exc).__name__}: {exc} (rerun with -v for the "
              "traceback)", file=sys.stderr)
        return 1
    logger.debug("%s finished in %.1f s", args.command, time.perf_counter() - t0)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
