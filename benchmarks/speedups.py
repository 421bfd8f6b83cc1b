"""Speedup benchmark: pruned + merged vs unpruned, ORT CPU, interleaved A/B.

For each case three files are exported with `updp.workflows.export.export` (random weights):
the unpruned model as a user has it without updp (plain export + onnxsim), the unpruned model
through our passes (to show they never slow a baseline), and the P<k> model (pruned blocks at
λ = 1, randomized BN statistics, merged and verified). They are timed with
`updp.latency.benchmark` interleaved in one run: ORT CPU, 2 intra-op threads, batch 1,
ORT_DISABLE_ALL and ORT_ENABLE_ALL side by side. Only the ENABLE_ALL ratio counts as our gain.

    .venv/bin/python benchmarks/speedups.py                 # all cases
    .venv/bin/python benchmarks/speedups.py --case timm_convnext_tiny --repeats 100
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import save_json, setup_logging

CASES = {
    # name: (model, prune N, target ENABLE_ALL speedup or None for "never slower")
    "timm_convnext_tiny": ("timm:convnext_tiny", 6, 1.30),
    "timm_deit_tiny": ("timm:deit_tiny_patch16_224", 6, 1.25),
    "tv_convnext_tiny": ("torchvision:convnext_tiny", 6, 1.25),
    "timm_mobilenetv2_100": ("timm:mobilenetv2_100", 4, 1.0),
    "timm_resnet18": ("timm:resnet18", 2, 1.0),
}


def run_case(name: str, repeats: int, warmup: int, threads: int, workdir: Path) -> dict:
    import onnx

    from updp.exporter import save_model, simplify
    from updp.workflows.bench import bench
    from updp.workflows.config import BenchConfig, ExportConfig
    from updp.workflows.export import export

    model, n, target = CASES[name]
    t0 = time.perf_counter()
    # The reference is what a user has without updp: the plain export, simplified by onnxsim.
    base = export(ExportConfig(model=model, optimize=False, out=str(workdir / f"{name}_base.onnx")))
    save_model(simplify(onnx.load(base.out), optimize=True), base.out)
    # The unpruned model through our passes too: shows the passes alone do not slow the baseline.
    base_opt = export(ExportConfig(model=model, out=str(workdir / f"{name}_base_updp.onnx")))
    pruned = export(ExportConfig(model=model, prune=n, out=str(workdir / f"{name}_p{n}.onnx")))
    report = bench(BenchConfig(models=[base.out, base_opt.out, pruned.out], threads=threads,
                               opt_levels=["disable", "all"], warmup=warmup, repeats=repeats))
    base_nodes = len(onnx.load(base.out).graph.node)
    print(f"\n=== {name}: {model} P{n} (blocks {pruned.pruned_blocks}, rule: {pruned.selection_rule})")
    print(f"nodes {base_nodes} (base) vs {pruned.nodes_after} (P{n} merged); merge max abs diff "
          f"{pruned.max_abs_diff:.2e} (rel {pruned.rel_diff:.2e})")
    for d in pruned.decisions:
        print("  plan:", d)
    print(report.format_table())
    sp_all = report.get(Path(pruned.out).name, "all").speedup
    verdict = "PASS" if sp_all >= target else "MISS"
    print(f"ENABLE_ALL speedup {sp_all:.3f}x (target >= {target}x): {verdict}   [{time.perf_counter() - t0:.0f} s]")
    return {"case": name, "model": model, "prune": n, "target": target, "speedup_enable_all": sp_all,
            "verdict": verdict, "pruned_blocks": pruned.pruned_blocks, "decisions": pruned.decisions,
            "max_abs_diff": pruned.max_abs_diff, "rel_diff": pruned.rel_diff,
            "nodes": {"base": base_nodes, "pruned": pruned.nodes_after}, "bench": report.to_dict()}


def main() -> None:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--repeats", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="updp-bench-") as tmp:
        for name in args.case:
            results.append(run_case(name, args.repeats, args.warmup, args.threads, Path(tmp)))
    print("\nsummary (ORT CPU, ENABLE_ALL, batch 1, threads", args.threads, ")")
    for r in results:
        print(f"  {r['case']:<22} P{r['prune']}  {r['speedup_enable_all']:.3f}x  target {r['target']}  {r['verdict']}")
    path = save_json("speedups.json", {"results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
