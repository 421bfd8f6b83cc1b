"""Seeds derived from integers, and RNG state that a `weights_only` checkpoint can hold.

Reproducibility rests on two habits: every random draw comes from a seed derived from what it
belongs to (run seed, epoch, sample index, step) with `mix_seed`, never from a global generator's
history; and the RNG state saved in a checkpoint is plain tensors and ints, which
`torch.load(weights_only=True)` accepts.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix-style), so nearby (seed, epoch, index) do not collide."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h ^= (int(p) + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2)) & 0xFFFFFFFFFFFFFFFF
        h = (h * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


def seed_everything(*parts: int) -> None:
    """Seed torch, numpy and python's global generators from `mix_seed(*parts)`."""
    s = mix_seed(*parts)
    torch.manual_seed(s)
    np.random.seed(s % (2**32))
    random.seed(s)


def rng_state() -> dict[str, Any]:
    """torch / numpy / python RNG states as tensors and ints (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_state[0]), "state": torch.tensor(py_state[1], dtype=torch.int64)},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), None))
