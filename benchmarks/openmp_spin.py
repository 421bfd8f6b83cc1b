"""How long idle OpenMP threads should spin: PyTorch CPU training and scoring under libgomp policies.

PyTorch's CPU kernels run on libgomp, whose idle threads spin-wait for the next parallel region
before they sleep (`GOMP_SPINCOUNT`, default 300,000 spins; `OMP_WAIT_POLICY=PASSIVE` sleeps at
once). Spinning short costs a sleep and a wake-up between kernels; spinning long holds a core
that a neighbour process may need. Which is cheaper depends on the CPU (a spin is one `pause`
instruction, whose latency differs between CPU generations by 10x), on the kernel's futex
wake-up latency, and on whether another process wants the cores.

Each cell runs a fresh worker process (libgomp reads its policy once, at load) that times
`--steps` ConvNeXt-atto training steps at 32×32, batch 128 (fp32, the form updp trains in:
`updp.models.fast_compute`), and `--steps` eval-mode forwards of the same batch (what a search
scores with). Scenarios: `quiet`, and `neighbour` (a second process training a 2-thread
PyTorch MLP with libgomp's default policy runs beside the worker). Policies, scenarios and the
order of the policies rotate every round, so that drift in the machine's speed spreads over all.
Reports the median and p90 of the per-step times per cell, and per round the ratio to the
`default` policy.

    .venv/bin/python benchmarks/openmp_spin.py                  # 4 rounds, 15 steps per cell
    .venv/bin/python benchmarks/openmp_spin.py --rounds 6 --policies default spin3000 spin30000

Check `uptime` first (nothing else running); never compare figures across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]

# name -> the environment it sets (every policy starts from an environment with neither variable)
POLICIES = {
    "default": {},
    "spin3000": {"GOMP_SPINCOUNT": "3000"},
    "spin30000": {"GOMP_SPINCOUNT": "30000"},
    "spin100000": {"GOMP_SPINCOUNT": "100000"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
}

NEIGHBOUR = """
import torch
torch.set_num_threads(2)
net = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 10))
opt = torch.optim.SGD(net.parameters(), lr=1e-3)
x, y = torch.randn(256, 512), torch.randint(0, 10, (256,))
print("ready", flush=True)
while True:
    loss = torch.nn.functional.cross_entropy(net(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
"""


def worker(steps: int) -> dict:
    """Time `steps` training steps and `steps` eval forwards (after 3 warm-up steps each)."""
    import timm
    import torch

    from updp.models.fast_compute import fast_compute
    from updp.training.device import fast_cpu_math

    # Entered before the model exists, so that torch's thread pool starts with the flush on.
    with fast_cpu_math():
        torch.manual_seed(0)
        model = timm.create_model("convnext_atto", num_classes=10)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, fused=True)
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
        x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
        train_s, eval_s = [], []
        with fast_compute(model):
            model.train()
            for i in range(3 + steps):
                t0 = time.perf_counter()
                loss = loss_fn(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if i >= 3:
                    train_s.append(time.perf_counter() - t0)
            model.eval()
            with torch.no_grad():
                for i in range(3 + steps):
                    t0 = time.perf_counter()
                    model(x)
                    if i >= 3:
                        eval_s.append(time.perf_counter() - t0)
    return {"train_s": train_s, "eval_s": eval_s, "threads": torch.get_num_threads(), "torch": torch.__version__}


def clean_env(policy: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(POLICIES[policy])
    env["PYTHONPATH"] = str(ROOT)
    return env


def run_cell(policy: str, scenario: str, steps: int) -> dict:
    neighbour = None
    if scenario == "neighbour":
        neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR], env=clean_env("default"),
                                     stdout=subprocess.PIPE, text=True)
        neighbour.stdout.readline()  # torch loaded, its loop starting
        time.sleep(1.0)
    try:
        proc = subprocess.run([sys.executable, str(HERE), "--worker", "--steps", str(steps)],
                              env=clean_env(policy), capture_output=True, text=True, check=False)
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()
    if proc.returncode != 0:
        raise SystemExit(f"worker ({policy}, {scenario}) failed: {proc.stderr.strip()[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    ap.add_argument("--scenarios", nargs="+", default=["quiet", "neighbour"], choices=["quiet", "neighbour"])
    ap.add_argument("--json", default="openmp_spin.json", help="file name under benchmarks/results/")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.steps)))
        return

    cells: dict[str, dict[str, list]] = {}
    per_round: list[dict] = []
    load = []
    for r in range(args.rounds):
        k = r % len(args.policies)
        order = args.policies[k:] + args.policies[:k]
        for scenario in (args.scenarios if r % 2 == 0 else args.scenarios[::-1]):
            medians = {}
            for policy in order:
                load.append(os.getloadavg()[0])
                res = run_cell(policy, scenario, args.steps)
                cell = cells.setdefault(f"{scenario}/{policy}", {"train_s": [], "eval_s": []})
                cell["train_s"] += res["train_s"]
                cell["eval_s"] += res["eval_s"]
                medians[policy] = {"train": statistics.median(res["train_s"]), "eval": statistics.median(res["eval_s"])}
                print(f"round {r + 1} {scenario:9s} {policy:10s} train {medians[policy]['train'] * 1e3:7.1f} ms "
                      f"eval {medians[policy]['eval'] * 1e3:6.1f} ms", flush=True)
            per_round.append({"round": r, "scenario": scenario, "medians": medians})

    summary = {}
    for key, cell in cells.items():
        scenario, policy = key.split("/")
        ratios = {what: [p["medians"][policy][what] / p["medians"]["default"][what] for p in per_round
                         if p["scenario"] == scenario and "default" in p["medians"]]
                  for what in ("train", "eval")}
        summary[key] = {f"{what}_{stat}_ms": round(f(cell[f"{what}_s"]) * 1e3, 2)
                        for what in ("train", "eval")
                        for stat, f in (("median", statistics.median), ("p90", lambda xs: quantile(xs, 0.9)))}
        for what, rs in ratios.items():
            if rs:
                summary[key][f"{what}_vs_default_median"] = round(statistics.median(rs), 3)
    print(f"\n{'cell':28s} {'train median':>12s} {'p90':>8s} {'vs default':>10s} {'eval median':>12s} {'p90':>8s} "
          f"{'vs default':>10s}")
    for key, s in summary.items():
        print(f"{key:28s} {s['train_median_ms']:10.1f}ms {s['train_p90_ms']:6.1f}ms "
              f"{s.get('train_vs_default_median', float('nan')):10.3f} {s['eval_median_ms']:10.1f}ms "
              f"{s['eval_p90_ms']:6.1f}ms {s.get('eval_vs_default_median', float('nan')):10.3f}")

    import torch  # only for the record of the setup (the workers ran their own)
    from _common import save_json  # not at the top: it would set the workers' policy as they start

    from updp.latency.runner import cpu_model

    payload = {"setup": {"cpu": cpu_model(), "cpus": os.cpu_count(), "torch": torch.__version__,
                         "threads": torch.get_num_threads(), "machine": platform.platform(),
                         "rounds": args.rounds, "steps": args.steps, "model": "timm convnext_atto 32x32 batch 128 fp32",
                         "load_avg_during": [round(x, 2) for x in load], "neighbour": "2-thread torch MLP, default"},
               "policies": {p: POLICIES[p] for p in args.policies}, "summary": summary, "per_round": per_round}
    print(f"\nwritten {save_json(args.json, payload)}")


if __name__ == "__main__":
    main()
