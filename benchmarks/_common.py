"""Shared helpers for the benchmark scripts (not part of the package, not run in CI)."""

from __future__ import annotations

import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

from updp.core.runtime import choose_openmp_waiting  # noqa: E402

choose_openmp_waiting()  # before a benchmark imports torch, as updp's command line does


def setup_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def save_json(name: str, payload: dict) -> Path:
    from updp.core.io import write_text_atomic

    path = RESULTS / name
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str))
    return path


def run_updp(*args: str, cwd: Path = ROOT) -> float:
    """Run `python -m updp ARGS` in `cwd` (a tree's own `updp` package comes first on its path) with
    this interpreter; return its wall seconds, or stop with its exit status and stderr's tail."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "updp", *args], cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"updp {' '.join(args)} in {cwd} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return seconds


def median_p90_ms(seconds: list[float]) -> dict:
    """Median and p90 (numpy's linear interpolation) of timings in seconds, in milliseconds."""
    import numpy as np

    ms = np.asarray(seconds) * 1000.0
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)), "n": int(ms.size)}


def torch_cpu_setup(load_average_at_start: float) -> dict:
    """What a CPU timing of torch ran under: threads, torch, the CPU, the load and OpenMP's waiting."""
    import os
    import platform

    import torch

    return {"threads": torch.get_num_threads(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "load_average_at_start": load_average_at_start,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "gomp_spincount": os.environ.get("GOMP_SPINCOUNT")}


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def paired(diffs: list[float]) -> dict:
    """Mean ± std of paired differences and the two-sided paired t-test p (None when undefined)."""
    from scipy import stats

    m, s = mean_std(diffs)
    p = None
    if len(diffs) > 1 and s > 0:
        p = float(stats.ttest_1samp(diffs, 0.0).pvalue)
    return {"mean": m, "std": s, "n": len(diffs), "p": p}
