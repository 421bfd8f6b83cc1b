"""Where one training step of the demo's model goes: forward, backward, optimizer, and an eval forward.

The demo's remaining time is its training compute, so this splits one step of timm
`convnext_atto` (32×32, batch 128, float32, 10 classes) into its parts, timed with
`time.perf_counter` around each part (not `torch.profiler`, whose per-kernel times at this tensor
size are misleading). The model runs inside `updp.models.fast_compute` (channels-last and the
small-map rewrites) with fused AdamW, as updp's trainer runs it. Random inputs and weights: this
is about time, not accuracy. Reports the median and p90 of each part over the timed steps, with
threads, the torch version and the load average at the start. Check `uptime` first.

    .venv/bin/python benchmarks/step_parts.py                 # results: benchmarks/results/step_parts.json
    .venv/bin/python benchmarks/step_parts.py --steps 60 --warmup 10
"""

from __future__ import annotations

import argparse
import os
import time

import _common  # noqa: F401  first: it picks OpenMP's waiting before torch loads libgomp
import timm
import torch
from _common import median_p90_ms, save_json, setup_logging, torch_cpu_setup

from updp.models.fast_compute import fast_compute


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=40, help="timed training steps (and eval forwards)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--json", default="step_parts.json", help="result file name under benchmarks/results")
    args = ap.parse_args()
    setup_logging()
    load = os.getloadavg()[0]
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", num_classes=10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    criterion = torch.nn.CrossEntropyLoss()
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    parts: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": [], "eval_forward": []}
    with fast_compute(model):
        model.train()
        for i in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            loss = criterion(model(x), y)
            t1 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            t2 = time.perf_counter()
            optimizer.step()
            t3 = time.perf_counter()
            if i >= args.warmup:
                parts["forward"].append(t1 - t0)
                parts["backward"].append(t2 - t1)
                parts["optimizer"].append(t3 - t2)
        model.eval()
        with torch.no_grad():
            for i in range(args.warmup + args.steps):
                t0 = time.perf_counter()
                model(x)
                if i >= args.warmup:
                    parts["eval_forward"].append(time.perf_counter() - t0)
    result = {name: median_p90_ms(times) for name, times in parts.items()}
    for name, s in result.items():
        print(f"{name:13s} median {s['median_ms']:7.1f} ms   p90 {s['p90_ms']:7.1f} ms   (n = {s['n']})")
    train = sum(result[p]["median_ms"] for p in ("forward", "backward", "optimizer"))
    print(f"optimizer share of a training step (medians): {result['optimizer']['median_ms'] / train:.1%}")
    path = save_json(args.json, {
        "parts": result, "batch": args.batch, "input": [3, 32, 32], "model": "timm:convnext_atto",
        **torch_cpu_setup(load),
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
