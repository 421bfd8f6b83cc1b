"""Pruning-ratio sweep: UPDP against DepthShrinker-style, Layer-Folding and block drop, at P blocks.

The paper's claim is that progressive linearization keeps more of the baseline than removing the
activations at once (DepthShrinker) or learning slopes (Layer-Folding), across pruning ratios.
This sweep trains, from one cached baseline per model on mnist5k (32×32), every method of
`updp prune --method` on the same blocks, with the same epochs, data, recipe and seeds:

    updp        progressive λ 0 → 1 over half the steps, distillation from the baseline
    updp_no_kd  the same without distillation
    abrupt      λ = 1 from the first step (DepthShrinker-style)
    layerfold   Layer-Folding: learned slopes under λ·|1 − α²|, forced to 1 where UPDP's ramp ends
    drop        the blocks removed (identity shortcut kept)

(distillation is on for every method but `updp_no_kd`, so that UPDP vs another method differs in
the method alone).

Blocks: the P blocks with the largest estimated saving (updp's default rule, `--prune`), ranked
once per model among the blocks that every method can take (prunable, with an identity shortcut,
so that drop applies too): P = 2 ⊂ 4 ⊂ 6 ⊂ 8, the same for every method and seed. The search
(`updp search`) is left out on purpose: it would pick other blocks per P and mix the block choice
into a comparison of methods.

Reported per model, budget and P: val accuracy mean ± std over the seeds; the paired difference
of each method against UPDP (same seed, same blocks) with a paired t-test, per P and pooled over P;
the accuracy right after conversion (before training); the accuracy per epoch; and the ORT speedup
of the merged UPDP model and of the dropped one at each P (ORT_ENABLE_ALL, 2 threads, interleaved).

Every finished run is cached (`<work>/cache/*.json`), so a killed sweep resumes; `--report` only
reads the cache and trains nothing. DeiT's recipe trains with bf16 autocast, which pays only where
bfloat16 is native (AVX512-BF16/AMX, recent GPUs): elsewhere the sweep refuses to train it.
A work folder belongs to the recipes it was filled with (`<model>_recipe.json`):
change a recipe in `MODELS` and the sweep refuses the old folder. Figures go to `docs/figures/`
(matplotlib, in the `report` extra).

    .venv/bin/python benchmarks/pruning_sweep.py --models convnext_atto            # main grid
    .venv/bin/python benchmarks/pruning_sweep.py --models convnext_atto --budgets 1
    .venv/bin/python benchmarks/pruning_sweep.py --models deit_tiny_p4             # main grid, ViT
    .venv/bin/python benchmarks/pruning_sweep.py --models resnet18 mobilenetv2_100 # the smaller sweep
    .venv/bin/python benchmarks/pruning_sweep.py --models convnext_atto --report   # tables from the cache
    .venv/bin/python benchmarks/pruning_sweep.py --models deit_tiny_p4 --budgets 4 --P 8 \
        --work runs/pruning_sweep_b --tag baseline_b     # a replicate from a second baseline, reported apart
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

from _common import RESULTS, ROOT, mean_std, paired, save_json, setup_logging

import updp
from updp.core.io import write_text_atomic

MAIN_WORK = ROOT / "runs" / "pruning_sweep"  # the main sweep's work folder: its results carry no tag

# Baseline and prune recipes per model (the ablation's, chosen before any sweep result was seen).
MODELS = {
    "convnext_atto": {"model": "timm:convnext_atto", "kwargs": {}, "P": [2, 4, 6, 8],
                      "train": {"epochs": 10}, "prune": {}},
    "deit_tiny_p4": {"model": "timm:deit_tiny_patch16_224", "kwargs": {"patch_size": 4}, "P": [2, 4, 6, 8],
                     "train": {"epochs": 30, "batch_size": 64, "lr": 5e-4, "warmup_epochs": 2, "amp": "bf16"},
                     "prune": {"batch_size": 64, "lr": 2.5e-4, "amp": "bf16"}},
    "resnet18": {"model": "timm:resnet18", "kwargs": {}, "P": [2, 4], "train": {"epochs": 10}, "prune": {}},
    # MobileNetV2 learns slowly from scratch at 32×32: 10 epochs at lr 2e-3 reached 29-35 %, 6 at
    # 1e-2 65 %, 10 at 3e-2 51 %; 30 epochs at 1e-2 reach 95.3 %. Pruned with the CLI's recipe, as
    # the other CNNs (a first try at half the baseline's lr, 5e-3, cost every method 5-14 points in
    # one epoch, block drop included).
    "mobilenetv2_100": {"model": "timm:mobilenetv2_100", "kwargs": {}, "P": [2, 4], "train": {"epochs": 30, "lr": 1e-2},
                        "prune": {}},
}
METHODS = {"updp": {}, "updp_no_kd": {"kd": False}, "abrupt": {"method": "abrupt"},
           "layerfold": {"method": "layerfold"}, "drop": {"method": "drop"}}
DATA = "mnist5k"


def recipe_of(name: str) -> str:
    return json.dumps(MODELS[name], sort_keys=True)


def check_recipe(name: str, work: Path) -> None:
    """Cached runs belong to the recipe they were trained with: refuse a work folder of another."""
    path = work / f"{name}_recipe.json"
    if path.exists() and path.read_text() != recipe_of(name):
        raise SystemExit(f"{name}: its recipe changed since {work} was filled; delete {work}/{name}_* and "
                         f"{work}/cache/{name}_* (or use another --work)")
    write_text_atomic(path, recipe_of(name))


def check_bf16(name: str) -> None:
    """A recipe trained in bf16 is refused where bfloat16 is emulated (many times slower than float32).

    Its cached runs were trained with bf16 autocast; running the rest in float32 would mix two
    recipes in one table, so the rest has to wait for a CPU (or GPU) with native bfloat16.
    """
    if "bf16" not in (MODELS[name]["train"].get("amp"), MODELS[name]["prune"].get("amp")):
        return
    import torch

    from updp.training.device import cpu_capability, native_bfloat16, resolve_device

    if not native_bfloat16(resolve_device()):
        raise SystemExit(f"{name}: its recipe trains with bf16 autocast, and this machine ({cpu_capability()}) has "
                         "no native bfloat16 (a DeiT-tiny step: 35 s emulated vs 1.45 s float32 on an AVX2 CPU); "
                         "run it on a CPU with AVX512-BF16/AMX or a GPU, or use --report for the cached runs "
                         f"(torch {torch.__version__})")


def baseline(name: str, work: Path) -> Path:
    cfg = MODELS[name]
    check_recipe(name, work)
    out = work / f"{name}_base.pt"
    if not out.exists():  # trained under another name (resumable), renamed when finished
        partial = work / f"{name}_base.partial.pt"
        t0 = time.perf_counter()
        updp.train(cfg["model"], data=DATA, input_size=(32, 32), model_kwargs=dict(cfg["kwargs"]), out=str(partial),
                   progress=False, resume=True, **cfg["train"])
        partial.replace(out)
        print(f"[{time.perf_counter() - t0:6.1f}s] baseline {name}", flush=True)
    return out


def block_ranking(name: str, base: Path | None, work: Path) -> list[int]:
    """The droppable prunable blocks, largest estimated saving first (ties to later blocks).

    Without a baseline (`--report`), the ranking the work folder or the last results file recorded.
    """
    path = work / f"{name}_ranking.json"
    if path.exists():
        return json.loads(path.read_text())
    if base is None:
        previous = RESULTS / f"pruning_sweep_{name}.json"
        if not previous.exists():
            raise SystemExit(f"{name}: no block ranking in {work} or {previous}; run the sweep without --report")
        return json.loads(previous.read_text())["blocks_ranked"]
    from updp.blocks.discover import find_blocks
    from updp.exporter.selection import estimate_block_savings, rank_by_saving
    from updp.workflows.resolve import load_baseline

    loaded = load_baseline(str(base), what="pruning")
    shape = (1, *loaded.spec["input_size"])
    blocks = find_blocks(loaded.module.eval(), shape)
    savings = estimate_block_savings(loaded.module, blocks, shape)
    usable = {b.index for b in blocks if b.prunable and b.shortcut == "identity"}
    ranked = rank_by_saving({i: s for i, s in savings.items() if i in usable})
    write_text_atomic(path, json.dumps(ranked))
    return ranked


def cached_baseline_acc(name: str, work: Path) -> float | None:
    """The baseline accuracy the cached runs of `name` were pruned from (None: nothing cached)."""
    for path in sorted((work / "cache").glob(f"{name}_P*.json")):
        return json.loads(path.read_text())["baseline_acc"]
    return None


def run_one(name: str, base: Path, blocks: list[int], budget: int, method: str, seed: int, work: Path) -> dict:
    key = f"{name}_P{len(blocks)}_e{budget}_{method}_s{seed}"
    cached = work / "cache" / f"{key}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    # Runs restored into a fresh work folder must come from the same baseline: one trained again
    # elsewhere (other CPU kernels, another torch) can differ, and then its runs do not pair.
    expected = cached_baseline_acc(name, work)
    out = work / "ckpt" / f"{key}.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = updp.prune(str(base), blocks=blocks, data=DATA, epochs=budget, seed=seed, out=str(out), progress=False,
                     **MODELS[name]["prune"], **METHODS[method])
    if expected is not None and res.baseline["acc"] != expected:
        raise SystemExit(f"{key}: the baseline in {base} scores {100 * res.baseline['acc']:.2f} %, the cached runs' "
                         f"{100 * expected:.2f} %: not the baseline they were pruned from (trained again on another "
                         "machine?); move the cache away or restore that baseline")
    record = {"key": key, "model": name, "P": len(blocks), "blocks": blocks, "budget": budget, "method": method,
              "seed": seed, "baseline_acc": res.baseline["acc"], "at_start_acc": res.at_start["acc"],
              "final_acc": res.train.val_acc, "epochs_val_acc": [h["val_acc"] for h in res.train.history],
              "epochs_lam": [h.get("lam") for h in res.train.history], "method_stats": res.method_stats,
              "seconds": time.perf_counter() - t0,
              "checkpoint": str(out)}
    write_text_atomic(cached, json.dumps(record, indent=1))
    print(f"[{record['seconds']:6.1f}s] {key}: {100 * record['final_acc']:.2f} % "
          f"(after conversion {100 * record['at_start_acc']:.2f} %)", flush=True)
    return record


def summarize(records: list[dict], budgets: list[int], ps: list[int], seeds: int) -> dict:
    by = {(r["budget"], r["P"], r["method"], r["seed"]): r for r in records}
    cells, pooled = {}, {}
    for b in budgets:
        for method in METHODS:
            pooled_diffs = []
            for p in ps:
                # A cell of fewer seeds than asked (a sweep not finished) is kept and marked with its n.
                runs = [r for r in (by.get((b, p, method, s)) for s in range(seeds)) if r is not None]
                if not runs:
                    continue
                ref = [by.get((b, p, "updp", r["seed"])) for r in runs]
                accs = [r["final_acc"] for r in runs]
                cell = {"acc": mean_std(accs), "values": accs, "seeds": [r["seed"] for r in runs],
                        "at_start": mean_std([r["at_start_acc"] for r in runs]),
                        "epochs": [mean_std(list(col))[0] for col in zip(*[r["epochs_val_acc"] for r in runs])],
                        "seconds": statistics.fmean(r["seconds"] for r in runs)}
                if method != "updp" and all(r is not None for r in ref):
                    diffs = [a - r["final_acc"] for a, r in zip(accs, ref)]
                    cell["vs_updp"] = paired(diffs)
                    pooled_diffs += diffs
                cells[f"e{b}_P{p}_{method}"] = cell
            if method != "updp" and pooled_diffs:
                pooled[f"e{b}_{method}"] = paired(pooled_diffs)
    return {"cells": cells, "pooled_vs_updp": pooled}


def speedups(name: str, base: Path, records: list[dict], ps: list[int], budget: int, work: Path,
             repeats: int) -> dict:
    """ORT_ENABLE_ALL speedup of the merged UPDP (seed 0) and the dropped model at each P."""
    files, names = [work / f"{name}_base.onnx"], ["baseline"]
    if not files[0].exists():
        updp.export(str(base), str(files[0]))
    for p in ps:
        for method in ("updp", "drop"):
            rec = next((r for r in records if r["P"] == p and r["method"] == method and r["seed"] == 0
                        and r["budget"] == budget), None)
            if rec is None:
                continue
            out = work / f"{name}_P{p}_{method}.onnx"
            if not out.exists():
                updp.export(rec["checkpoint"], str(out))
            files.append(out)
            names.append(f"P{p}_{method}")
    report = updp.bench([str(f) for f in files], names=names, opt_levels=["all"], threads=2, repeats=repeats,
                        warmup=20)
    return {"speedup": {n: report.get(n, "all").speedup for n in names}, "setup": report.report().setup.to_dict(),
            "table": report.format_table()}


def _fmt(ms: tuple[float, float]) -> str:
    return f"{100 * ms[0]:.2f} ± {100 * ms[1]:.2f}"


def _speedup(v: float | None) -> str:
    return "not measured" if v is None or math.isnan(v) else f"{v:.3f}×"


def _p(v: float | None) -> str:
    return "–" if v is None or math.isnan(v) else f"{v:.3f}"


def markdown(name: str, summary: dict, budgets: list[int], ps: list[int], base_acc: float, speed: dict | None,
             seeds: int) -> str:
    cells, lines = summary["cells"], []
    lines.append(f"**{MODELS[name]['model']}** on mnist5k (32×32), baseline val acc {100 * base_acc:.2f} %; "
                 f"val accuracy (%) mean ± std over {seeds} seeds ([n=k]: a cell with k of them so far), "
                 "Δ = method − UPDP (same seed and blocks), p = paired t-test.\n")
    for b in budgets:
        lines.append(f"*{b} epoch{'s' if b > 1 else ''} of pruning:*\n")
        lines.append("| method | " + " | ".join(f"P = {p}" for p in ps) + " | pooled Δ (p) |")
        lines.append("|---|" + "---|" * (len(ps) + 1))
        for method in METHODS:
            row = []
            for p in ps:
                c = cells.get(f"e{b}_P{p}_{method}")
                if c is None:
                    row.append("")
                    continue
                text = _fmt(c["acc"]) + ("" if len(c["values"]) == seeds else f" [n={len(c['values'])}]")
                if "vs_updp" in c:
                    d = c["vs_updp"]
                    text += f" (Δ {100 * d['mean']:+.2f}, p {_p(d['p'])})"
                row.append(text)
            pool = summary["pooled_vs_updp"].get(f"e{b}_{method}")
            pool_text = f"{100 * pool['mean']:+.2f} ({_p(pool['p'])}, n={pool['n']})" if pool else ""
            lines.append(f"| {method} | " + " | ".join(row) + f" | {pool_text} |")
        lines.append("")
        if b == budgets[0]:  # the conversion does not depend on the budget: once
            lines.append("Accuracy right after conversion, before any training (%, mean over seeds; the same for "
                         "every budget):\n")
            lines.append("| method | " + " | ".join(f"P = {p}" for p in ps) + " |")
            lines.append("|---|" + "---|" * len(ps))
            for method in METHODS:
                vals = [cells.get(f"e{b}_P{p}_{method}") for p in ps]
                lines.append(f"| {method} | " + " | ".join(f"{100 * c['at_start'][0]:.2f}" if c else ""
                                                           for c in vals) + " |")
            lines.append("")
        if b > 1:
            lines.append("Val accuracy per epoch (%, mean over seeds):\n")
            lines.append("| method | " + " | ".join(f"P = {p}" for p in ps) + " |")
            lines.append("|---|" + "---|" * len(ps))
            for method in METHODS:
                vals = [cells.get(f"e{b}_P{p}_{method}") for p in ps]
                lines.append(f"| {method} | " + " | ".join(
                    " → ".join(f"{100 * v:.1f}" for v in c["epochs"]) if c else "" for c in vals) + " |")
            lines.append("")
    if speed:
        lines.append("ORT speedup vs the baseline (ORT_ENABLE_ALL, CPU, 2 threads, interleaved rounds; seed 0):\n")
        lines.append("| | " + " | ".join(f"P = {p}" for p in ps) + " |")
        lines.append("|---|" + "---|" * len(ps))
        for method in ("updp", "drop"):
            lines.append(f"| {'merged (every linearizing method)' if method == 'updp' else 'dropped'} | "
                         + " | ".join(_speedup(speed["speedup"].get(f"P{p}_{method}")) for p in ps)
                         + " |")
        lines.append("")
    return "\n".join(lines)


def figure(name: str, summary: dict, budgets: list[int], ps: list[int], base_acc: float, seeds: int,
           suffix: str = "") -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figure (pip install matplotlib)", file=sys.stderr)
        return None
    fig, axes = plt.subplots(1, len(budgets), figsize=(5.2 * len(budgets), 4), squeeze=False, sharey=True)
    for ax, b in zip(axes[0], budgets):
        for k, method in enumerate(METHODS):
            pts = [(p, summary["cells"][f"e{b}_P{p}_{method}"]["acc"]) for p in ps
                   if f"e{b}_P{p}_{method}" in summary["cells"]]
            if pts:
                x = [p + (k - 2) * 0.08 for p, _ in pts]
                ax.errorbar(x, [100 * a[0] for _, a in pts], yerr=[100 * a[1] for _, a in pts], marker="o",
                            capsize=3, label=method)
        ax.axhline(100 * base_acc, color="grey", ls="--", lw=1, label="baseline")
        short = [f"P{p} {m}" for p in ps for m in METHODS
                 if (c := summary["cells"].get(f"e{b}_P{p}_{m}")) is not None and len(c["values"]) < seeds]
        ax.set_title(f"{name}: {b} epoch{'s' if b > 1 else ''} of pruning"
                     + (f"\n(fewer than {seeds} seeds: {', '.join(short)})" if short else ""), fontsize=9)
        ax.set_xlabel("pruned blocks P")
        ax.set_xticks(ps)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"val accuracy (%), mean ± std of {seeds} seeds")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    path = ROOT / "docs" / "figures" / f"sweep_{name}{suffix}.svg"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Date": None})
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["convnext_atto"], choices=list(MODELS))
    ap.add_argument("--budgets", nargs="+", type=int, default=[1, 4], help="prune epochs")
    ap.add_argument("--P", nargs="+", type=int, default=None, help="pruned blocks (default per model)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=100, help="interleaved latency rounds")
    ap.add_argument("--no-latency", action="store_true", help="skip the ORT speedups")
    ap.add_argument("--report", action="store_true",
                    help="only tables and figures from the cache (nothing trained; the last results' speedups kept)")
    ap.add_argument("--work", default=str(MAIN_WORK))
    ap.add_argument("--tag", default="",
                    help="suffix of the results and figure names (a second work folder's sweep, e.g. from "
                         "another baseline, reported beside the main one instead of over it)")
    args = ap.parse_args()
    if Path(args.work).resolve() != MAIN_WORK.resolve() and not args.tag:
        # The results and figures are named by model (and tag) only: a second work folder without
        # a tag would write its sweep over the main one's committed tables and figure.
        ap.error(f"--work {args.work} needs --tag, so that its results do not replace the main sweep's")
    suffix = f"_{args.tag}" if args.tag else ""
    setup_logging()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for name in args.models:
        ps = args.P or MODELS[name]["P"]
        if args.report:  # the cache alone: nothing is trained
            base = None
        else:
            check_bf16(name)
            base = baseline(name, work)
        ranking = block_ranking(name, base, work)
        records = []
        for budget in args.budgets:
            for p in ps:
                blocks = sorted(ranking[:p])
                for seed in range(args.seeds):
                    for method in args.methods:
                        cached = work / "cache" / f"{name}_P{p}_e{budget}_{method}_s{seed}.json"
                        if args.report and not cached.exists():
                            continue
                        records.append(run_one(name, base, blocks, budget, method, seed, work))
        if not records:
            print(f"{name}: nothing cached yet", file=sys.stderr)
            continue
        summary = summarize(records, args.budgets, ps, args.seeds)
        base_acc = records[0]["baseline_acc"]
        speed = None
        if not (args.no_latency or args.report):
            speed = speedups(name, base, records, ps, max(args.budgets), work, args.repeats)
            print(speed["table"])
        else:  # keep the speedups an earlier (quiet) run measured
            previous = RESULTS / f"pruning_sweep_{name}{suffix}.json"
            speed = json.loads(previous.read_text()).get("speed") if previous.exists() else None
        text = markdown(name, summary, args.budgets, ps, base_acc, speed, args.seeds)
        print(text)
        fig = figure(name, summary, args.budgets, ps, base_acc, args.seeds, suffix)
        path = save_json(f"pruning_sweep_{name}{suffix}.json", {
            "model": MODELS[name], "blocks_ranked": ranking, "budgets": args.budgets, "P": ps, "seeds": args.seeds,
            "baseline_acc": base_acc, "summary": summary, "speed": speed, "records": records,
            "prune_minutes_total": sum(r["seconds"] for r in records) / 60})
        write_text_atomic(path.with_suffix(".md"), text + "\n")
        print(f"wrote {path}" + (f" and {fig}" if fig else ""))
    print(f"total {(time.perf_counter() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
