"""The fastest form a model computes in while updp trains, scores and evaluates it.

Two rewrites, both the same math up to float rounding and both undone (or never stored) when the
block ends, so that checkpoints, exports and user code see the model as it was:
channels-last for models with 2-D convolutions (`updp.models.memory_format`), and the matrix form
of convolutions on small maps (`updp.models.small_maps`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from updp.models.memory_format import fast_memory_format
from updp.models.small_maps import small_map_convolutions


@contextmanager
def fast_compute(*models: nn.Module | None) -> Iterator[None]:
    """Run the block with `models` (None: skipped) in their fastest form; blocks nest."""
    with fast_memory_format(*models), small_map_convolutions(*models):
        yield


__all__ = ["fast_compute"]
