"""The one equivalence check: does an optimized ONNX model compute what the reference computes?

The reference runs in ONNX Runtime with graph optimizations OFF, so ORT's own fusions cannot hide
or cause a difference. Both models get the same non-trivial random inputs (several seeds). The
criterion is explicit and scale-aware:

    max|out - ref| <= atol + rtol * max|ref|         (per output, fp32)

with `rtol = 1e-4`, `atol = 1e-6` by default. A merge reassociates float sums, so its error grows
with the magnitude of the values; measuring it against the output's scale is what makes one
tolerance meaningful for a logit vector of size 1e-2 and one of size 1e2. The defaults are fixed
here and never loosened per call site to make a check pass.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from updp.core.errors import VerificationError
from updp.ort import make_session, random_inputs

logger = logging.getLogger(__name__)

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-6


@dataclass
class EquivalenceReport:
    """What was compared and how close it was."""

    max_abs_diff: float
    max_abs_ref: float
    rel_diff: float  # max_abs_diff / max_abs_ref
    rtol: float
    atol: float
    trials: int
    passed: bool
    per_output: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def compare_outputs(ref: list[np.ndarray], out: list[np.ndarray], names: list[str],
                    rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL) -> EquivalenceReport:
    """Compare two lists of output arrays with the module's criterion."""
    if len(ref) != len(out):
        raise VerificationError(f"output count differs: reference {len(ref)}, optimized {len(out)}")
    max_diff, max_ref, ok, per = 0.0, 0.0, True, {}
    for name, r, o in zip(names, ref, out):
        if r.shape != o.shape:
            raise VerificationError(f"output {name!r} shape differs: reference {r.shape}, optimized {o.shape}")
        r64, o64 = r.astype(np.float64), o.astype(np.float64)
        if not np.all(np.isfinite(o64)) and np.all(np.isfinite(r64)):
            ok = False
        d = float(np.max(np.abs(r64 - o64))) if r.size else 0.0
        m = float(np.max(np.abs(r64))) if r.size else 0.0
        per[name] = d
        ok = ok and d <= atol + rtol * m
        max_diff, max_ref = max(max_diff, d), max(max_ref, m)
    rel = max_diff / max_ref if max_ref > 0 else max_diff
    return EquivalenceReport(max_diff, max_ref, rel, rtol, atol, 1, ok, per)


def check_equivalence(reference: onnx.ModelProto, candidate: onnx.ModelProto, *, trials: int = 3,
                      batch: int = 1, rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL,
                      feeds: list[dict[str, np.ndarray]] | None = None,
                      raise_on_failure: bool = True) -> EquivalenceReport:
    """Run both models in ORT on the same inputs and compare every output.

    Args:
        reference: the model before optimization; run with ORT graph optimizations disabled.
        candidate: the optimized model; also run with optimizations disabled so that only our
            rewrites are being checked.
        trials: number of random input draws (seeds 0..trials-1) when `feeds` is not given.
        feeds: explicit input dicts (e.g. impulse probes) instead of random draws.
        raise_on_failure: raise `VerificationError` on a miss (the default), else just report.
    """
    ref_sess = make_session(reference, opt_level="disable", threads=1)
    cand_sess = make_session(candidate, opt_level="disable", threads=1)
    names = [o.name for o in ref_sess.get_outputs()]
    cand_names = [o.name for o in cand_sess.get_outputs()]
    if names != cand_names:
        raise VerificationError(f"output names differ: reference {names}, optimized {cand_names}")
    if feeds is None:
        feeds = [random_inputs(ref_sess, batch=batch, seed=s) for s in range(trials)]
    worst: EquivalenceReport | None = None
    all_passed = True
    for f in feeds:
        rep = compare_outputs(ref_sess.run(None, f), cand_sess.run(None, f), names, rtol, atol)
        all_passed = all_passed and rep.passed
        if worst is None or rep.rel_diff > worst.rel_diff:
            worst = rep
    if worst is None:
        raise VerificationError("no inputs to compare with")
    worst.trials = len(feeds)
    worst.passed = all_passed
    logger.info("equivalence: max_abs_diff=%.3g (rel %.3g) over %d trials: %s", worst.max_abs_diff,
                worst.rel_diff, worst.trials, "ok" if worst.passed else "FAILED")
    if raise_on_failure and not worst.passed:
        raise VerificationError(
            f"optimized model differs from the reference: max abs diff {worst.max_abs_diff:.3g} "
            f"(relative {worst.rel_diff:.3g}) exceeds atol {atol:g} + rtol {rtol:g} x max|ref| "
            f"{worst.max_abs_ref:.3g}; no output was written")
    return worst
