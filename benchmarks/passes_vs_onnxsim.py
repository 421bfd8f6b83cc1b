"""What our merge passes add on top of onnxsim and of ORT's own graph optimizations.

One λ = 1 export (pruned blocks linear but not merged) is turned into three files and timed
interleaved in one run, under ORT_DISABLE_ALL and ORT_ENABLE_ALL (CPU, 2 threads, batch 1):

    export   the λ = 1 export, constants folded (ORT_ENABLE_ALL alone does its fusions on it)
    onnxsim  the same after onnxsim's full optimizer
    updp     the same after `updp optimize` (our passes, then onnxsim's polish)

It also reports the wall time of `updp optimize` (load, passes, polish, verification, save).

    .venv/bin/python benchmarks/passes_vs_onnxsim.py [--model timm:convnext_tiny --prune 6]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import save_json, setup_logging


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="timm:convnext_tiny")
    ap.add_argument("--prune", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import onnx

    from updp.exporter import optimize_file, save_model, simplify
    from updp.workflows.bench import bench
    from updp.workflows.config import BenchConfig, ExportConfig
    from updp.workflows.export import export

    with tempfile.TemporaryDirectory(prefix="updp-bench-") as tmp:
        tmp = Path(tmp)
        exp = export(ExportConfig(model=args.model, prune=args.prune, optimize=False, out=str(tmp / "export.onnx")))
        save_model(simplify(onnx.load(exp.out), optimize=True), tmp / "onnxsim.onnx")
        t0 = time.perf_counter()
        opt = optimize_file(exp.out, tmp / "updp.onnx", verify=True, polish=True, fold_layernorm_affine=False)
        wall = time.perf_counter() - t0
        print(f"{args.model} P{args.prune} (blocks {exp.pruned_blocks})")
        print(f"updp optimize wall time: {wall:.2f} s (goal < 10 s); nodes {opt.nodes_before} -> {opt.nodes_after}; "
              f"max abs diff {opt.max_abs_diff:.2e}")
        report = bench(BenchConfig(models=[str(tmp / "export.onnx"), str(tmp / "onnxsim.onnx"), str(tmp / "updp.onnx")],
                                   threads=args.threads, opt_levels=["disable", "all"], repeats=args.repeats))
        print(report.format_table())
        ours = report.get("updp.onnx", "all")
        sim = report.get("onnxsim.onnx", "all")
        print(f"ENABLE_ALL: updp vs export (ORT alone) {ours.speedup:.3f}x; updp vs onnxsim "
              f"{ours.speedup / sim.speedup:.3f}x")
        save_json("passes_vs_onnxsim.json", {"model": args.model, "prune": args.prune, "optimize_wall_s": wall,
                                             "optimize": opt.to_dict(), "bench": report.to_dict()})


if __name__ == "__main__":
    main()
