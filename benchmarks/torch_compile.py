"""Would `torch.compile` make the demo's training faster? Compile time and step time against eager.

The demo's remaining time is its training compute: timm `convnext_atto` at 32×32, batch 128,
float32, fused AdamW, about 500 training steps over three model forms (baseline, supernet,
progressive). TorchInductor fuses the elementwise work (LayerNorm, GELU, the residual adds) into
generated C++ kernels, which could help at this small tensor size, but each model form is a new
graph and compiles once per process. This measures both sides in one process:

* `eager`: the model as updp's trainer runs it (`updp.models.fast_compute`: channels-last and the
  exact small-map rewrites);
* `compiled`: the same model, channels-last, through `torch.compile` (inductor, default mode,
  static shapes);
* `compiled_small_maps`: the same, with the small-map rewrites traced into the graph.

Each variant has its own model copy and optimizer (the same initial weights); the first step of
a compiled variant includes its compile and is reported on its own; inductor's cache is a fresh
temporary folder, so that the compile costs what it costs a new user's first run. The timed steps
then rotate between the variants, so a change of the machine's load falls on all of them. Reports
the median and p90 of the timed steps, threads, the torch version and the load average. Check
`uptime` first.

    .venv/bin/python benchmarks/torch_compile.py              # results: benchmarks/results/torch_compile.json
    .venv/bin/python benchmarks/torch_compile.py --rounds 20 --steps 5
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import copy
import os
import shutil
import tempfile
import time

INDUCTOR_CACHE = tempfile.mkdtemp(prefix="updp_inductor_")
atexit.register(shutil.rmtree, INDUCTOR_CACHE, True)
os.environ["TORCHINDUCTOR_CACHE_DIR"] = INDUCTOR_CACHE  # read when torch loads: a cold cache

import _common  # noqa: E402,F401  first: it picks OpenMP's waiting before torch loads libgomp
import timm  # noqa: E402
import torch  # noqa: E402
from _common import median_p90_ms, save_json, setup_logging, torch_cpu_setup  # noqa: E402

from updp.models.small_maps import small_map_convolutions  # noqa: E402


class Variant:
    """One way to run the model: its own channels-last copy, optimizer and (compiled) callable.

    The small-map rewrites are a `TorchFunctionMode`, which is global to the process, so it is
    entered around this variant's own steps only, never held across the rotation.
    """

    def __init__(self, name: str, base: torch.nn.Module, compiled: bool, small_maps: bool):
        self.name = name
        self.model = copy.deepcopy(base).to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3, fused=True)
        self.small_maps = small_maps
        self.model.train()
        self.run = torch.compile(self.model, dynamic=False) if compiled else self.model
        self.first_step_s: float | None = None
        self.error: str | None = None
        self.times: list[float] = []

    def step(self, x: torch.Tensor, y: torch.Tensor, criterion) -> float:
        t0 = time.perf_counter()
        with small_map_convolutions(self.model) if self.small_maps else contextlib.nullcontext():
            loss = criterion(self.run(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=12, help="rounds of the rotation")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant per round")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per variant after its first")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--json", default="torch_compile.json", help="result file name under benchmarks/results")
    args = ap.parse_args()
    setup_logging()
    load = os.getloadavg()[0]
    torch.manual_seed(0)
    base = timm.create_model("convnext_atto", num_classes=10)
    criterion = torch.nn.CrossEntropyLoss()
    x = torch.randn(args.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,))
    variants = [
        Variant("eager", base, compiled=False, small_maps=True),
        Variant("compiled", base, compiled=True, small_maps=False),
        Variant("compiled_small_maps", base, compiled=True, small_maps=True),
    ]
    for v in variants:
        try:
            v.first_step_s = v.step(x, y, criterion)
            for _ in range(args.warmup):
                v.step(x, y, criterion)
        except Exception as exc:  # a variant that cannot compile is a result, reported as such
            v.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        failed = f"  FAILED {v.error}" if v.error else ""
        print(f"{v.name:22s} first step {v.first_step_s or float('nan'):6.1f} s{failed}")
    live = [v for v in variants if v.error is None]
    for r in range(args.rounds):
        order = live[r % len(live):] + live[:r % len(live)]
        for v in order:
            for _ in range(args.steps):
                v.times.append(v.step(x, y, criterion))
    results = {}
    for v in variants:
        entry = {"first_step_s": v.first_step_s, "error": v.error}
        if v.times:
            entry.update(median_p90_ms(v.times))
            print(f"{v.name:22s} median {entry['median_ms']:7.1f} ms   p90 {entry['p90_ms']:7.1f} ms"
                  f"   (n = {entry['n']})")
        results[v.name] = entry
    path = save_json(args.json, {
        "variants": results, "batch": args.batch, "input": [3, 32, 32], "model": "timm:convnext_atto",
        "rounds": args.rounds, "steps_per_round": args.steps, "inductor_cache": "fresh temporary folder",
        **torch_cpu_setup(load),
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
