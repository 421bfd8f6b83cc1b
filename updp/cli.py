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
    from updp.api import demo

    return demo(out_dir=args.out_dir, quick=args.quick)


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

    sp = sub.add_parser("demo", help="the embedded default job: export, merge, verify, bench a small model",
                        formatter_class=fmt)
    sp.add_argument("--out-dir", default="runs/demo", help="where the ONNX files and results go")
    sp.add_argument("--quick", action="store_true", help="fewer repeats")
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
