"""Depth pruning and int8 together: the latency of four files per model, and the accuracy of the
demo's trained model in the same four forms.

**latency** (random weights, 224×224; a what-if, so the int8 files are calibrated on random inputs
and say so in their metadata). For each model and batch size, the four files are made by
`updp export` itself (`--quantize int8 --calib random`):

    fp32 baseline   the unpruned export
    fp32 merged     P blocks pruned at λ = 1, merged and verified by updp
    int8 baseline   ONNX Runtime's static QDQ quantization of the first
    int8 merged     the same of the second

and timed interleaved by updp's latency runner (ORT_ENABLE_ALL, CPUExecutionProvider, 2 threads,
spinning off); speedups are against the fp32 baseline.

**accuracy** (the demo's trained convnext_atto on mnist5k, `runs/demo`, made by `updp demo` when
missing): the baseline and pruned checkpoints exported to fp32 and quantized with each calibration
method over several draws of the calibration images; val accuracy (ORT) of every file, its drop
against its own fp32 file, and how often its top-1 agrees with the fp32 file's on the val split.
Does depth pruning make the model easier or harder to quantize? The paired difference of the two
drops (merged − baseline, same method and draw) answers it, with a paired t-test. The four files
of the default settings (MinMax, draw 0) are written by the command and timed interleaved too.

Check `uptime` first; never compare figures across runs.

    .venv/bin/python benchmarks/quantized.py                          # both parts
    .venv/bin/python benchmarks/quantized.py --part latency --models convnext_tiny --batches 1 --repeats 100
    .venv/bin/python benchmarks/quantized.py --part accuracy --draws 5
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from _common import ROOT, mean_std, paired, save_json, setup_logging

import updp
from updp.ort import load_onnx

MODELS = {"convnext_tiny": ("timm:convnext_tiny", 6), "deit_tiny": ("timm:deit_tiny_patch16_224", 6),
          "mobilenetv2_100": ("timm:mobilenetv2_100", 4)}
NAMES = ["fp32 baseline", "fp32 merged", "int8 baseline", "int8 merged"]
METHODS = ("minmax", "entropy", "percentile")


# ------------------------------------------------------------------ latency (random weights)

def latency_files(name: str, batch: int, work: Path) -> list[str]:
    """The four files of a model at a batch size, made by `updp export` (once, then reused)."""
    spec, p = MODELS[name]
    base, merged = work / f"{name}_b{batch}_base.onnx", work / f"{name}_b{batch}_p{p}.onnx"
    for out, prune in ((base, None), (merged, p)):
        if not out.with_suffix(".int8.onnx").exists():
            updp.export(None, str(out), model=spec, batch=batch, prune=prune, quantize="int8", calib="random")
    return [str(base), str(merged), str(base.with_suffix(".int8.onnx")), str(merged.with_suffix(".int8.onnx"))]


def latency_part(args) -> dict:
    rows = {}
    for name in args.models:
        for batch in args.batches:
            files = latency_files(name, batch, Path(args.work))
            report = updp.bench(files, names=NAMES, opt_levels=["all"], threads=2, repeats=args.repeats, warmup=10,
                                batch=[batch])
            print(f"\n## {name} (P{MODELS[name][1]}), batch {batch}\n{report.format_table()}", flush=True)
            rows[f"{name}_b{batch}"] = {n: {"median_ms": report.get(n, "all").median_ms,
                                            "p90_ms": report.get(n, "all").p90_ms,
                                            "speedup": report.get(n, "all").speedup} for n in NAMES}
            rows[f"{name}_b{batch}"]["setup"] = report.report().setup.to_dict()
    print(json.dumps({k: {n: round(v["speedup"], 3) for n, v in r.items() if n != "setup"} for k, r in rows.items()},
                     indent=1))
    return {"rows": rows, "repeats": args.repeats, "calibration": "random (latency only)"}


# ------------------------------------------------------------------ accuracy (the demo's trained model)

def _predictions(model, dataset) -> list[int]:
    import numpy as np

    from updp.ort import make_session

    sess = make_session(model)
    name = sess.get_inputs()[0].name
    dtype = np.float16 if sess.get_inputs()[0].type == "tensor(float16)" else np.float32
    return [int(np.argmax(sess.run(None, {name: x[None].numpy().astype(dtype)})[0])) for x, _ in dataset]


def accuracy_part(args) -> dict:
    from updp.data import get_datasets
    from updp.pipeline.config import demo_config
    from updp.workflows.config import PrecisionOptions
    from updp.workflows.precision import derive_files

    demo, work = Path(args.demo_dir), Path(args.work) / "demo_int8"
    checkpoints = {"baseline": demo / "baseline" / "base.pt", "merged": demo / "prune" / "pruned.pt"}
    if not all(p.is_file() for p in checkpoints.values()):
        print(f"# {demo} has no trained demo: running `updp demo` there first", flush=True)
        updp.run(demo_config(), str(demo))
    work.mkdir(parents=True, exist_ok=True)
    floats = {}
    for key, ckpt in checkpoints.items():  # the four files of the default settings, through the command
        out = work / f"{key}.onnx"
        res = updp.export(str(ckpt), str(out), quantize="int8", data="mnist5k", max_accuracy_drop=100.0)
        print(res.format_summary(), flush=True)
        floats[key] = load_onnx(str(out))
    data = get_datasets("mnist5k", (32, 32))
    fp32_pred = {k: _predictions(m, data.val) for k, m in floats.items()}
    labels = [y for _, y in data.val]
    fp32_acc = {k: sum(p == y for p, y in zip(fp32_pred[k], labels)) / len(labels) for k in floats}
    cells = {}
    for key, model in floats.items():
        for method in METHODS:
            for draw in range(args.draws):
                opts = PrecisionOptions(quantize="int8", data="mnist5k", calib_method=method, calib_seed=draw,
                                        calib_images=args.calib_images, max_accuracy_drop=100.0)
                (item, qmodel), = derive_files(model, work / f"{key}_{method}_{draw}.onnx", opts)
                pred = _predictions(qmodel, data.val)
                agree = sum(a == b for a, b in zip(pred, fp32_pred[key])) / len(pred)
                cells[(key, method, draw)] = {"acc": item.accuracy, "drop": item.accuracy_drop, "agree": agree,
                                              "max_abs_diff": item.difference["max_abs_diff"]}
                print(f"{key:8s} {method:10s} draw {draw}: int8 {100 * item.accuracy:.2f} % (fp32 "
                      f"{100 * item.float_accuracy:.2f} %, drop {item.accuracy_drop:+.2f}), top-1 agreement "
                      f"{100 * agree:.1f} %", flush=True)
    summary = {}
    for method in METHODS:
        row = {}
        for key in floats:
            runs = [cells[(key, method, d)] for d in range(args.draws)]
            row[key] = {"fp32_acc": fp32_acc[key], "int8_acc": mean_std([r["acc"] for r in runs]),
                        "drop": mean_std([r["drop"] for r in runs]), "agree": mean_std([r["agree"] for r in runs])}
        row["drop_merged_minus_baseline"] = paired([cells[("merged", method, d)]["drop"]
                                                   - cells[("baseline", method, d)]["drop"] for d in range(args.draws)])
        summary[method] = row
        m, b, d = row["merged"], row["baseline"], row["drop_merged_minus_baseline"]
        print(f"{method:10s}: drop baseline {b['drop'][0]:+.2f} ± {b['drop'][1]:.2f}, merged {m['drop'][0]:+.2f} ± "
              f"{m['drop'][1]:.2f} points; merged − baseline {d['mean']:+.2f} ± {d['std']:.2f} (p {d['p']})",
              flush=True)
    out = {"fp32_acc": fp32_acc, "draws": args.draws, "calib_images": args.calib_images, "val_n": len(labels),
           "summary": summary, "cells": {"/".join(map(str, k)): v for k, v in cells.items()}}
    if args.demo_latency:
        files = [str(work / n) for n in ("baseline.onnx", "merged.onnx", "baseline.int8.onnx", "merged.int8.onnx")]
        report = updp.bench(files, names=NAMES, opt_levels=["all"], threads=2, repeats=args.repeats, warmup=20)
        print(report.format_table(), flush=True)
        out["latency"] = {n: {"median_ms": report.get(n, "all").median_ms, "speedup": report.get(n, "all").speedup}
                          for n in NAMES}
        out["latency_setup"] = report.report().setup.to_dict()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["latency", "accuracy", "both"], default="both")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--repeats", type=int, default=60, help="interleaved rounds")
    ap.add_argument("--demo-dir", default=str(ROOT / "runs" / "demo"), help="the trained demo run")
    ap.add_argument("--draws", type=int, default=5, help="calibration draws per method (accuracy part)")
    ap.add_argument("--calib-images", type=int, default=256)
    ap.add_argument("--no-demo-latency", dest="demo_latency", action="store_false",
                    help="accuracy part: skip timing the demo model's four files (time them on a quiet machine)")
    ap.add_argument("--work", default=str(ROOT / "runs" / "quantized"))
    args = ap.parse_args()
    setup_logging()
    os.makedirs(args.work, exist_ok=True)
    print(f"# load average {os.getloadavg()}")
    if args.part in ("latency", "both"):
        print(f"wrote {save_json('quantized.json', latency_part(args))}")
    if args.part in ("accuracy", "both"):
        print(f"wrote {save_json('quantized_accuracy.json', accuracy_part(args))}")


if __name__ == "__main__":
    main()
