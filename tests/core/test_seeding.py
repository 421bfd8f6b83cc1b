"""Seeds from integers, and RNG state that a weights_only checkpoint can hold."""

from __future__ import annotations

import io
import random

import numpy as np
import torch

from updp.core.seeding import mix_seed, rng_state, seed_everything, set_rng_state


def test_mix_seed_is_deterministic_and_separates_neighbours():
    assert mix_seed(0, 1, 2) == mix_seed(0, 1, 2)
    seeds = {mix_seed(s, e, i) for s in range(3) for e in range(3) for i in range(50)}
    assert len(seeds) == 3 * 3 * 50 and all(0 <= s < 2**63 for s in seeds)


def test_rng_state_round_trips_through_a_weights_only_load():
    seed_everything(7)
    buf = io.BytesIO()
    torch.save(rng_state(), buf)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    seed_everything(99)
    buf.seek(0)
    set_rng_state(torch.load(buf, weights_only=True))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
