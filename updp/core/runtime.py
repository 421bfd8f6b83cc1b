"""Process-wide settings of the math runtimes that must be made before torch is imported.

PyTorch's CPU kernels run on GNU OpenMP (libgomp), whose idle threads spin-wait for the next
parallel region, by default for about 300,000 spins, before they sleep. On a machine whose cores
are shared with another busy process (a neighbour's job, a second updp command, a test run),
a spinning thread holds a core that the thread it waits for needs: measured here (2 cores,
ConvNeXt-atto at 32×32, one training epoch of 28 steps, fp32) beside a second 2-thread torch
process, the epoch took 9 to 127 s with the default spin count, 6.5-7.4 s with 3,000 spins and
5.0 s with passive waiting (no spinning); on the quiet machine 2.3 s with the default, 2.3 s with
3,000 spins and 3.1 s passive. 3,000 spins costs nothing on a quiet machine and removes most
of the loss on a shared one, so updp's command line starts with it unless the user has chosen
(`GOMP_SPINCOUNT` or `OMP_WAIT_POLICY` set). ONNX Runtime's own thread pool does not spin in
updp's sessions (see `updp.ort`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

# Spins of an idle OpenMP thread before it sleeps (libgomp's default is 300,000).
OPENMP_SPINCOUNT = 3000


def limit_openmp_spinning(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Set `GOMP_SPINCOUNT` to `OPENMP_SPINCOUNT` unless the user chose a waiting policy.

    libgomp reads it once, when torch loads it: after `import torch` it would not take effect
    in this process (only in its children), so then nothing is changed. Returns whether it was set.
    """
    if "GOMP_SPINCOUNT" in environ or "OMP_WAIT_POLICY" in environ or "torch" in sys.modules:
        return False
    environ["GOMP_SPINCOUNT"] = str(OPENMP_SPINCOUNT)
    return True


__all__ = ["OPENMP_SPINCOUNT", "limit_openmp_spinning"]
