"""What a training step costs in updp, against a plain PyTorch loop and against a fixed λ.

Variants, all on the same model, batch, data and optimizer settings (AdamW, label smoothing 0.1),
interleaved round-robin in one run (the order rotates every round), timing `--steps` steps each:

    plain         a plain PyTorch loop: DataLoader, forward, cross-entropy, backward, AdamW step
    updp_train    updp's `Trainer` (what `updp train` runs), the loop time it records itself
    lam_fixed_0   `Trainer` on the model with P blocks in their pruned form at λ = 0 (baseline ops)
    lam_fixed_1   the same at λ = 1 (the linear form)
    progressive   the same with the λ schedule on (λ ramps 0 → 1 over the steps: blending
                  computes both branches of every blend, plus `set_lam` before each step)
    progressive_fixed  the same blends at a fixed λ = 0.5 (the ops of blending without the schedule)

Reports per variant the median and p90 of the per-step time over the rounds and steps per second,
then the ratios, taken per round (median and quartiles over the rounds): `updp_train` vs `plain`
steps per second, `progressive` vs `progressive_fixed` (the schedule's own cost) and vs
`lam_fixed_0` (the cost of computing both branches of every blend).
Records threads and the torch version. Check `uptime` first; never compare figures across runs.

    .venv/bin/python benchmarks/training_cost.py                  # convnext_atto, mnist5k, batch 128
    .venv/bin/python benchmarks/training_cost.py --rounds 15 --steps 20
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time

import _common  # noqa: F401  first: it picks OpenMP's waiting before torch loads libgomp
import torch
from _common import save_json, setup_logging
from torch import nn

from updp.blocks.convert import apply_pruning, set_lam
from updp.data import get_datasets
from updp.models import create_for_data
from updp.training.device import fast_cpu_math
from updp.training.lambda_schedule import LambdaSchedule
from updp.training.trainer import Trainer, TrainerConfig

RECIPE = {"lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 0.0, "label_smoothing": 0.1}


def plain_loop(model: nn.Module, data, batch: int, steps: int, seed: int) -> float:
    """Seconds for `steps` steps of the textbook loop (the first batch's loader start included, as in
    the Trainer's own measurement)."""
    loader = torch.utils.data.DataLoader(data.train, batch_size=batch, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.AdamW(model.parameters(), lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"])
    loss_fn = nn.CrossEntropyLoss(label_smoothing=RECIPE["label_smoothing"])
    model.train()
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if i >= steps:
            break
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def trainer_loop(model: nn.Module, data, batch: int, steps: int, seed: int, before_step=None) -> float:
    cfg = TrainerConfig(epochs=1, batch_size=batch, seed=seed, progress=False, max_steps_per_epoch=steps,
                        device="cpu", **RECIPE)
    res = Trainer(model, data, cfg, before_step=before_step).fit()
    return res.history[0]["train_seconds"]


@fast_cpu_math()  # as updp's training runs: denormals flushed, torch's thread pool started inside
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="timm:convnext_atto")
    ap.add_argument("--data", default="mnist5k")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--blocks", default="1,3,5,7", help="pruned blocks of the λ variants")
    ap.add_argument("--json", default="training_cost.json", help="file name under benchmarks/results/")
    args = ap.parse_args()
    setup_logging()
    data = get_datasets(args.data, 32)
    base, _ = create_for_data(args.model, num_classes=data.num_classes, input_chw=(3, 32, 32), seed=0)
    blocks = [int(b) for b in args.blocks.split(",")]

    def pruned(lam: float) -> nn.Module:
        m = copy.deepcopy(base)
        apply_pruning(m, blocks, lam=lam)
        return m

    schedule = LambdaSchedule(kind="linear", ramp_fraction=1.0, steps=args.steps + 1)
    variants = {
        "plain": lambda s: plain_loop(copy.deepcopy(base), data, args.batch, args.steps, s),
        "updp_train": lambda s: trainer_loop(copy.deepcopy(base), data, args.batch, args.steps, s),
        "lam_fixed_0": lambda s: trainer_loop(pruned(0.0), data, args.batch, args.steps, s),
        "lam_fixed_1": lambda s: trainer_loop(pruned(1.0), data, args.batch, args.steps, s),
        "progressive_fixed": lambda s: trainer_loop(pruned(0.5), data, args.batch, args.steps, s),
        # λ from 1/(steps+1) upwards: every step blends (λ = 0 would take the baseline-only path)
        "progressive": lambda s: trainer_loop(pruned(0.0), data, args.batch, args.steps, s,
                                              before_step=lambda m, step, p: set_lam(m, schedule(step + 1))),
    }
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for n in names:  # warm-up round, not recorded
        variants[n](0)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            times[n].append(variants[n](r) / args.steps)
    rows = {}
    for n in names:
        ts = sorted(times[n])
        rows[n] = {"median_ms": 1e3 * statistics.median(ts), "p90_ms": 1e3 * ts[int(0.9 * (len(ts) - 1))],
                   "steps_per_s": 1.0 / statistics.median(ts)}
    # This machine's speed flips between states within seconds (its neighbours): the medians above
    # can land in different states, so the ratios are taken per round (the variants of one round
    # ran back to back) and their median and quartiles reported.
    def per_round(a: str, b: str) -> dict:
        rs = sorted(x / y for x, y in zip(times[a], times[b]))
        return {"median": statistics.median(rs), "q1": rs[len(rs) // 4], "q3": rs[(3 * len(rs)) // 4]}

    ratios = {
        "updp_train_steps_per_s_vs_plain": per_round("plain", "updp_train"),  # time ratio = steps/s ratio
        "progressive_overhead_vs_progressive_fixed": {k: v - 1 for k, v in
                                                      per_round("progressive", "progressive_fixed").items()},
        "blending_cost_vs_lam_fixed_0": {k: v - 1 for k, v in per_round("progressive", "lam_fixed_0").items()},
        "lam_fixed_1_time_vs_lam_fixed_0": per_round("lam_fixed_1", "lam_fixed_0"),
    }
    setup = {"model": args.model, "data": args.data, "batch": args.batch, "steps": args.steps, "rounds": args.rounds,
             "blocks": blocks, "torch": torch.__version__, "threads": torch.get_num_threads(),
             "cpus": os.cpu_count(), "machine": platform.platform(), "load": os.getloadavg(),
             "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    print(f"# {setup}")
    print(f"{'variant':<18} {'median ms/step':>14} {'p90':>8} {'steps/s':>8}")
    for n, row in rows.items():
        print(f"{n:<18} {row['median_ms']:>14.1f} {row['p90_ms']:>8.1f} {row['steps_per_s']:>8.2f}")
    print("per-round ratios, median [quartiles]:")
    for k, v in ratios.items():
        sign = "+" if "overhead" in k or "cost" in k else ""
        print(f"  {k}: {v['median']:{sign}.3f} [{v['q1']:{sign}.3f}, {v['q3']:{sign}.3f}]")
    path = save_json(args.json, {"setup": setup, "rows": rows, "ratios": ratios, "samples_s": times})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
