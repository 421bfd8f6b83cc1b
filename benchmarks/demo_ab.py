"""`updp demo` before/after: two or more source trees timed interleaved on one machine.

Each tree is a checkout of updp (e.g. `git worktree add /tmp/before <commit>`); every run is
`python -m updp demo` started in that tree with this repo's `.venv` (a tree's own `updp` package
comes first on `sys.path`), into a fresh run directory, so that every stage runs. Rounds run the
trees in rotating order. Reported per run: the seconds of the baseline, search and prune stages,
the rest, the pipeline and the wall time, the load average before it, the accuracy before → after
and the blocks the search picked; then the mean wall time per tree and the ratios to the first.
The machine's speed moves with its neighbours' load: check `uptime` first, run nothing else, and
compare figures within one run only.

    git worktree add /tmp/before cde09e5
    .venv/bin/python benchmarks/demo_ab.py before=/tmp/before after=. --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
from pathlib import Path

from _common import ROOT, run_updp, save_json

from updp.latency.runner import cpu_model

TRAINING = ("baseline", "search", "prune")


def run_demo(tree: Path, out: Path) -> dict:
    if out.exists():
        shutil.rmtree(out)
    load = os.getloadavg()[0]
    wall = run_updp("demo", "--out-dir", str(out), cwd=tree)
    res = json.loads((out / "results.json").read_text())
    stages = {k: v["seconds_stage"] for k, v in res["stages"].items()}
    head = res["headline"]
    return {"wall": wall, "load_before": load, "stages": stages, "pipeline": sum(stages.values()),
            "rest": sum(v for k, v in stages.items() if k not in TRAINING), "baseline_acc": head["baseline_acc"],
            "pruned_acc": head["pruned_acc"], "blocks": head["pruned_blocks"], "speedup_all": head["speedup_all"]}


def cpu_summary() -> dict:
    """The CPU's model name and the vector extensions that decide this workload's speed."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    return {"model": cpu_model(), "extensions": sorted(set(flags) & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trees", nargs="+", help="NAME=PATH of each source tree (the first is the reference)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work", default=str(ROOT / "runs" / "demo_ab"))
    ap.add_argument("--json", default="demo_ab.json", help="file name under benchmarks/results/")
    args = ap.parse_args()
    trees = {}
    for spec in args.trees:
        name, sep, path = spec.partition("=")
        if not sep or not (Path(path) / "updp" / "__init__.py").is_file():
            raise SystemExit(f"{spec!r}: expected NAME=PATH of an updp source tree")
        trees[name] = Path(path).resolve()
    names = list(trees)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            rec = run_demo(trees[name], Path(args.work) / f"{name}_r{r}")
            runs[name].append(rec)
            s = rec["stages"]
            print(f"round {r} {name:<8} baseline {s['baseline']:6.1f}  search {s['search']:6.1f}  prune "
                  f"{s['prune']:6.1f}  rest {rec['rest']:5.1f}  pipeline {rec['pipeline']:6.1f}  wall "
                  f"{rec['wall']:6.1f} s  (load {rec['load_before']:.2f})  {100 * rec['baseline_acc']:.2f} -> "
                  f"{100 * rec['pruned_acc']:.2f} %  {rec['blocks']}  {rec['speedup_all']:.3f}x", flush=True)
    mean_wall = {n: statistics.fmean(r["wall"] for r in runs[n]) for n in names}
    ref = names[0]
    for n in names:
        print(f"{n:<8} mean wall {mean_wall[n]:6.1f} s   {mean_wall[ref] / mean_wall[n]:.2f}x vs {ref}")
    setup = {"trees": {n: str(p) for n, p in trees.items()}, "rounds": args.rounds, "cpus": os.cpu_count(),
             "machine": platform.platform(), "cpu": cpu_summary(), "python": sys.executable}
    print(f"wrote {save_json(args.json, {'setup': setup, 'runs': runs, 'mean_wall': mean_wall})}")


if __name__ == "__main__":
    main()
