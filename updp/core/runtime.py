"""Process-wide settings of the math runtimes that must be made before torch is imported.

PyTorch's CPU kernels run on GNU OpenMP (libgomp), whose idle threads spin-wait for the next
parallel region before they sleep (by default for about 300,000 spins; `OMP_WAIT_POLICY=PASSIVE`
sleeps at once). Which is faster depends on whether another process wants the cores. Measured on
2 cores (timm ConvNeXt-atto at 32×32, batch 128, fp32; `benchmarks/openmp_spin.py`, per-step
medians of one run):

* alone on the machine, libgomp's default is the fastest: 116 ms per training step and 36 ms
  per eval forward, against 180 / 63 ms with 3,000 spins and 224 / 72 ms passive (the sleep and
  wake-up between kernels is what costs);
* beside a second process training a 2-thread PyTorch model, passive waiting is the fastest:
  224 / 66 ms, against 264 / 78 ms with 3,000 spins, 305 / 96 ms with the default (whose eval
  p90 reached 1.3 s: spinning threads hold the cores the other process's threads wait for), and
  663 / 202 ms with 30,000 spins. An earlier machine saw epochs of 9 to 127 s there instead of 5.

So updp's command line looks before torch loads: if other processes kept the CPUs busy during a
short look (`OTHERS_BUSY_CPUS` of a CPU or more, over `PROBE_SECONDS`), its OpenMP threads wait
passively; otherwise libgomp's default stays. The look is made for the commands that train or
score with torch (`OPENMP_COMMANDS`), and never over the user's own choice (`GOMP_SPINCOUNT` or
`OMP_WAIT_POLICY` set). A neighbour that starts after the look is not seen. ONNX Runtime's own
thread pool does not spin in updp's sessions (see `updp.ort`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, MutableMapping

# The commands whose work is PyTorch compute on the CPU (training, supernet scoring).
OPENMP_COMMANDS = frozenset({"train", "search", "prune", "run", "demo"})
# How long the look at the other processes' CPU use lasts, and how much of a CPU they must use.
PROBE_SECONDS = 0.15
OTHERS_BUSY_CPUS = 0.5


def _busy_and_total_ticks() -> tuple[int, int]:
    """Busy and total clock ticks of all CPUs since boot (`/proc/stat`), steal time left out of both."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq = fields[:7]
    busy = user + nice + system + irq + softirq
    return busy, busy + idle + iowait


def _own_ticks() -> int:
    """This process's user + system clock ticks (`/proc/self/stat`)."""
    with open("/proc/self/stat") as f:
        after_name = f.read().rsplit(")", 1)[1].split()
    return int(after_name[11]) + int(after_name[12])  # utime, stime (fields 14 and 15)


def other_processes_cpus(seconds: float = PROBE_SECONDS) -> float | None:
    """CPUs' worth of time that processes other than this one used over `seconds` (None off Linux).

    E.g. 1.0 on a 2-CPU machine whose neighbour keeps one core busy; 0 on a quiet one.
    """
    try:
        busy0, total0 = _busy_and_total_ticks()
        own0 = _own_ticks()
        time.sleep(seconds)
        busy1, total1 = _busy_and_total_ticks()
        own1 = _own_ticks()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    if total <= 0:
        return None
    cpus = os.cpu_count() or 1
    return max(0.0, (busy1 - busy0) - (own1 - own0)) / total * cpus


def choose_openmp_waiting(environ: MutableMapping[str, str] = os.environ,
                          probe: Callable[[], float | None] = other_processes_cpus) -> str | None:
    """Make idle OpenMP threads wait passively when other processes keep the CPUs busy.

    Returns "passive" (set `OMP_WAIT_POLICY=PASSIVE`), "default" (libgomp's default kept: the
    machine looked quiet, or the look was not possible), or None when nothing could be chosen:
    the user set `GOMP_SPINCOUNT` or `OMP_WAIT_POLICY`, or torch is already loaded (libgomp reads
    its settings once, when torch loads it; after that a change reaches only child processes).
    """
    if "GOMP_SPINCOUNT" in environ or "OMP_WAIT_POLICY" in environ or "torch" in sys.modules:
        return None
    others = probe()
    if others is None or others < OTHERS_BUSY_CPUS:
        return "default"
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "passive"


def command_of(argv: list[str]) -> str | None:
    """The subcommand of a `updp` command line (its first word that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


__all__ = ["OPENMP_COMMANDS", "OTHERS_BUSY_CPUS", "PROBE_SECONDS", "choose_openmp_waiting", "command_of",
           "other_processes_cpus"]
