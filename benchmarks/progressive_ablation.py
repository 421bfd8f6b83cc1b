"""Progressive-pruning ablation benchmark: UPDP vs abrupt activation removal vs block drop vs UPDP without KD.

For each model (timm convnext_atto at 32x32, and a DeiT-tiny variant with patch 4 at 32x32), on
the real mnist5k data, all through the `updp` CLI (so every step is a command a user can rerun):

1. `updp train` a baseline (no hub weights can be downloaded here);
2. `updp search --target-blocks K` (K = a third of the blocks): supernet + evolutionary search,
   which also scores random picks of the same size on the holdout split;
3. `updp prune --plan plan.json` with five methods at the same epochs, 3 seeds each: UPDP
   (progressive λ + KD), `--method abrupt`, `--method layerfold`, `--method drop`, `--no-kd`; plus
   UPDP on a *random* pick of the same size (seed s draws the pick), to see whether the search's
   pick is better after training;
4. `updp export` the baseline and the UPDP seed-0 checkpoint (merged, verified), `updp eval` both
   ONNX files (parity with torch), and `updp bench` them interleaved (ORT CPU, 2 threads,
   ORT_ENABLE_ALL) for the latency ratio; the dropped model is exported and timed too.

Report: val accuracy mean ± std over the 3 seeds per method, the merged model's latency vs its
baseline, and search pick vs random pick. Results go to `benchmarks/results/progressive_ablation_<models>.json`.

    .venv/bin/python benchmarks/progressive_ablation.py --models convnext_atto   # ~10 min on 2 cores
    .venv/bin/python benchmarks/progressive_ablation.py --models deit_tiny_p4    # ~70 min on 2 cores
    .venv/bin/python benchmarks/progressive_ablation.py            # both, ~80 min
    .venv/bin/python benchmarks/progressive_ablation.py --smoke    # a 2-minute mechanics check
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, mean_std, save_json

# Per-model recipes. ConvNeXt uses the CLI defaults. DeiT-tiny from scratch on 3,600 images learns
# slowly (≈35 % val after 3 epochs at any of lr 5e-4/1e-3, batch 32/64, cls-token or average pooling;
# 29.5 % after 5 epochs at the CNN default lr 2e-3), so its baseline gets many more epochs at a ViT
# learning rate and a longer warm-up, and all its training runs in bfloat16 autocast (1.45x per step
# on this AVX512-BF16 CPU). Its supernet and prune runs fine-tune at half the baseline's peak lr
# (the CLI default 1e-3 is a CNN fine-tuning rate). Every method gets the same recipe; chosen before
# any pruning result was seen.
MODELS = {
    "convnext_atto": {"model": "timm:convnext_atto", "kwargs": [], "blocks": 12,
                      "train": [], "search": ["--max-evals", "60"], "prune": []},
    "deit_tiny_p4": {"model": "timm:deit_tiny_patch16_224", "kwargs": ["--model-kwarg", "patch_size=4"],
                     "blocks": 12,
                     "train": ["--batch-size", "64", "--lr", "5e-4", "--warmup-epochs", "2", "--amp", "bf16"],
                     "search": ["--max-evals", "40", "--batch-size", "64", "--lr", "2.5e-4", "--amp", "bf16"],
                     "prune": ["--batch-size", "64", "--lr", "2.5e-4", "--amp", "bf16"],
                     "base_epochs": 30, "prune_epochs": 2},
}
METHODS = {"updp": [], "abrupt": ["--method", "abrupt"], "layerfold": ["--method", "layerfold"],
           "drop": ["--method", "drop"], "no_kd": ["--no-kd"]}


CACHE: Path | None = None  # set in main(): <work>/cmd-cache


def updp(*args: str, log: list) -> dict:
    """Run one `updp ... --json` command, keep its command line, return its JSON.

    A finished command's JSON is cached under <work>/cmd-cache, keyed by its command line, so a
    killed benchmark resumes where it stopped (delete the work directory to start over).
    """
    cmd = [str(ROOT / ".venv" / "bin" / "updp"), *args, "--json"]
    key = hashlib.sha1("\0".join(args).encode()).hexdigest()[:16]
    cached = CACHE / f"{key}.json" if CACHE else None
    if cached is not None and cached.exists():
        print(f"[cached ] updp {' '.join(args)}", flush=True)
        log.append({"cmd": " ".join(cmd[1:]), "seconds": 0.0, "rc": 0, "cached": True})
        return json.loads(cached.read_text())
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - t0
    log.append({"cmd": " ".join(cmd[1:]), "seconds": round(seconds, 1), "rc": proc.returncode})
    print(f"[{seconds:6.1f}s] updp {' '.join(args)}", flush=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}")
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(proc.stdout)
    return json.loads(proc.stdout)


def run_model(name: str, cfg: dict, args, work: Path, log: list) -> dict:
    spec, kw = cfg["model"], cfg["kwargs"]
    k = cfg["blocks"] // 3
    common = ["--data", "mnist5k"]
    steps = ["--max-steps-per-epoch", "3"] if args.smoke else []
    base = work / f"{name}_base.pt"
    base_epochs = args.base_epochs or cfg.get("base_epochs", 10)
    prune_epochs = args.prune_epochs or cfg.get("prune_epochs", 3)
    train = updp("train", spec, *kw, "--input-size", "32", *common, "--epochs", str(base_epochs),
                 "--out", str(base), "--log-jsonl", str(work / f"{name}_base.jsonl"), *cfg["train"], *steps,
                 log=log)
    plan = work / f"{name}_plan.json"
    search = updp("search", str(base), *common, "--target-blocks", str(k), "--epochs", str(args.supernet_epochs),
                  "--out", str(plan), "--bench-repeats", "30", *cfg["search"], *steps, log=log)
    blocks = search["blocks"]
    accs: dict[str, list[float]] = {m: [] for m in [*METHODS, "updp_random_pick"]}
    random_blocks = []
    for seed in range(args.seeds):
        for method, flags in METHODS.items():
            out = work / f"{name}_{method}_s{seed}.pt"
            res = updp("prune", "--checkpoint", str(base), "--plan", str(plan), *common, "--epochs",
                       str(prune_epochs), "--seed", str(seed), "--out", str(out), *flags, *cfg["prune"], *steps,
                       log=log)
            accs[method].append(res["final"]["acc"])
        # UPDP on a random pick of the same size (seed s draws it from the same candidates).
        pick = sorted(random.Random(1000 + seed).sample(range(cfg["blocks"]), k))
        random_blocks.append(pick)
        out = work / f"{name}_random_s{seed}.pt"
        res = updp("prune", "--checkpoint", str(base), "--blocks", ",".join(map(str, pick)), *common, "--epochs",
                   str(prune_epochs), "--seed", str(seed), "--out", str(out), *cfg["prune"], *steps, log=log)
        accs["updp_random_pick"].append(res["final"]["acc"])

    onnx_base, onnx_pruned, onnx_drop = (work / f"{name}_{t}.onnx" for t in ("base", "updp", "drop"))
    exp_base = updp("export", spec, "--checkpoint", str(base), "--out", str(onnx_base), log=log)
    exp_pruned = updp("export", spec, "--checkpoint", str(work / f"{name}_updp_s0.pt"), "--out", str(onnx_pruned),
                      log=log)
    updp("export", spec, "--checkpoint", str(work / f"{name}_drop_s0.pt"), "--out", str(onnx_drop), log=log)
    ev_base = updp("eval", str(onnx_base), *common, log=log)
    ev_pruned = updp("eval", str(onnx_pruned), *common, log=log)
    bench = updp("bench", str(onnx_base), str(onnx_pruned), str(onnx_drop), "--threads", "2", "--repeats",
                 "200", "--warmup", "20", "--opt-level", "all", log=log)
    speed = {r["model"]: r["speedup"] for r in bench["results"] if r["opt_level"] == "all"}
    return {
        "model": spec, "blocks": cfg["blocks"], "k": k, "base_epochs": base_epochs, "prune_epochs": prune_epochs,
        "recipe": {"train": cfg["train"], "search": cfg["search"], "prune": cfg["prune"]},
        "baseline_val_acc": train["val_acc"], "search": {
            "blocks": blocks, "holdout_acc": search["holdout_acc"],
            "random_picks": search["random_picks"], "beats_random": search["beats_random"],
            "predicted_speedup": search["predicted_speedup"], "measured_speedup": search["measured_speedup"]},
        "val_acc": {m: {"values": v, "mean": mean_std(v)[0], "std": mean_std(v)[1]} for m, v in accs.items()},
        "random_pick_blocks": random_blocks,
        "onnx": {"base_acc": ev_base.get("acc"), "updp_s0_acc": ev_pruned.get("acc"),
                 "updp_s0_torch_acc": accs["updp"][0], "merge_max_abs_diff": exp_pruned["max_abs_diff"],
                 "nodes": [exp_base["nodes_after"], exp_pruned["nodes_after"]]},
        "latency": {"speedup_updp": speed.get(onnx_pruned.name), "speedup_drop": speed.get(onnx_drop.name),
                    "bench": bench},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--base-epochs", type=int, default=None,
                    help="baseline epochs (default per model: convnext_atto 10, deit_tiny_p4 30)")
    ap.add_argument("--supernet-epochs", type=int, default=2)
    ap.add_argument("--prune-epochs", type=int, default=None,
                    help="epochs of every prune run (default per model: convnext_atto 3, deit_tiny_p4 2)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="3 steps per epoch, 1 epoch each: mechanics only")
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench_progressive"))
    args = ap.parse_args()
    if args.smoke:
        args.base_epochs, args.supernet_epochs, args.prune_epochs, args.seeds = 1, 1, 1, 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    global CACHE
    CACHE = work / "cmd-cache"
    log: list = []
    t0 = time.perf_counter()
    results = {name: run_model(name, MODELS[name], args, work, log) for name in args.models}
    total = time.perf_counter() - t0
    print(f"\nmnist5k, val split; {args.supernet_epochs} supernet epochs, {args.seeds} seeds; "
          f"total {total / 60:.1f} min")
    for r in results.values():
        print(f"\n{r['model']}: {r['base_epochs']} baseline epochs, {r['prune_epochs']} prune epochs per method; "
              f"val acc {r['baseline_val_acc']:.4f}; pruned {r['k']}/{r['blocks']} blocks {r['search']['blocks']}")
        for m, v in r["val_acc"].items():
            values = ", ".join(f"{x:.4f}" for x in v["values"])
            print(f"  {m:<17} {100 * v['mean']:6.2f} ± {100 * v['std']:.2f}   ({values})")
        s = r["search"]
        print(f"  search pick holdout {s['holdout_acc']:.4f} vs random picks "
              f"{[round(p['acc'], 4) for p in s['random_picks']]}: beats all = {s['beats_random']}")
        print(f"  latency (ORT CPU, 2 threads, ENABLE_ALL): merged UPDP {r['latency']['speedup_updp']:.3f}x, "
              f"dropped {r['latency']['speedup_drop']:.3f}x vs baseline; predicted {s['predicted_speedup']}")
        o = r["onnx"]
        print(f"  ONNX eval: baseline {o['base_acc']}, UPDP s0 {o['updp_s0_acc']} (torch {o['updp_s0_torch_acc']}), "
              f"merge max abs diff {o['merge_max_abs_diff']}")
    stem = "progressive_ablation_smoke" if args.smoke else "progressive_ablation_" + "_".join(args.models)
    path = save_json(f"{stem}.json", {"config": vars(args), "minutes": total / 60, "results": results,
                                      "commands": log})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
