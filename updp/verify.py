"""The one equivalence check: does an optimized ONNX model compute what the reference computes?

Both models run in ONNX Runtime with graph optimizations OFF, so ORT's own fusions can neither
hide nor cause a difference (or both in onnx's reference evaluator, the pure-Python implementation
of the spec, when ORT cannot run the original: an opset or IR version newer than it supports, an
op it lacks), on the same inputs: the user's, or generated ones that are valid for
the graph (`updp.feeds`). Every output is compared, element by element, by its type:

* **floating point**: NaN and ±Inf must sit at the same positions with the same values (a NaN on
  one side only is a difference); elsewhere the criterion is explicit and scale-aware,

      max|out - ref| <= atol + rtol * max|ref|

  with `rtol` and `atol` fixed per dtype (`TOLERANCES`). A merge reassociates float sums, so its
  error grows with the magnitude of the values; measuring it against the output's scale is what
  makes one tolerance meaningful for logits of size 1e-2 and of size 1e2. The values are fixed
  here and never loosened per call site to make a check pass.
* **integers, bools, strings**: exactly equal (the passes never touch them).
* **sequences, optionals, maps**: the same length (presence, keys), then each element as above.

Why these tolerances. float32, 1e-4: measured merges of the zoo families stay below 1e-5 of
max|ref| (up to 6e-6 for a MobileNetV2 block merged into one dense 3×3). float16, 1e-2: the same
merges run in float16 differ by 0.8–3.4e-3 of max|ref| (ConvNeXt, DeiT, MobileNetV2 blocks; the
outputs themselves are rounded to 2^-11 relative), so 1e-2 is about three times the worst seen
and about 20 half-units of float16 precision at the output's scale. bfloat16 has 3 mantissa bits
fewer than float16 (8× coarser): 6e-2, the same margin in its units. float64, 1e-9: merges computed
in float64 are exact to about 1e-15; the bound only leaves room for long reductions. A check at a
lower precision is correspondingly coarser: a float16 check catches a wrong merge (an error of
the order of the output), not an error below float16's own noise.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from updp.core.errors import UnsupportedError, VerificationError, first_line
from updp.feeds import generate_feeds
from updp.ort import make_session, read_onnx, subgraphs

logger = logging.getLogger(__name__)

# dtype name -> (rtol, atol); see the module docstring for the reasoning.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-4, 1e-6),
    "float16": (1e-2, 1e-4),
    "bfloat16": (6e-2, 6e-4),
    "float64": (1e-9, 1e-11),
}
DEFAULT_RTOL, DEFAULT_ATOL = TOLERANCES["float32"]


@dataclass
class EquivalenceReport:
    """What was compared and how close it was.

    Attributes:
        max_abs_diff: the largest difference over the finite values of every float output.
        max_abs_ref: the largest |reference| value at those positions.
        rel_diff: max_abs_diff / max_abs_ref.
        trials: input sets compared.
        passed: every output of every trial within its tolerance.
        per_output: the largest difference per output.
        failures: one line per output that differs, saying how (a tolerance miss, NaNs at other
            positions, integers that differ, a shape, a length).
        tolerances: {output: [rtol, atol]} used.
        runtime: what ran both models ("onnxruntime", or "onnx reference evaluator" for a model
            ONNX Runtime cannot run).
        random_outputs: outputs that differ between two runs of the reference (a random op such
            as Bernoulli or RandomNormal upstream): checked by shape and dtype only.
    """

    max_abs_diff: float
    max_abs_ref: float
    rel_diff: float
    trials: int
    passed: bool
    per_output: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    tolerances: dict[str, list[float]] = field(default_factory=dict)
    runtime: str = "onnxruntime"
    random_outputs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def tolerance_for(dtype: np.dtype) -> tuple[float, float]:
    """(rtol, atol) for a float dtype (see the module docstring). The 8- and 4-bit floats, which
    the passes never compute in, may move by one unit of their precision when a float32 value
    computed upstream lands on the other side of a rounding boundary: rtol is their epsilon."""
    name = np.dtype(dtype).name
    if name in TOLERANCES:
        return TOLERANCES[name]
    eps = float(ml_dtypes.finfo(dtype).eps)
    return eps, eps * 1e-2


@dataclass
class _Tally:
    max_diff: float = 0.0
    max_ref: float = 0.0
    per: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    tolerances: dict[str, list[float]] = field(default_factory=dict)
    precision: str | None = None  # compare every float output with this dtype's tolerance


def _is_float(a: np.ndarray) -> bool:
    """numpy floats, and the floats ml_dtypes adds (bfloat16, the float8 and float4 variants)."""
    if np.issubdtype(a.dtype, np.floating):
        return True
    try:
        ml_dtypes.finfo(a.dtype)
    except (TypeError, ValueError):
        return False
    return True


def _compare_floats(name: str, r: np.ndarray, o: np.ndarray, t: _Tally) -> None:
    rtol, atol = TOLERANCES[t.precision] if t.precision else tolerance_for(r.dtype)
    t.tolerances[name] = [rtol, atol]
    r64, o64 = r.astype(np.float64), o.astype(np.float64)
    fr, fo = np.isfinite(r64), np.isfinite(o64)
    special = ~(fr & fo)
    same_special = (np.isnan(r64) & np.isnan(o64)) | (np.isinf(r64) & (r64 == o64))
    bad = int(np.count_nonzero(special & ~same_special))
    if bad:
        t.failures.append(f"output {name!r}: NaN/Inf at {bad} position(s) where the other model has another value")
    both = fr & fo
    d = float(np.max(np.abs(r64[both] - o64[both]))) if both.any() else 0.0
    m = float(np.max(np.abs(r64[both]))) if both.any() else 0.0
    t.per[name] = d
    if d > atol + rtol * m:
        t.failures.append(f"output {name!r}: max abs diff {d:.3g} exceeds {atol:g} + {rtol:g} x max|ref| {m:.3g} "
                          f"({t.precision or r.dtype} tolerance)")
    t.max_diff, t.max_ref = max(t.max_diff, d), max(t.max_ref, m)


def _compare(name: str, r: Any, o: Any, t: _Tally) -> None:
    if isinstance(r, (list, tuple)) or isinstance(o, (list, tuple)):
        if not isinstance(r, (list, tuple)) or not isinstance(o, (list, tuple)) or len(r) != len(o):
            t.failures.append(f"output {name!r}: sequence lengths differ ({_len(r)} vs {_len(o)})")
            return
        for k, (a, b) in enumerate(zip(r, o)):
            _compare(f"{name}[{k}]", a, b, t)
        return
    if isinstance(r, dict) or isinstance(o, dict):
        if not isinstance(r, dict) or not isinstance(o, dict) or set(r) != set(o):
            t.failures.append(f"output {name!r}: map keys differ")
            return
        for k in sorted(r, key=str):
            _compare(f"{name}[{k!r}]", np.asarray(r[k]), np.asarray(o[k]), t)
        return
    if r is None or o is None:
        if (r is None) != (o is None):
            t.failures.append(f"output {name!r}: an optional is empty in one model only")
        return
    r, o = np.asarray(r), np.asarray(o)
    if r.shape != o.shape:
        t.failures.append(f"output {name!r}: shape {r.shape} in the reference, {o.shape} optimized")
    elif r.dtype != o.dtype and not (t.precision and _is_float(r) and _is_float(o)):
        t.failures.append(f"output {name!r}: dtype {r.dtype} in the reference, {o.dtype} optimized")
    elif _is_float(r):
        _compare_floats(name, r, o, t)
    else:
        differ = int(np.count_nonzero(r != o))
        if differ:
            t.failures.append(f"output {name!r}: {differ} of {r.size} {r.dtype} values differ")


def _len(x: Any) -> str:
    return str(len(x)) if isinstance(x, (list, tuple)) else type(x).__name__


def compare_outputs(ref: list, out: list, names: list[str], random: frozenset[str] = frozenset(),
                    precision: str | None = None) -> EquivalenceReport:
    """Compare two lists of outputs (arrays, sequences, optionals, maps) with the module's criteria.

    Outputs named in `random` (they differ between two runs of the reference itself: a random
    op upstream) are compared by shape and dtype only. `precision` (a key of `TOLERANCES`): every
    float output is compared with that dtype's tolerance, whatever its own dtype, and float outputs
    of different dtypes are compared (in float64) instead of failing.
    """
    if precision is not None and precision not in TOLERANCES:
        raise ValueError(f"precision must be one of {sorted(TOLERANCES)}, got {precision!r}")
    if len(ref) != len(out):
        raise VerificationError(f"output count differs: reference {len(ref)}, optimized {len(out)}")
    t = _Tally(precision=precision)
    for name, r, o in zip(names, ref, out):
        if name in random:
            r, o = np.asarray(r), np.asarray(o)
            if (r.shape, r.dtype) != (o.shape, o.dtype):
                t.failures.append(f"output {name!r}: {r.dtype}{list(r.shape)} in the reference, {o.dtype}"
                                  f"{list(o.shape)} optimized")
            continue
        _compare(name, r, o, t)
    rel = t.max_diff / t.max_ref if t.max_ref > 0 else t.max_diff
    return EquivalenceReport(t.max_diff, t.max_ref, rel, 1, not t.failures, t.per, t.failures, t.tolerances)


def _normalized(value: Any) -> Any:
    """A feed value as a runtime takes it: arrays for numpy scalars and TensorProtos, lists kept."""
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, (list, tuple)):
        return [_normalized(v) for v in value]
    if isinstance(value, np.generic):
        return np.asarray(value)
    return value


class _Runner:
    """Runs a model and names its outputs: ONNX Runtime with graph optimizations off, or onnx's
    reference evaluator (the pure-Python implementation of the spec), for models ORT cannot run."""

    def __init__(self, model: onnx.ModelProto | str | Path, runtime: str) -> None:
        self.runtime = runtime
        if runtime == "onnxruntime":
            self.session = make_session(model, opt_level="disable", threads=1)
            self.names = [o.name for o in self.session.get_outputs()]
        else:
            proto = model if isinstance(model, onnx.ModelProto) else read_onnx(model)
            self.session = ReferenceEvaluator(proto)
            self.names = [o.name for o in proto.graph.output]

    def run(self, feeds: dict) -> list:
        if self.runtime == "onnxruntime":  # ORT takes an empty optional as a missing feed
            return self.session.run(None, {k: v for k, v in feeds.items() if v is not None})
        return list(self.session.run(None, feeds))


RUNTIMES = ("onnxruntime", "onnx reference evaluator")


def _reference_runner(reference, feeds: list[dict], inputs_given: bool = False) -> tuple[_Runner, list[list]]:
    """The first runtime that runs the reference on these inputs, and its outputs.

    `inputs_given`: the inputs are the user's (the error then names them instead of asking for them).

    Raises:
        UnsupportedError: neither runtime runs the reference on these inputs.
    """
    reasons = []
    for runtime in RUNTIMES:
        try:
            ref = _Runner(reference, runtime)
            return ref, [ref.run(f) for f in feeds]
        except Exception as exc:  # each runtime raises its own types for a model or an input it refuses
            reasons.append(f"{runtime}: {first_line(exc)[:300]}")
    hint = ("neither runtime runs it on the inputs given: check that they are what the model takes" if inputs_given
            else "give inputs the model accepts with --inputs F.npz")
    raise UnsupportedError("cannot run the original model to check the result (" + "; ".join(reasons) +
                           f"); {hint}")


def _candidate_outputs(candidate, ref: _Runner, feeds: list[dict], same_runtime: bool,
                       what: str = "the optimized model") -> tuple[str, list[list]]:
    """The candidate's runtime and outputs: the reference's runtime, or (`same_runtime=False`) the
    first runtime that runs it on these inputs.

    Raises:
        VerificationError: it does not load or run where the reference does (updp's fault).
    """
    last = ""
    for runtime in ((ref.runtime,) if same_runtime else RUNTIMES):
        try:
            cand = _Runner(candidate, runtime)
        except Exception as exc:  # the reference loads, the candidate does not
            last = f"does not load in {runtime}: {first_line(exc)[:300]}"
            continue
        try:
            return runtime, [cand.run(f) for f in feeds]
        except Exception as exc:  # the reference runs on these inputs, the candidate does not
            last = f"fails in {runtime}: {first_line(exc)[:300]}"
    raise VerificationError(f"{what} {last}, where the original runs ({ref.runtime}); "
                            "no output was written")


def _cast_to_inputs(model: onnx.ModelProto | str | Path, feeds: list[dict]) -> list[dict]:
    """The feeds with each float array cast to the float dtype of the model's input of that name."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    wanted = {vi.name: onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
              for vi in proto.graph.input if vi.type.HasField("tensor_type")}
    out = []
    for feed in feeds:
        out.append({k: v.astype(wanted[k]) if isinstance(v, np.ndarray) and _is_float(v) and k in wanted
                    and np.issubdtype(wanted[k], np.floating) else v for k, v in feed.items()})
    return out


RANDOM_OPS = ("RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli", "Multinomial")


def _downstream_of_random_ops(model: onnx.ModelProto) -> set[str]:
    """Graph outputs computed from a random op (main graph; a node whose subgraph draws counts)."""
    def draws(n: onnx.NodeProto) -> bool:
        return n.op_type in RANDOM_OPS or any(
            draws(m) for g in subgraphs(n) for m in g.node)

    tainted: set[str] = set()
    for n in model.graph.node:  # nodes are in topological order
        if draws(n) or any(i in tainted for i in n.input):
            tainted.update(o for o in n.output if o)
    return {o.name for o in model.graph.output} & tainted


def _random_outputs(reference, ref: _Runner, feeds: dict, first: list) -> frozenset[str]:
    """Outputs computed from a random op, or whose values change between two runs of the reference."""
    proto = reference if isinstance(reference, onnx.ModelProto) else onnx.load(str(reference), load_external_data=False)
    again = ref.run(feeds)
    varying = {name for name, a, b in zip(ref.names, first, again) if not compare_outputs([a], [b], [name]).passed}
    return frozenset(varying | _downstream_of_random_ops(proto))


def check_equivalence(reference: onnx.ModelProto | str | Path, candidate: onnx.ModelProto | str | Path, *,
                      trials: int = 3, batch: int = 1, feeds: list[dict] | None = None,
                      raise_on_failure: bool = True, same_runtime: bool = True,
                      what: str = "the optimized model", precision: str | None = None,
                      inputs_given: bool = False) -> EquivalenceReport:
    """Run both models in ORT on the same inputs and compare every output.

    Args:
        reference: the model before optimization (a ModelProto or a path: a path keeps a model
            with external data out of one in-memory protobuf); run with ORT optimizations off.
        candidate: the optimized model; also run with optimizations off, so that only updp's
            rewrites are being checked.
        trials: input sets to generate when `feeds` is not given.
        batch: the value of a symbolic leading dimension of generated inputs.
        feeds: explicit input dicts (the user's, or e.g. impulse probes).
        raise_on_failure: raise `VerificationError` on a miss (the default), else just report.
        same_runtime: run both models on the same runtime (the default: what updp's rewrites are
            checked with); False lets each run on the first runtime that runs it, for comparing
            models of different opsets, which ONNX Runtime may run one of only.
        what: how messages name the candidate.
        precision: the float dtype the candidate computes in when it is narrower than the
            reference's (a float16 conversion of a float32 model): the candidate gets each float
            input in its own input dtype, and every float output is compared with this dtype's
            tolerance (`compare_outputs`).
        inputs_given: `feeds` are the user's own (`--inputs`), not generated or probes: a model no
            runtime runs on them is then not answered with "give inputs with --inputs".

    Raises:
        UnsupportedError: valid inputs cannot be generated, or neither ONNX Runtime nor onnx's
            reference evaluator runs the original on them.
        VerificationError: the outputs differ (the message says how), or the optimized model
            fails to load or run where the original runs.
    """
    if feeds is None:
        proto = reference if isinstance(reference, onnx.ModelProto) else onnx.load(str(reference),
                                                                                  load_external_data=False)
        feeds = generate_feeds(proto, batch=batch, trials=trials)
    feeds = [{k: _normalized(v) for k, v in f.items()} for f in feeds]
    if not feeds:
        raise VerificationError("no inputs to compare with")
    ref, ref_outputs = _reference_runner(reference, feeds, inputs_given)
    cand_feeds = _cast_to_inputs(candidate, feeds) if precision else feeds
    cand_runtime, cand_outputs = _candidate_outputs(candidate, ref, cand_feeds, same_runtime, what)
    cand_names = [o.name for o in (candidate if isinstance(candidate, onnx.ModelProto) else
                                   onnx.load(str(candidate), load_external_data=False)).graph.output]
    if ref.names != cand_names:
        raise VerificationError(f"output names differ: reference {ref.names}, optimized {cand_names}")
    random = _random_outputs(reference, ref, feeds[0], ref_outputs[0])
    reports = [compare_outputs(expected, got, ref.names, random, precision)
               for expected, got in zip(ref_outputs, cand_outputs)]
    worst = max(reports, key=lambda r: (not r.passed, r.rel_diff))
    worst.trials = len(feeds)
    worst.passed = all(r.passed for r in reports)
    worst.runtime = ref.runtime if cand_runtime == ref.runtime else f"{ref.runtime} / {cand_runtime}"
    worst.random_outputs = sorted(random)
    logger.info("equivalence: max_abs_diff=%.3g (rel %.3g) over %d trials: %s", worst.max_abs_diff,
                worst.rel_diff, worst.trials, "ok" if worst.passed else "FAILED")
    if raise_on_failure and not worst.passed:
        failed = [line for r in reports for line in r.failures]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise VerificationError(f"{what} differs from the reference: {failed[0]}{more}; "
                                "no output was written")
    return worst


__all__ = ["DEFAULT_ATOL", "DEFAULT_RTOL", "TOLERANCES", "EquivalenceReport", "check_equivalence", "compare_outputs",
           "tolerance_for"]
