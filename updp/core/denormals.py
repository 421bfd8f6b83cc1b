"""Whether this thread's float math flushes denormals to zero, and a scope that keeps it exact.

x86 CPUs have two switches in their float control register, flush-to-zero (results below 1.2e-38
become 0 in float32) and denormals-are-zero (such inputs are read as 0); Arm has one. They are a
register of the calling thread, not a setting of one library: once PyTorch sets them for fast
training (`torch.set_flush_denormal`), numpy on that thread reads every float32 denormal as zero
too. A graph pass that folds constants in numpy then computes `x / 1e-39` with a divisor of 0,
and the file it writes differs from the one the same pass writes in a fresh process. So updp
turns the flush on only around its own torch compute and restores what it found
(`updp.training.device.fast_cpu_math`), and the ONNX passes run with it off (`exact_denormals`),
also in a user's process that left it on.

Standard library and numpy only: torch is used to clear the flush only when it is already loaded
(it is what sets the flush in every process updp knows of).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

import numpy as np

logger = logging.getLogger(__name__)

# Below float32's smallest normal value (1.18e-38) and above its smallest denormal (1.4e-45).
_DENORMAL_FLOAT32 = 1e-39


def denormals_flushed() -> bool:
    """Whether float32 denormals become zero on this thread (flush-to-zero or denormals-are-zero)."""
    # Creating the array rounds 1e-39 to float32 (flushed under flush-to-zero); the product reads
    # it back as an input (flushed under denormals-are-zero).
    tiny = np.full(1, _DENORMAL_FLOAT32, dtype=np.float32)
    return bool((tiny * np.float32(1.0))[0] == 0)


@contextlib.contextmanager
def exact_denormals() -> Iterator[None]:
    """Run the block with denormals computed exactly, then restore the mode found on entry.

    Where the flush is on and torch is not loaded (a C library set it), nothing can clear it
    portably: the block runs as it is, after one warning, and denormal constants read as zero.
    """
    if not denormals_flushed():
        yield
        return
    torch = sys.modules.get("torch")
    if torch is None:
        logger.warning("denormal floats are flushed to zero in this process (set by a native library): "
                       "constants below 1.2e-38 are read as 0 by the graph passes")
        yield
        return
    torch.set_flush_denormal(False)
    try:
        yield
    finally:
        torch.set_flush_denormal(True)
