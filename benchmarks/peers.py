"""updp's optimizer next to the other ONNX optimizers: the same files, correctness first, then latency.

Every source file goes through each optimizer with the library's recommended call:

    none           the source file itself (the baseline of every speedup)
    updp           `updp.exporter.optimize_file` (updp's passes, onnxsim polish, verified)
    onnxsim        `onnxsim.simplify(model)`
    onnxslim       `onnxslim.slim(model)`
    onnxoptimizer  `onnxoptimizer.optimize(model)` (its default fuse-and-eliminate passes)
    onnxscript     `onnxscript.optimizer.optimize(model)` (takes a ModelProto; works on onnx_ir inside)
    ort            ONNX Runtime's offline optimization: a session at ORT_ENABLE_ALL with
                   `optimized_model_filepath` set. That file may hold ORT-only contrib ops
                   (com.microsoft, NCHWc layouts for this CPU): it is loaded back with the same
                   provider (CPUExecutionProvider) and is no portable ONNX file.

Correctness: each result is compared with its source by `updp.verify.check_equivalence` (ORT with
optimizations off, fp32, the same strict tolerance for every optimizer). A file that fails to
optimize, to load or to match is shown with a one-line reason and is not timed.

Latency: per source file, all its correct variants in one `updp.latency.benchmark` call, timed
interleaved round-robin (round r starts at variant r mod M), so drifts of a shared machine hit every
variant alike; median, p90 and the speedup vs "none". Only ORT_ENABLE_ALL counts: ORT folds Conv+BN
and fuses activations itself, so ORT_DISABLE_ALL (`--opt-level disable all`) only shows what each
optimizer leaves for ORT to do. The last table puts the best peer next to updp per file and flags
the files where a peer is more than 3 % faster. The load average is printed at the start and the
end: the speed of a shared machine varies 2-3x with load, so time on a quiet one.

Files: λ = 1 exports (random weights, pruned blocks linear but not merged: what a user hands to an
optimizer), plain exports of three unpruned models, and the nine model-zoo graphs bundled in the
onnx wheel (opset 9, upgraded to opset 17). Those carry constant weights (ConstantOfShape, all
0.02), under which outputs barely depend on the input; they get seeded random weights instead, so
that the correctness check means something (a check that still cannot see the input is marked weak).

    .venv/bin/pip install -e '.[peers]'       # onnxslim, onnxoptimizer, onnxscript (onnxsim is a dependency)
    .venv/bin/python benchmarks/peers.py                        # every file, every optimizer
    .venv/bin/python benchmarks/peers.py --files resnet50 convnext_tiny_p6 --repeats 100 --keep /tmp/peers
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import tempfile
import time
from pathlib import Path

from _common import save_json, setup_logging

PROVIDERS = ["CPUExecutionProvider"]
PEER_MARGIN = 1.03  # a peer "beats" updp when updp's median is more than 3 % above the peer's

# name: (zoo model, blocks to prune at λ = 1 or None for a plain export)
EXPORTS = {
    "convnext_tiny_p6": ("timm:convnext_tiny", 6),
    "deit_tiny_p6": ("timm:deit_tiny_patch16_224", 6),
    "mobilenetv2_100_p4": ("timm:mobilenetv2_100", 4),
    "vit_small_p4": ("timm:vit_small_patch16_224", 4),
    "resnet50": ("timm:resnet50", None),
    "efficientnet_b0": ("timm:efficientnet_b0", None),
    "convnext_tiny": ("timm:convnext_tiny", None),
}
LIGHT = ["light_bvlc_alexnet", "light_densenet121", "light_inception_v1", "light_inception_v2",
         "light_resnet50", "light_shufflenet", "light_squeezenet", "light_vgg19", "light_zfnet512"]
FILES = [*EXPORTS, *LIGHT]
LIGHT_OPSET = 17
LIGHT_IR = 8  # the IR version of opset 17
VERSIONED = ["updp", "onnx", "onnxruntime", "onnxsim", "onnxslim", "onnxoptimizer", "onnxscript", "onnx-ir",
             "numpy", "torch", "timm"]


# ---- the optimizers: (src, dst) -> None, each the library's recommended call ----

def opt_updp(src: Path, dst: Path) -> None:
    from updp.exporter import optimize_file

    optimize_file(src, dst, verify=True, polish=True, fold_layernorm_affine=False)


def opt_onnxsim(src: Path, dst: Path) -> None:
    import onnx
    import onnxsim

    from updp.exporter import save_model

    model, ok = onnxsim.simplify(onnx.load(str(src)))
    if not ok:
        raise RuntimeError("onnxsim.simplify reported that its result failed its own check")
    save_model(model, dst)


def opt_onnxslim(src: Path, dst: Path) -> None:
    import onnxslim

    from updp.exporter import save_model

    model = onnxslim.slim(str(src))
    if model is None:
        raise RuntimeError("onnxslim.slim returned no model")
    save_model(model, dst)


def opt_onnxoptimizer(src: Path, dst: Path) -> None:
    import onnx
    import onnxoptimizer

    from updp.exporter import save_model

    save_model(onnxoptimizer.optimize(onnx.load(str(src))), dst)  # passes=None: fuse + eliminate


def opt_onnxscript(src: Path, dst: Path) -> None:
    import onnx
    import onnxscript.optimizer

    from updp.exporter import save_model

    save_model(onnxscript.optimizer.optimize(onnx.load(str(src))), dst)


def opt_ort(src: Path, dst: Path) -> None:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(dst)
    so.log_severity_level = 3
    ort.InferenceSession(str(src), sess_options=so, providers=PROVIDERS)
    if not dst.is_file():
        raise RuntimeError("ONNX Runtime wrote no optimized model")


OPTIMIZERS = {"updp": opt_updp, "onnxsim": opt_onnxsim, "onnxslim": opt_onnxslim,
              "onnxoptimizer": opt_onnxoptimizer, "onnxscript": opt_onnxscript, "ort": opt_ort}


# ---- helpers ----

def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first[:300]}" if first else type(exc).__name__


def load_average() -> str:
    try:
        out = subprocess.run(["uptime"], capture_output=True, text=True, timeout=5, check=True).stdout
        return out.split("load average")[-1].lstrip(":s ").strip()
    except (OSError, subprocess.SubprocessError):
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def versions() -> dict[str, str]:
    found = {}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


class Skip(Exception):
    """A source file that cannot be prepared; the message says why."""


# ---- the source files ----

def export_source(name: str, workdir: Path) -> tuple[Path, dict]:
    from updp.workflows.config import ExportConfig
    from updp.workflows.export import export

    model, n = EXPORTS[name]
    dst = workdir / f"{name}.onnx"
    try:
        res = export(ExportConfig(model=model, prune=n, optimize=False, batch=1, out=str(dst)))
    except Exception as exc:
        raise Skip(f"export failed: {one_line(exc)}") from None
    kind = f"λ = 1 export, P{n} (blocks {res.pruned_blocks})" if n else "plain export"
    return dst, {"kind": kind, "model": model, "prune": n, "pruned_blocks": res.pruned_blocks,
                 "weights": res.weights, "nodes": res.nodes_after}


def random_weights(model, seed: int = 0) -> int:
    """Replace the zoo graphs' constant weights (`ConstantOfShape` of a fixed shape, all 0.02) by
    seeded random ones, in place, so that outputs depend on the input and the check means
    something: He-normal conv/linear weights, small biases, positive BN scales and variances.

    Returns:
        How many weights were replaced.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    inits = {t.name: t for t in model.graph.initializer}
    uses = {}
    for n in model.graph.node:
        for k, i in enumerate(n.input):
            uses.setdefault(i, (n.op_type, k))
    keep, replaced = [], 0
    for n in model.graph.node:
        shape_name = n.input[0] if n.op_type == "ConstantOfShape" and n.input else None
        if shape_name not in inits:
            keep.append(n)
            continue
        shape = tuple(int(d) for d in numpy_helper.to_array(inits[shape_name]))
        op, k = uses.get(n.output[0], ("", -1))
        if op == "BatchNormalization" and k in (1, 4):
            value = rng.uniform(0.5, 1.5, shape)
        elif len(shape) >= 2:
            fan_in = int(np.prod(shape[1:])) if op == "Conv" else shape[0]
            value = rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))
        else:
            value = rng.standard_normal(shape) * 0.05
        model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), n.output[0]))
        replaced += 1
    del model.graph.node[:]
    model.graph.node.extend(keep)
    onnx.checker.check_model(model)
    return replaced


def light_source(name: str, workdir: Path) -> tuple[Path, dict]:
    """A model-zoo graph of the onnx wheel, upgraded from opset 9 to 17 (initializers no longer inputs)."""
    import onnx
    import onnx.version_converter

    from updp.exporter import save_model
    from updp.ort import make_session

    src = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"{name}.onnx"
    if not src.is_file():
        raise Skip(f"not in this onnx wheel: {src}")
    original = onnx.load(str(src))
    try:
        model = onnx.version_converter.convert_version(original, LIGHT_OPSET)
    except Exception as exc:
        raise Skip(f"onnx.version_converter cannot upgrade it to opset {LIGHT_OPSET}: {one_line(exc)}") from None
    model.ir_version = LIGHT_IR
    # IR 3 lists every initializer as a graph input too, which makes the weights overridable
    # inputs that no optimizer may fold; a modern export has them as constants.
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    replaced = random_weights(model)
    try:
        onnx.checker.check_model(model)
        make_session(model, opt_level="disable", threads=1, providers=PROVIDERS)
    except Exception as exc:
        raise Skip(f"the upgraded model is not valid or ORT cannot load it: {one_line(exc)}") from None
    dst = workdir / f"{name}.onnx"
    save_model(model, dst)
    return dst, {"kind": f"onnx model zoo (light), opset {original.opset_import[0].version} -> {LIGHT_OPSET}, "
                         f"IR {original.ir_version} -> {LIGHT_IR}", "model": name, "prune": None,
                 "weights": f"random, seeded ({replaced} constant ConstantOfShape weights replaced)",
                 "nodes": len(model.graph.node)}


def input_dependent(reference) -> bool:
    """Whether the reference output changes with the input (else the equivalence check says little)."""
    from updp.ort import make_session, random_inputs
    from updp.verify import compare_outputs

    sess = make_session(reference, opt_level="disable", threads=1, providers=PROVIDERS)
    names = [o.name for o in sess.get_outputs()]
    a = sess.run(None, random_inputs(sess, seed=0))
    b = sess.run(None, random_inputs(sess, seed=1))
    return not compare_outputs(a, b, names).passed


# ---- optimize, verify, time ----

def optimize_one(name: str, src: Path, dst: Path, reference) -> dict:
    """Run one optimizer and check its result; a row with status verified / incorrect / failed."""
    import onnx

    from updp.exporter import op_counts
    from updp.verify import check_equivalence

    row: dict = {"optimizer": name, "path": str(dst)}
    t0 = time.perf_counter()
    try:
        OPTIMIZERS[name](src, dst)
    except Exception as exc:
        return {**row, "status": "failed", "error": f"optimize: {one_line(exc)}"}
    row["optimize_s"] = time.perf_counter() - t0
    try:
        candidate = onnx.load(str(dst))
        rep = check_equivalence(reference, candidate, raise_on_failure=False)
    except Exception as exc:
        return {**row, "status": "failed", "error": f"verify: {one_line(exc)}"}
    ops = op_counts(candidate)
    contrib = sum(1 for n in candidate.graph.node if n.domain not in ("", "ai.onnx"))
    row.update(status="verified" if rep.passed else "incorrect", max_abs_diff=rep.max_abs_diff,
               rel_diff=rep.rel_diff, nodes=len(candidate.graph.node), contrib_ops=contrib, ops=ops)
    if not rep.passed:
        row["error"] = (f"differs from the source: max abs diff {rep.max_abs_diff:.3g} "
                        f"(relative {rep.rel_diff:.3g}) over tolerance")
    return row


def loads_for_timing(path: str, levels: list[str], threads: int) -> str | None:
    """None when ORT builds a session at every timed level, else the one-line reason."""
    from updp.ort import make_session

    for level in levels:
        try:
            make_session(path, opt_level=level, threads=threads, providers=PROVIDERS)
        except Exception as exc:
            return f"ORT at {level}: {one_line(exc)}"
    return None


def time_variants(rows: dict[str, dict], args) -> dict | None:
    """Time every verified variant of one file in one interleaved benchmark; timings go into the rows."""
    from updp.latency import LatencySetup, benchmark

    timed = []
    for name, row in rows.items():
        if row["status"] not in ("verified", "reference"):
            continue
        why = loads_for_timing(row["path"], args.opt_level, args.threads)
        if why:
            row.update(status="failed", error=f"load: {why}")
            continue
        timed.append((name, row["path"]))
    if "none" not in dict(timed):
        return None
    setup = LatencySetup(threads=args.threads, opt_level=args.opt_level[-1], warmup=args.warmup,
                         repeats=args.repeats, providers=PROVIDERS)
    report = benchmark(timed, setup, opt_levels=args.opt_level)
    for r in report.results:
        rows[r.model].setdefault("timing", {})[r.opt_level] = {
            "median_ms": r.median_ms, "p90_ms": r.p90_ms, "speedup": r.speedup, "p90_speedup": r.p90_speedup,
            "n": r.n}
    return report.to_dict()


def run_file(file: str, src: Path, source: dict, optimizers: list[str], args, workdir: Path) -> dict:
    import onnx

    reference = onnx.load(str(src))
    source["input_dependent"] = input_dependent(reference)
    rows: dict[str, dict] = {"none": {"optimizer": "none", "path": str(src), "status": "reference",
                                      "max_abs_diff": 0.0, "nodes": len(reference.graph.node), "contrib_ops": 0}}
    for name in optimizers:
        rows[name] = optimize_one(name, src, workdir / f"{file}.{name}.onnx", reference)
    record = {"file": file, "source": source, "variants": rows, "bench": None}
    try:
        record["bench"] = time_variants(rows, args)
    except Exception as exc:
        record["bench_error"] = one_line(exc)
    return record


# ---- printing ----

def fmt_table(cols: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip(), "  ".join("-" * w for w in widths).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def print_file(record: dict, levels: list[str]) -> None:
    s = record["source"]
    weak = "" if s["input_dependent"] else "  [output barely depends on the input: the check is weak]"
    print(f"\n=== {record['file']}: {s['model']}, {s['kind']}, {s['nodes']} nodes, weights {s['weights']}{weak}")
    cols = ["optimizer", "status", "max abs diff", "nodes", "contrib"]
    for level in levels:
        cols += [f"{level} median ms", f"{level} p90 ms", f"{level} vs none"]
    out, failures = [], []
    for name, row in record["variants"].items():
        diff = f"{row['max_abs_diff']:.2e}" if row.get("max_abs_diff") is not None else "-"
        line = [name, row["status"], diff, str(row.get("nodes", "-")), str(row.get("contrib_ops", "-"))]
        for level in levels:
            t = row.get("timing", {}).get(level)
            line += [f"{t['median_ms']:.3f}", f"{t['p90_ms']:.3f}", f"{t['speedup']:.3f}x"] if t else ["-"] * 3
        out.append(line)
        if row.get("error"):
            failures.append(f"  {name}: {row['error']}")
    print(fmt_table(cols, out))
    for line in failures:
        print(line)
    if record.get("bench_error"):
        print(f"  timing failed: {record['bench_error']}")


def summarize(records: list[dict], level: str) -> list[dict]:
    """Per file: updp's median next to the best peer's, and whether the peer wins by > 3 %."""
    summary = []
    for rec in records:
        timed = {n: r["timing"][level]["median_ms"] for n, r in rec["variants"].items()
                 if level in r.get("timing", {})}
        peers = {n: t for n, t in timed.items() if n not in ("none", "updp")}
        best = min(peers, key=peers.get) if peers else None
        ours = timed.get("updp")
        entry = {"file": rec["file"], "level": level, "updp_ms": ours, "best_peer": best,
                 "best_peer_ms": peers.get(best) if best else None, "peer_over_updp": None, "peer_wins": None}
        if ours and best:
            entry["peer_over_updp"] = peers[best] / ours
            entry["peer_wins"] = ours / peers[best] > PEER_MARGIN
        summary.append(entry)
    return summary


def print_summary(summary: list[dict]) -> None:
    if not summary:
        return
    print(f"\nbest peer vs updp at {summary[0]['level']} (ratio of medians, peer / updp: < 1 means the peer is "
          f"faster; flagged when the peer is more than {100 * (PEER_MARGIN - 1):.0f} % faster)")
    rows = []
    for e in summary:
        ratio = f"{e['peer_over_updp']:.3f}" if e["peer_over_updp"] is not None else "-"
        flag = "PEER FASTER" if e["peer_wins"] else ("" if e["peer_wins"] is not None else "not comparable")
        rows.append([e["file"], f"{e['updp_ms']:.3f}" if e["updp_ms"] else "not timed", e["best_peer"] or "-",
                     f"{e['best_peer_ms']:.3f}" if e["best_peer_ms"] else "-", ratio, flag])
    print(fmt_table(["file", "updp ms", "best peer", "peer ms", "peer/updp", ""], rows))


# ---- main ----

def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", nargs="*", default=FILES, choices=FILES, metavar="NAME",
                    help=f"source files to run (default: all): {', '.join(FILES)}")
    ap.add_argument("--optimizers", nargs="*", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    ap.add_argument("--repeats", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--opt-level", nargs="+", default=["all"], choices=["disable", "basic", "extended", "all"],
                    help="ORT levels to time at (default: all; only ENABLE_ALL counts)")
    ap.add_argument("--keep", metavar="DIR", help="write the files here and keep them (default: a temp dir)")
    return ap.parse_args()


def run_all(args: argparse.Namespace, workdir: Path) -> tuple[list[dict], list[dict]]:
    records, skipped = [], []
    for file in args.files:
        t0 = time.perf_counter()
        try:
            src, source = export_source(file, workdir) if file in EXPORTS else light_source(file, workdir)
        except Skip as exc:
            print(f"\n=== {file}: skipped: {exc}")
            skipped.append({"file": file, "reason": str(exc)})
            continue
        record = run_file(file, src, source, args.optimizers, args, workdir)
        record["seconds"] = time.perf_counter() - t0
        print_file(record, args.opt_level)
        records.append(record)
    return records, skipped


def main() -> None:
    setup_logging()
    args = parse_args()
    from updp.latency import LatencySetup

    load_start = load_average()
    print(f"load average at start: {load_start}  (shared machine: latency varies 2-3x with load)")
    setup = LatencySetup(threads=args.threads, opt_level=args.opt_level[-1], warmup=args.warmup,
                         repeats=args.repeats, providers=PROVIDERS)
    print(f"# latency: {setup.describe()} opt_levels={','.join(args.opt_level)}")
    if "ort" in args.optimizers:
        print("# ort: ORT_ENABLE_ALL offline files may hold ORT-only contrib ops; they are loaded back with the "
              f"same provider ({', '.join(PROVIDERS)}), not portable ONNX")
    if args.keep:
        workdir = Path(args.keep)
        workdir.mkdir(parents=True, exist_ok=True)
        records, skipped = run_all(args, workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="updp-peers-") as tmp:
            records, skipped = run_all(args, Path(tmp))
    level = "all" if "all" in args.opt_level else args.opt_level[-1]
    summary = summarize(records, level)
    print_summary(summary)
    for s in skipped:
        print(f"skipped {s['file']}: {s['reason']}")
    load_end = load_average()
    print(f"load average at end: {load_end}")
    path = save_json("peers.json", {
        "setup": setup.to_dict(), "opt_levels": args.opt_level, "versions": versions(),
        "args": vars(args), "load_average": {"start": load_start, "end": load_end},
        "files": records, "skipped": skipped, "summary": summary,
        "notes": ["ort: ORT_ENABLE_ALL offline files may hold ORT-only contrib ops; loaded back with the same "
                  "provider", "only ORT_ENABLE_ALL timings count"]})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
