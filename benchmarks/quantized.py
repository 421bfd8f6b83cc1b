"""Depth pruning and int8 together: four files per model, timed interleaved in one run.

For each model (random weights, 224×224; a latency what-if, so the int8 files are calibrated on
random inputs and say so in their metadata), at each batch size:

    fp32 baseline   the unpruned export
    fp32 merged     P blocks pruned at λ = 1, merged and verified by updp
    int8 baseline   ONNX Runtime's static QDQ quantization of the first (updp.exporter.quantize)
    int8 merged     the same of the second

All files of one model and batch are timed interleaved by updp's latency runner (ORT_ENABLE_ALL,
CPUExecutionProvider, 2 threads, spinning off); speedups are against the fp32 baseline. Check
`uptime` first; never compare figures across runs.

    .venv/bin/python benchmarks/quantized.py                          # the three models, batch 1 and 8
    .venv/bin/python benchmarks/quantized.py --models convnext_tiny --batches 1 --repeats 100
"""

from __future__ import annotations

import argparse
import json
import os

from _common import ROOT, save_json, setup_logging

import updp
from updp.exporter.quantize import RANDOM_CALIBRATION, QuantizeSettings, quantize_int8
from updp.exporter.torch_export import save_model
from updp.feeds import generate_feeds
from updp.ort import load_onnx

MODELS = {"convnext_tiny": ("timm:convnext_tiny", 6), "deit_tiny": ("timm:deit_tiny_patch16_224", 6),
          "mobilenetv2_100": ("timm:mobilenetv2_100", 4)}
CALIBRATION_RUNS = 16


def files_for(name: str, batch: int, work: str) -> list[str]:
    """The four files of a model at a batch size (made once, reused)."""
    spec, p = MODELS[name]
    paths = {k: os.path.join(work, f"{name}_b{batch}_{k}.onnx") for k in ("fp32_base", "fp32_merged", "int8_base",
                                                                          "int8_merged")}
    if not os.path.exists(paths["fp32_base"]):
        updp.export(None, paths["fp32_base"], model=spec, batch=batch)
    if not os.path.exists(paths["fp32_merged"]):
        updp.export(None, paths["fp32_merged"], model=spec, batch=batch, prune=p)
    for src, dst in (("fp32_base", "int8_base"), ("fp32_merged", "int8_merged")):
        if not os.path.exists(paths[dst]):
            model = load_onnx(paths[src])
            res = quantize_int8(model, generate_feeds(model, trials=CALIBRATION_RUNS), QuantizeSettings(),
                                calibration=RANDOM_CALIBRATION)
            save_model(res.model, paths[dst])
    return [paths[k] for k in ("fp32_base", "fp32_merged", "int8_base", "int8_merged")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--repeats", type=int, default=60, help="interleaved rounds")
    ap.add_argument("--work", default=str(ROOT / "runs" / "quantized"))
    args = ap.parse_args()
    setup_logging()
    os.makedirs(args.work, exist_ok=True)
    print(f"# load average {os.getloadavg()}")
    rows = {}
    for name in args.models:
        for batch in args.batches:
            files = files_for(name, batch, args.work)
            names = ["fp32 baseline", "fp32 merged", "int8 baseline", "int8 merged"]
            report = updp.bench(files, names=names, opt_levels=["all"], threads=2, repeats=args.repeats, warmup=10)
            print(f"\n## {name} (P{MODELS[name][1]}), batch {batch}\n{report.format_table()}", flush=True)
            rows[f"{name}_b{batch}"] = {n: {"median_ms": report.get(n, "all").median_ms,
                                            "speedup": report.get(n, "all").speedup} for n in names}
            rows[f"{name}_b{batch}"]["setup"] = report.report().setup.to_dict()
    path = save_json("quantized.json", {"rows": rows, "repeats": args.repeats, "calibration": "random (latency only)"})
    print(json.dumps({k: {n: round(v["speedup"], 3) for n, v in r.items() if n != "setup"} for k, r in rows.items()},
                     indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
