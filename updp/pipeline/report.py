"""The report of an `updp run`: `report.md`, a self-contained `report.html`, and `results.json`.

Both documents are rendered from one list of blocks (`_document`), so they say the same thing.
The HTML has inline CSS and its figures embedded as base64 PNGs: it can be mailed or attached to
an issue as one file. Figures (matplotlib, Agg backend) are also written to `figures/`:

* `tradeoff.png`: accuracy vs latency. Left, the deployed ONNX files (val accuracy with ONNX
  Runtime, median latency at each optimization level). Right, the search: holdout accuracy of
  supernet subnets vs the latency table's prediction, with the pick and the random picks. The two
  panels use different splits and latency sources, so they are never drawn on one axis.
* `blocks.png`: kernel time per block before and after pruning (ORT profiler), pruned blocks marked.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from updp.core.constants import OPT_LEVELS
from updp.core.io import atomic_path, write_text_atomic
from updp.pipeline.config import RunConfig

logger = logging.getLogger(__name__)

BLUE, ORANGE, GREY, RED = "#1f77b4", "#e6550d", "#9e9e9e", "#d62728"


# ------------------------------------------------------------------ numbers

def _timing(results: dict, model: str, level: str) -> dict | None:
    for r in results.get("bench", {}).get("bench", {}).get("results", []):
        if r["model"] == model and r["opt_level"] == level:
            return r
    return None


def headline(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The figures a reader wants first (None where a stage has not run)."""
    ev, ex, pr = results.get("eval", {}), results.get("export", {}), results.get("prune", {})
    out: dict[str, Any] = {
        "baseline_acc": ev.get("baseline", {}).get("acc"), "pruned_acc": ev.get("pruned", {}).get("acc"),
        "val_n": ev.get("pruned", {}).get("n"),
        "pruned_blocks": pr.get("plan", {}).get("blocks"), "block_names": pr.get("plan", {}).get("block_names"),
        "max_abs_diff": ex.get("pruned", {}).get("max_abs_diff"),
        "nodes": [ex.get("baseline", {}).get("nodes_after"), ex.get("pruned", {}).get("nodes_after")],
    }
    if out["baseline_acc"] is not None and out["pruned_acc"] is not None:
        out["acc_delta_points"] = 100.0 * (out["pruned_acc"] - out["baseline_acc"])
    for level in ("disable", "all"):
        b, p = _timing(results, "baseline", level), _timing(results, "pruned", level)
        if b and p:
            out[f"speedup_{level}"] = p["speedup"]
            out[f"median_ms_{level}"] = [b["median_ms"], p["median_ms"]]
    return out


def _pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


# ------------------------------------------------------------------ figures

def _plt():
    """matplotlib with the file backend (no screen)."""
    import matplotlib  # optional: the `report` extra; the report renders without figures otherwise

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional: as above, after choosing the backend

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.spines.top": False,
                         "axes.spines.right": False, "savefig.dpi": 110})
    return plt


def plot_tradeoff(results: dict, path: Path) -> Path | None:
    """Accuracy vs latency: deployed ONNX files (left), the search's subnets (right)."""
    ev, bench = results.get("eval"), results.get("bench")
    if not ev or not bench:
        return None
    plt = _plt()
    search = results.get("search", {})
    searched = bool(search.get("searched"))
    fig, axes = plt.subplots(1, 2 if searched else 1, figsize=(11.5 if searched else 6.2, 4.4), squeeze=False)
    ax = axes[0][0]
    levels = bench["bench"]["opt_levels"]
    markers = {"disable": "o", "basic": "s", "extended": "D", "all": "o"}
    for key, color, label in (("baseline", BLUE, "baseline"), ("pruned", ORANGE, "pruned + merged")):
        acc = 100 * ev[key]["acc"]
        for level in levels:
            t = _timing(results, key, level)
            filled = level == "all"
            ax.scatter([t["median_ms"]], [acc], s=90, marker=markers.get(level, "o"), zorder=3,
                       facecolors=color if filled else "white", edgecolors=color, linewidths=2,
                       label=f"{label}, {OPT_LEVELS[level]}")
    for level in levels:
        b, p = _timing(results, "baseline", level), _timing(results, "pruned", level)
        ax.annotate("", xy=(p["median_ms"], 100 * ev["pruned"]["acc"]),
                    xytext=(b["median_ms"], 100 * ev["baseline"]["acc"]),
                    arrowprops={"arrowstyle": "->", "color": GREY, "lw": 1.2, "shrinkA": 7, "shrinkB": 7})
    ax.set_xlabel("median latency per image, ms (ORT CPU, batch 1)")
    ax.set_ylabel("val accuracy, % (ONNX Runtime)")
    ax.set_title("Deployed models")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", frameon=False)
    _pad_y(ax, [100 * ev["baseline"]["acc"], 100 * ev["pruned"]["acc"]])
    if searched:
        ax = axes[0][1]
        top = search.get("top") or []
        if top:
            ax.scatter([c["latency_ms"] for c in top], [100 * c["acc"] for c in top], s=28, color=GREY,
                       label=f"top {len(top)} scored subnets", zorder=2)
        rnd = search.get("random_picks") or []
        if rnd:
            ax.scatter([c["latency_ms"] for c in rnd], [100 * c["acc"] for c in rnd], s=60, marker="x", color=RED,
                       linewidths=2, label=f"random picks ({len(rnd)})", zorder=3)
        plan = search.get("plan", {})
        base_ms = (plan.get("latency") or {}).get("lut_base_ms")
        pick_ms = (plan.get("latency") or {}).get("predicted_ms")
        ax.scatter([pick_ms], [100 * search["holdout_acc"]], s=200, marker="*", color=ORANGE, zorder=4,
                   edgecolors="black", linewidths=0.6, label=f"search pick {search['blocks']}")
        if base_ms is not None:
            ax.scatter([base_ms], [100 * search["baseline_holdout_acc"]], s=80, color=BLUE, zorder=3,
                       label="baseline (nothing pruned)")
        ax.set_xlabel("predicted latency, ms (per-block latency table)")
        ax.set_ylabel("holdout accuracy, % (supernet, BN recalibrated)")
        ax.set_title(f"Search: subnets of {len(search['blocks'])} blocks")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best", frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def _pad_y(ax, values: list[float]) -> None:
    lo, hi = min(values), max(values)
    span = max(hi - lo, 1.0)
    ax.set_ylim(lo - 0.6 * span, min(100.5, hi + 0.6 * span))


def _block_rows(results: dict) -> list[dict[str, Any]]:
    """Per-block time, baseline vs pruned, by block label (profiles of the bench stage).

    `before_us`/`after_us` are each block's share of the profiled kernel time times the model's
    measured median latency at the profiling optimization level: the profiler slows every kernel
    down (its kernel sums can exceed the unprofiled wall clock), so its shares are kept and its
    absolute times are not. The raw profiler sums are kept as `*_kernel_us`.
    """
    prof = results.get("bench", {}).get("profiles")
    if not prof:
        return []
    level = results["bench"].get("profile_setup", {}).get("opt_level", "all")
    walls = {k: _timing(results, k, level) for k in ("baseline", "pruned")}
    scale = {k: (1000.0 * t["median_ms"] if t else prof[k]["total_us"]) for k, t in walls.items()}
    pruned = set(results.get("prune", {}).get("plan", {}).get("blocks") or [])
    after = {b["label"]: b for b in prof["pruned"]["blocks"]}
    rows = []
    for b in prof["baseline"]["blocks"]:
        a = after.get(b["label"], {"total_us": 0.0, "n_nodes": 0, "share": 0.0})
        idx = b["label"].split(" ", 1)[0]
        is_block = idx.isdigit()
        rows.append({"label": b["label"], "index": int(idx) if is_block else None,
                     "pruned": is_block and int(idx) in pruned,
                     "before_us": b["share"] * scale["baseline"], "after_us": a["share"] * scale["pruned"],
                     "before_kernel_us": b["total_us"], "after_kernel_us": a["total_us"],
                     "before_nodes": b["n_nodes"], "after_nodes": a["n_nodes"],
                     "before_share": b["share"], "after_share": a["share"]})
    return rows


def plot_blocks(results: dict, path: Path) -> Path | None:
    """Horizontal bars: kernel time of each block before and after, pruned blocks marked."""
    rows = _block_rows(results)
    if not rows:
        return None
    plt = _plt()
    n = len(rows)
    fig, ax = plt.subplots(figsize=(9.5, 0.42 * n + 1.6))
    y = np.arange(n)
    h = 0.38
    ax.barh(y - h / 2, [r["before_us"] for r in rows], height=h, color=BLUE,
            label=f"baseline (total {sum(r['before_us'] for r in rows):.0f} µs)")
    ax.barh(y + h / 2, [r["after_us"] for r in rows], height=h, color=ORANGE,
            label=f"pruned + merged (total {sum(r['after_us'] for r in rows):.0f} µs)")
    labels = [("★ " if r["pruned"] else "") + r["label"] for r in rows]
    ax.set_yticks(y, labels, fontsize=9)
    for tick, r in zip(ax.get_yticklabels(), rows):
        if r["pruned"]:
            tick.set_color(ORANGE)
            tick.set_fontweight("bold")
    ax.invert_yaxis()
    ax.set_xlabel("µs per run: share of profiled kernel time × median latency "
                  f"({OPT_LEVELS[results['bench']['profile_setup']['opt_level']]})")
    ax.set_title("Time per block (★ = pruned and merged)", pad=26)
    ax.grid(axis="x", alpha=0.3)
    # between the title and the axes: inside, it would cover the longest bars
    ax.legend(fontsize=9, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    return path


# ------------------------------------------------------------------ the document

def _summary_section(run_dir: Path, cfg: RunConfig, results: dict, figures: dict[str, Path]) -> list[tuple]:
    """Title, what was measured, the headline cards."""
    hl = headline(results)
    doc: list[tuple] = []
    m = cfg.model
    doc.append(("h1", f"updp run: {m.name} at {m.input_size[0]}×{m.input_size[1]} on {cfg.data.spec}"))
    doc.append(("note", f"Run directory {run_dir.resolve()}. Accuracy: the val split, measured on the exported "
                        "ONNX files with ONNX Runtime. Latency: interleaved A/B runs of the two files on CPU."))
    cards = []
    if hl.get("baseline_acc") is not None:
        cards.append(("accuracy", f"{_pct(hl['baseline_acc'])} → {_pct(hl['pruned_acc'])}",
                      f"{hl['acc_delta_points']:+.2f} points (val, n = {hl['val_n']})"))
    if hl.get("speedup_all") is not None:
        b, p = hl["median_ms_all"]
        cards.append(("speedup, ORT_ENABLE_ALL", f"{hl['speedup_all']:.2f}×", f"median {b:.3f} → {p:.3f} ms"))
    if hl.get("speedup_disable") is not None:
        b, p = hl["median_ms_disable"]
        cards.append(("speedup, ORT_DISABLE_ALL", f"{hl['speedup_disable']:.2f}×", f"median {b:.3f} → {p:.3f} ms"))
    if hl.get("pruned_blocks") is not None:
        cards.append(("pruned blocks", f"{len(hl['pruned_blocks'])}", ", ".join(map(str, hl["pruned_blocks"]))))
    if hl.get("max_abs_diff") is not None:
        cards.append(("merge verified", f"{hl['max_abs_diff']:.1e}", "max abs diff vs the unmerged export"))
    doc.append(("cards", cards))
    if hl.get("speedup_all") is not None and hl["speedup_all"] <= 1.0:
        doc.append(("warn", "The merged model is not faster than the baseline under ORT_ENABLE_ALL on this "
                            "machine: ORT's own fusions already capture what the merge saves here."))
    return doc


def _tradeoff_section(run_dir: Path, cfg: RunConfig, results: dict, figures: dict[str, Path]) -> list[tuple]:
    """Accuracy vs latency: the figure."""
    doc: list[tuple] = []
    if "tradeoff" in figures:
        doc.append(("h2", "Accuracy vs latency"))
        doc.append(("img", figures["tradeoff"], "accuracy vs latency"))
        doc.append(("p", "Left: the two deployed ONNX files, filled markers under ORT_ENABLE_ALL (the speedup that "
                         "counts: ORT already fuses Conv+BN itself), hollow under ORT_DISABLE_ALL. Right: what the "
                         "search saw, on the holdout split with supernet weights and predicted latency; not "
                         "comparable with the left panel's numbers."))
    return doc


def _latency_section(run_dir: Path, cfg: RunConfig, results: dict, figures: dict[str, Path]) -> list[tuple]:
    """The interleaved timings of the two files."""
    doc: list[tuple] = []
    bench = results.get("bench")
    if bench:
        doc.append(("h2", "Latency"))
        reports = (bench.get("batches") or {}).get("reports") or [bench["bench"]]
        for rep in reports:
            if len(reports) > 1:
                doc.append(("p", f"Batch {rep['setup']['batch']}:"))
            rows = [[r["model"], OPT_LEVELS[r["opt_level"]], f"{r['median_ms']:.3f}", f"{r['p90_ms']:.3f}",
                     f"{r['speedup']:.3f}×", f"{r['p90_speedup']:.3f}×", str(r["n"])]
                    for lvl in rep["opt_levels"] for r in rep["results"] if r["opt_level"] == lvl]
            doc.append(("table", ["model", "ORT optimization", "median ms", "p90 ms", "speedup", "p90 speedup",
                                  "runs"], rows))
        s = bench["bench"]["setup"]
        batches = ", ".join(str(r["setup"]["batch"]) for r in reports)
        doc.append(("note", f"{', '.join(s['providers'])}, {s['threads']} intra-op threads, batch {batches}, "
                            f"{s['warmup']} warm-up runs, then {s['repeats']} interleaved rounds (each round runs "
                            f"every file once, the first one rotating); spinning {'on' if s['spinning'] else 'off'}."))
    return doc


def precision_rows(results: dict) -> list[dict[str, Any]]:
    """Accuracy and latency of the float files and the quantize stage's (int8, float16) files: one
    row per file, latency under ORT_ENABLE_ALL, speedup against the float32 baseline."""
    q, ev = results.get("quantize") or {}, results.get("eval") or {}
    if not q.get("enabled"):
        return []
    base = _timing(results, "baseline", "all")
    rows = []
    for name in ("baseline", "pruned", *[k for k in q.get("files", {})]):
        key, _, kind = name.partition(".")
        item = q.get(name) if kind else None
        acc = item["accuracy"] if item else ev.get(key, {}).get("acc")
        t = _timing(results, name, "all")
        rows.append({"file": name, "model": "merged" if key == "pruned" else "baseline", "precision": kind or "fp32",
                     "acc": acc, "median_ms": t["median_ms"] if t else None, "p90_ms": t["p90_ms"] if t else None,
                     "speedup": base["median_ms"] / t["median_ms"] if t and base else None,
                     "drop_points": item.get("accuracy_drop") if item else None,
                     "verified": item["verified"] if item else True,
                     "calibration": (item.get("record") or {}).get("calibration") if item else None})
    return rows


def _precision_section(run_dir: Path, cfg: RunConfig, results: dict, figures: dict[str, Path]) -> list[tuple]:
    """The four (or more) files: accuracy vs latency."""
    rows = precision_rows(results)
    if not rows:
        return []
    doc: list[tuple] = [("h2", "int8 and float16 files: accuracy vs latency")]
    table = [[r["file"], r["precision"], _pct(r["acc"]), _f(r["drop_points"], "+.2f") if r["drop_points"] is not None
              else "", _f(r["median_ms"]), _f(r["p90_ms"]), _f(r["speedup"]) + "×",
              "yes" if r["verified"] else "no (not exact)"] for r in rows]
    doc.append(("table", ["file", "precision", "val acc (ORT)", "points lost vs its fp32 file", "median ms",
                          "p90 ms", "speedup vs fp32 baseline", "verified equal"], table))
    calib = next((r["calibration"] for r in rows if r["calibration"]), None)
    doc.append(("note", "Latency under ORT_ENABLE_ALL, all files in the same interleaved rounds (section Latency). "
                        "int8: ONNX Runtime static QDQ quantization of each float file"
                        + (f", calibrated on {calib}" if calib else "")
                        + f"; refused when it loses more than {cfg.precision.max_accuracy_drop:.1f} points. float16: "
                        "verified against its float32 file with float16's tolerance."))
    return doc


def _block_section(run_dir: Path, cfg: RunConfig, results: dict, figures: dict[str, Path]) -> list[tuple]:
    """Time per block, before and after."""
    doc: list[tuple] = []
    rows = _block_rows(results)
    if rows:
        doc.append(("h2", "Time per block"))
        if "blocks" in figures:
            doc.append(("img", figures["blocks"], "per-block latency"))
        table = [[("★ " if r["pruned"] else "") + r["label"], "yes" if r["pruned"] else "",
                  _pct(r["before_share"], 1), _pct(r["after_share"], 1), f"{r['before_us']:.1f}",
                  f"{r['after_us']:.1f}", f"{r['before_us'] - r['after_us']:+.1f}",
                  f"{r['before_nodes']} → {r['after_nodes']}"] for r in rows]
        doc.append(("table", ["block", "pruned", "share before", "share after", "≈ µs before", "≈ µs after",
                              "saved µs", "ORT nodes"], table))
        prof = results["bench"]["profiles"]
        level = OPT_LEVELS[results["bench"]["profile_setup"]["opt_level"]]
        pb = sum(r["before_us"] for r in rows if r["pruned"])
        pa = sum(r["after_us"] for r in rows if r["pruned"])
        kept = [r["after_us"] / r["before_us"] for r in rows
                if r["index"] is not None and not r["pruned"] and r["before_us"] > 0]
        text = f"The pruned blocks take ≈ {pb:.0f} µs before and ≈ {pa:.0f} µs after."
        if kept:
            drift = 100 * (np.median(kept) - 1)
            text += (f" The unpruned blocks, the same operators in both files, read {drift:+.0f}% (median "
                     "after/before): a yardstick for how much per-block estimates of this size move.")
        doc.append(("p", text))
        doc.append(("note", f"Per-block time = the block's share of the kernel time under ORT's profiler × the "
                            f"file's median latency ({level}, above). The profiler slows every kernel down (its "
                            f"kernel sums, {prof['baseline']['total_us']:.0f} and {prof['pruned']['total_us']:.0f} "
                            "µs, are not wall-clock times), so only its shares are used. Profiles: "
                            f"{prof['baseline'].get('rounds', 1)} alternating sessions per file of "
                            f"{prof['baseline'].get('runs_per_round', results['bench']['profile_runs'])} runs, "
                            "median per block. Nodes are attributed to blocks by the module scope in their names "
                            "(updp.block_scopes in the ONNX metadata); nodes ORT creates without a scope go to the "
                            "block run just before them. Shares and times include the block's residual Add."))
    return doc


def _plan_section(run_dir: Path, cfg: RunConfig, results: dict, figures: dict[str, Path]) -> list[tuple]:
    """Which blocks were pruned, and why."""
    doc: list[tuple] = []
    search, prune = results.get("search"), results.get("prune")
    if search:
        doc.append(("h2", "The plan: which blocks, and why"))
        plan = (prune or {}).get("plan") or search.get("plan") or {}
        names = plan.get("block_names") or search.get("block_names") or []
        blocks = plan.get("blocks") or search.get("blocks") or []
        doc.append(("table", ["index", "module"], [[str(i), n] for i, n in zip(blocks, names)]))
        doc.append(("p", f"Selection rule: {search.get('rule') or plan.get('selection_rule')}."))
        if search.get("searched"):
            target = (f"exactly {search['target_blocks']} blocks" if search.get("target_blocks") is not None
                      else f"a predicted speedup of at least {search['target_speedup']}×")
            space = f" of {search['space_size']}" if search.get("space_size") is not None else ""
            doc.append(("p", f"Target: {target}. Method: {search['method']}, {search['n_evals']} subnets "
                             f"scored{space}. Score: holdout top-1 of the supernet with that subnet active, after "
                             "recalibrating BatchNorm statistics; ties go to the faster subnet."))
            rows = [["search pick " + str(search["blocks"]), _pct(search["holdout_acc"]),
                     _f(search.get("predicted_speedup"), ".3f") + "×"]]
            rows += [[f"random pick {r['blocks']}", _pct(r["acc"]), _f(r.get("speedup"), ".3f") + "×"]
                     for r in search.get("random_picks") or []]
            rows += [["baseline (nothing pruned)", _pct(search["baseline_holdout_acc"]), "1.000×"],
                     ["supernet, nothing pruned", _pct(search["supernet_unpruned_holdout_acc"]), "1.000×"]]
            doc.append(("table", ["subnet", "holdout acc", "predicted speedup"], rows))
            if search.get("beats_random") is not None:
                doc.append(("p", "The pick " + ("beats every random pick" if search["beats_random"]
                                                else "does NOT beat every random pick")
                             + " of the same size on the holdout split."))
            if search.get("measured_speedup") is not None:
                doc.append(("p", f"Speedup of the pick: predicted {search['predicted_speedup']:.3f}× by the latency "
                                 f"table, measured {search['measured_speedup']:.3f}× end to end (random weights, "
                                 "ORT_ENABLE_ALL) during the search."))
            top = search.get("top") or []
            if top:
                doc.append(("table", ["rank", "blocks", "holdout acc", "predicted speedup"],
                            [[str(k + 1), str(c["blocks"]), _pct(c["acc"]), _f(c.get("speedup")) + "×"]
                             for k, c in enumerate(top[:8])]))
    return doc


def _training_section(run_dir: Path, cfg: RunConfig, results: dict, figures: dict[str, Path]) -> list[tuple]:
    """The baseline and the progressive training."""
    doc: list[tuple] = []
    base, prune = results.get("baseline"), results.get("prune")
    if base or prune:
        doc.append(("h2", "Training"))
        if base:
            doc.append(("p", f"Baseline: {base['source']}; val accuracy {_pct(base['val_acc'])} (torch). "
                             f"Data: {base.get('data', cfg.data.spec)}."))
        if prune:
            doc.append(("p", f"Progressive pruning: val accuracy {_pct(prune['baseline']['acc'])} (baseline) → "
                             f"{_pct(prune['at_start']['acc'])} right after conversion (λ = 0, new BNs calibrated) → "
                             f"{_pct(prune['final']['acc'])} at λ = 1 after {len(prune['history'])} epochs (torch)."))
            if prune["plan"].get("notes"):
                doc.append(("note", f"Settings: {prune['plan']['notes']}."))
            hist = prune.get("history") or []
            if hist:
                doc.append(("table", ["epoch", "λ (mean)", "train loss", "train acc", "val acc", "s"],
                            [[str(h["epoch"]), _f(h.get("lam"), ".2f"), f"{h['train_loss']:.4f}",
                              _pct(h["train_acc"]), _pct(h["val_acc"]), f"{h['seconds']:.1f}"] for h in hist]))
    return doc


def _merge_section(run_dir: Path, cfg: RunConfig, results: dict, figures: dict[str, Path]) -> list[tuple]:
    """Merge and verification of both files."""
    doc: list[tuple] = []
    ex = results.get("export")
    if ex:
        doc.append(("h2", "Merge and verification"))
        rows = []
        for key in ("baseline", "pruned"):
            e = ex[key]
            rows.append([f"{key}.onnx", f"{e['nodes_before']} → {e['nodes_after']}",
                         _f(e.get("max_abs_diff"), ".1e"), _f(e.get("torch_max_abs_diff"), ".1e"),
                         f"{e['seconds']:.1f}"])
        doc.append(("table", ["file", "nodes (export → merged)", "max abs diff, merged vs unmerged",
                              "max abs diff, ONNX vs torch", "export s"], rows))
        doc.append(("note", "Every file is checked against the unmerged export in ONNX Runtime with graph "
                            "optimizations off, on random inputs: max|out − ref| ≤ 1e-6 + 1e-4·max|ref|, or the "
                            "export fails and writes nothing."))
        ops = sorted(set(ex["baseline"]["ops_after"]) | set(ex["pruned"]["ops_before"])
                     | set(ex["pruned"]["ops_after"]))
        op_rows = [[op, str(ex["baseline"]["ops_after"].get(op, 0)), str(ex["pruned"]["ops_before"].get(op, 0)),
                    str(ex["pruned"]["ops_after"].get(op, 0))] for op in ops]
        doc.append(("table", ["op", "baseline.onnx (deployed)", "pruned, before merge", "pruned.onnx (deployed)"],
                    op_rows))
        dec = ex["pruned"].get("decisions") or []
        if dec:
            doc.append(("p", f"Merge decisions ({len(dec)}):"))
            doc.append(("list", dec[:12] + ([f"... {len(dec) - 12} more in export/result.json"] if len(dec) > 12
                                             else [])))
    return doc


def _environment_section(run_dir: Path, cfg: RunConfig, results: dict, figures: dict[str, Path]) -> list[tuple]:
    """Versions, providers, threads, machine."""
    doc: list[tuple] = []
    bench = results.get("bench")
    doc.append(("h2", "Environment"))
    env = []
    if bench and bench.get("versions"):
        env += list(bench["versions"].items())
    if bench:
        s = bench["bench"]["setup"]
        env += [("ORT providers", ", ".join(s["providers"])), ("ORT intra-op threads", str(s["threads"])),
                ("ORT optimization levels", ", ".join(OPT_LEVELS[v] for v in bench["bench"]["opt_levels"])),
                ("CPU", f"{s['cpu_model']} ({s['cpu_count']} logical CPUs)"), ("platform", s["platform"])]
    env.append(("torch device (training)", cfg.device))
    doc.append(("kv", [(k, str(v)) for k, v in env]))
    return doc


def _reproduce_section(run_dir: Path, cfg: RunConfig, results: dict, figures: dict[str, Path]) -> list[tuple]:
    """The config to rerun, and the stage timings."""
    doc: list[tuple] = []
    doc.append(("h2", "Reproduce"))
    doc.append(("p", "Save the configuration below as run.toml, then `updp run --config run.toml --out DIR`. "
                     "Rerunning skips finished stages whose inputs are unchanged; `updp run --resume DIR` "
                     "continues an interrupted run."))
    doc.append(("code", cfg.to_toml()))
    doc.append(("p", "Stage timings: " + ", ".join(
        f"{k} {v.get('seconds_stage', 0):.1f} s" for k, v in results.items() if isinstance(v, dict)) + "."))
    return doc


def _document(run_dir: Path, cfg: RunConfig, results: dict, figures: dict[str, Path]) -> list[tuple]:
    """The report as blocks: ("h1"|"h2"|"p"|"note", text), ("cards", [(label, value, sub)]),
    ("table", headers, rows), ("kv", [(key, value)]), ("img", path, alt), ("code", text), ("list", items)."""
    doc: list[tuple] = []
    for section in (_summary_section, _tradeoff_section, _latency_section, _precision_section, _block_section,
                    _plan_section,
                    _training_section, _merge_section, _environment_section, _reproduce_section):
        doc += section(run_dir, cfg, results, figures)
    return doc


# ------------------------------------------------------------------ renderers

def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(doc: list[tuple], run_dir: Path) -> str:
    out: list[str] = []
    for block in doc:
        kind = block[0]
        if kind == "h1":
            out += [f"# {block[1]}", ""]
        elif kind == "h2":
            out += [f"## {block[1]}", ""]
        elif kind in ("p", "note"):
            out += [block[1] if kind == "p" else f"*{block[1]}*", ""]
        elif kind == "warn":
            out += [f"> **Note:** {block[1]}", ""]
        elif kind == "cards":
            out += ["| " + " | ".join(_md_cell(c[0]) for c in block[1]) + " |",
                    "|" + "---|" * len(block[1]),
                    "| " + " | ".join(f"**{_md_cell(c[1])}** ({_md_cell(c[2])})" for c in block[1]) + " |", ""]
        elif kind == "table":
            _, head, rows = block
            if any(head):
                out.append("| " + " | ".join(_md_cell(h) for h in head) + " |")
            else:
                out.append("| | |")
            out.append("|" + "---|" * len(head))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("")
        elif kind == "img":
            rel = Path(block[1]).resolve().relative_to(run_dir.resolve())
            out += [f"![{block[2]}]({rel.as_posix()})", ""]
        elif kind == "code":
            out += ["```toml", block[1].rstrip(), "```", ""]
        elif kind == "list":
            out += [f"- `{_md_cell(x)}`" for x in block[1]] + [""]
        elif kind == "kv":
            out += ["| | |", "|---|---|"] + [f"| {_md_cell(k)} | {_md_cell(v)} |" for k, v in block[1]] + [""]
    return "\n".join(out)


CSS = """
* { box-sizing: border-box; }
body { font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #1d1d1f;
       background: #f6f7f9; margin: 0; }
main { max-width: 1100px; margin: 0 auto; padding: 28px 32px 60px; background: #fff; min-height: 100vh; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #e3e5e8; }
p { margin: 8px 0; }
.note { color: #5f6368; font-size: 13px; }
.warn { background: #fff4e5; border-left: 4px solid #e6550d; padding: 8px 12px; margin: 12px 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(190px, 1fr)); gap: 12px; margin: 18px 0 6px; }
.card { border: 1px solid #e3e5e8; border-radius: 8px; padding: 12px 14px; background: #fafbfc; }
.card .label { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: #5f6368; }
.card .value { font-size: 22px; font-weight: 600; margin: 2px 0; white-space: nowrap; }
.card .sub { font-size: 12.5px; color: #5f6368; }
table { border-collapse: collapse; margin: 10px 0; font-size: 13.5px; }
th, td { padding: 4px 10px; border-bottom: 1px solid #eceef1; text-align: left; vertical-align: top; }
th { background: #f3f4f6; font-weight: 600; }
table.kv th { background: none; font-weight: 500; color: #5f6368; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.hl td { background: #fff4e5; }
img { max-width: 100%; height: auto; display: block; margin: 8px 0; border: 1px solid #eceef1; }
pre { background: #f3f4f6; padding: 12px; border-radius: 6px; font-size: 12.5px; overflow-x: auto; }
ul.mono { font: 12.5px/1.45 ui-monospace, Menlo, Consolas, monospace; padding-left: 20px; }
"""


def _is_num(text: str) -> bool:
    t = str(text).replace("×", "").replace("%", "").replace("+", "").replace("−", "-").strip()
    try:
        float(t)
        return True
    except ValueError:
        return False


def render_html(doc: list[tuple], title: str) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
           f"<title>{e(title)}</title><style>{CSS}</style></head><body><main>"]
    for block in doc:
        kind = block[0]
        if kind == "h1":
            out.append(f"<h1>{e(block[1])}</h1>")
        elif kind == "h2":
            out.append(f"<h2>{e(block[1])}</h2>")
        elif kind == "p":
            out.append(f"<p>{_code_spans(e(block[1]))}</p>")
        elif kind == "note":
            out.append(f"<p class=\"note\">{_code_spans(e(block[1]))}</p>")
        elif kind == "warn":
            out.append(f"<div class=\"warn\">{e(block[1])}</div>")
        elif kind == "cards":
            out.append("<div class=\"cards\">" + "".join(
                f"<div class=\"card\"><div class=\"label\">{e(a)}</div><div class=\"value\">{e(b)}</div>"
                f"<div class=\"sub\">{e(c)}</div></div>" for a, b, c in block[1]) + "</div>")
        elif kind == "table":
            _, head, rows = block
            t = ["<table>"]
            if any(head):
                t.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>")
            for row in rows:
                cls = " class=\"hl\"" if str(row[0]).startswith("★") or str(row[0]).startswith("search pick") else ""
                t.append(f"<tr{cls}>" + "".join(
                    f"<td class=\"num\">{e(str(c))}</td>" if _is_num(c) else f"<td>{e(str(c))}</td>" for c in row)
                    + "</tr>")
            t.append("</table>")
            out.append("".join(t))
        elif kind == "img":
            data = base64.b64encode(Path(block[1]).read_bytes()).decode()
            out.append(f"<img alt=\"{e(block[2])}\" src=\"data:image/png;base64,{data}\">")
        elif kind == "code":
            out.append(f"<pre>{e(block[1])}</pre>")
        elif kind == "list":
            out.append("<ul class=\"mono\">" + "".join(f"<li>{e(x)}</li>" for x in block[1]) + "</ul>")
        elif kind == "kv":
            out.append("<table class=\"kv\">" + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>"
                                                       for k, v in block[1]) + "</table>")
    out.append("</main></body></html>")
    return "\n".join(out)


def _code_spans(escaped: str) -> str:
    parts = escaped.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


# ------------------------------------------------------------------ entry point

def write_report(run_dir: Path, cfg: RunConfig, results: dict[str, dict[str, Any]]) -> dict[str, Path]:
    """Write figures, `report.md`, `report.html` and `results.json` into `run_dir`; return their paths."""
    run_dir = Path(run_dir)
    figures: dict[str, Path] = {}
    for name, fn in (("tradeoff", plot_tradeoff), ("blocks", plot_blocks)):
        try:
            p = fn(results, run_dir / "figures" / f"{name}.png")
        except ImportError:
            logger.warning("matplotlib is not installed (pip install 'updp[report]'): the report has no figures")
            break
        if p is not None:
            figures[name] = p
    doc = _document(run_dir, cfg, results, figures)
    paths = {"md": run_dir / "report.md", "html": run_dir / "report.html", "json": run_dir / "results.json"}
    write_text_atomic(paths["md"], render_markdown(doc, run_dir))
    write_text_atomic(paths["html"], render_html(doc, doc[0][1]))
    payload = {"headline": headline(results), "config": cfg.to_dict(), "precision": precision_rows(results),
               "stages": {k: v for k, v in results.items() if k != "report"}}
    write_text_atomic(paths["json"], json.dumps(payload, indent=2, default=str) + "\n")
    return {**paths, **{f"figure_{k}": v for k, v in figures.items()}}


__all__ = ["headline", "plot_blocks", "plot_tradeoff", "precision_rows", "render_html", "render_markdown",
           "write_report"]
