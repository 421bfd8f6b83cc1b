"""The demo's budgets: what smaller search and prune budgets cost in accuracy, and save in time.

`updp demo` is `updp run` on the embedded default (`updp.pipeline.config.demo_config`): a 10-epoch
baseline, a supernet of 2 epochs with 60 scored subnets, 6 progressive epochs. This script takes
one baseline (the demo's own baseline stage, trained once) and runs the search and prune stages of
each variant on it, for seeds 0..N-1 of both stages, interleaved (the order of the variants
rotates every seed), through the command line as a user would (`updp run --config F --until
eval`). Per variant it reports the pruned model's val accuracy with ONNX Runtime (mean ± std over
the seeds), the paired difference against the demo's budgets (same seed) with a paired t-test,
the blocks the search picked and its measured speedup, and the seconds of the search and prune
stages (median). Accuracy is what decides here; the seconds come from one run on a machine that
may be shared (check `uptime`), so compare them only within this run.

    .venv/bin/python benchmarks/demo_budgets.py                      # demo vs the variants below, 3 seeds
    .venv/bin/python benchmarks/demo_budgets.py --variants demo prune4 --seeds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

from _common import ROOT, mean_std, paired, run_updp, save_json, setup_logging

from updp.pipeline.config import demo_config

# Overrides of the demo's config sections; "demo" is the embedded default itself.
VARIANTS: dict[str, dict[str, dict]] = {
    "demo": {},
    "prune4": {"prune": {"epochs": 4}},
    "prune4_evals40": {"prune": {"epochs": 4}, "search": {"max_evals": 40}},
    "prune4_evals40_supernet1": {"prune": {"epochs": 4}, "search": {"max_evals": 40, "epochs": 1}},
}


def _run(args: list[str]) -> float:
    return run_updp("run", *args, "--no-progress", "-q")


def _delta(d: dict | None) -> str:
    if d is None:
        return ""
    return f"{d['mean']:+.2f} (p {'-' if d['p'] is None else format(d['p'], '.2f')})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--work", default=str(ROOT / "runs" / "demo_budgets"))
    args = ap.parse_args()
    setup_logging()
    if "demo" not in args.variants:
        args.variants.insert(0, "demo")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    # One baseline for every variant and seed: the demo's own baseline stage.
    base_dir = work / "baseline"
    if not (base_dir / "baseline" / "base.pt").is_file():
        print("training the demo's baseline once ...", flush=True)
        _run(["--out", str(base_dir), "--until", "baseline"])
    base_ckpt = base_dir / "baseline" / "base.pt"

    runs: dict[str, list[dict]] = {v: [] for v in args.variants}
    for seed in range(args.seeds):
        k = seed % len(args.variants)
        for name in args.variants[k:] + args.variants[:k]:
            out = work / f"{name}_s{seed}"
            if not (out / "eval" / "result.json").is_file():
                cfg = demo_config().replace(baseline={"checkpoint": str(base_ckpt), "epochs": 0},
                                            search={"seed": seed, **VARIANTS[name].get("search", {})},
                                            prune={"seed": seed, **VARIANTS[name].get("prune", {})})
                cfg_file = work / f"{name}_s{seed}.json"
                cfg_file.write_text(json.dumps(cfg.to_dict(), indent=2))
                wall = _run(["--config", str(cfg_file), "--out", str(out), "--until", "eval"])
                print(f"{name} seed {seed}: {wall:.1f} s", flush=True)
            res = {st: json.loads((out / st / "result.json").read_text()) for st in ("search", "prune", "eval")}
            runs[name].append({"seed": seed, "acc": res["eval"]["pruned"]["acc"],
                               "baseline_acc": res["eval"]["baseline"]["acc"], "blocks": res["search"]["blocks"],
                               "speedup": res["search"]["measured_speedup"],
                               "search_s": res["search"]["seconds_stage"], "prune_s": res["prune"]["seconds_stage"]})

    base_acc = sorted({r["baseline_acc"] for rs in runs.values() for r in rs})  # one value: one baseline
    rows = {}
    ref = {r["seed"]: r["acc"] for r in runs["demo"]}
    for name, rs in runs.items():
        m, s = mean_std([100 * r["acc"] for r in rs])
        rows[name] = {"acc_mean": m, "acc_std": s, "runs": rs,
                      "search_s_median": statistics.median(r["search_s"] for r in rs),
                      "prune_s_median": statistics.median(r["prune_s"] for r in rs),
                      "vs_demo": paired([100 * (r["acc"] - ref[r["seed"]]) for r in rs]) if name != "demo" else None}
    setup = {"seeds": args.seeds, "baseline_acc": base_acc, "machine": platform.platform(), "cpus": os.cpu_count(),
             "load_at_end": os.getloadavg(), "config": "updp demo's, baseline taken from one run of its baseline stage"}
    print(f"# {setup}")
    print(f"baseline val acc (ORT): {', '.join(f'{100 * a:.2f} %' for a in base_acc)}")
    print(f"{'variant':<18} {'pruned val acc %':>18} {'Δ vs demo (p)':>18} {'search s':>9} {'prune s':>8}  "
          "blocks / speedup")
    for name, row in rows.items():
        delta = _delta(row["vs_demo"])
        picks = "; ".join(f"{r['blocks']} {r['speedup']:.2f}x" for r in row["runs"])
        print(f"{name:<18} {row['acc_mean']:>11.2f} ± {row['acc_std']:.2f} {delta:>18} "
              f"{row['search_s_median']:>9.1f} {row['prune_s_median']:>8.1f}  {picks}")
    print(f"wrote {save_json('demo_budgets.json', {'setup': setup, 'variants': rows})}")


if __name__ == "__main__":
    main()
