"""The optimization pipeline: canonicalize, then fold and merge until nothing changes.

Each iteration runs two phases (the folds, then the chain merges and residual folds); each phase
builds one `Graph` view (one shape inference), runs its passes over it in order, and writes the
model back. Refusals are reported from the last iteration only (earlier ones may be transient:
a tensor created by a rewrite has no inferred shape until the next iteration).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from updp.core.denormals import exact_denormals
from updp.core.errors import InputError
from updp.onnx_passes._graph import Graph, RewriteTally
from updp.onnx_passes.canonicalize import canonicalize
from updp.onnx_passes.channels_last import channels_last
from updp.onnx_passes.cost import DEFAULT_COST_MODEL, CostModel
from updp.onnx_passes.fold_affine import fold_affine
from updp.onnx_passes.fold_layernorm import fold_layernorm
from updp.onnx_passes.fold_residual import fold_residual
from updp.onnx_passes.merge_linear_chain import merge_chains
from updp.ort import is_large, model_file

logger = logging.getLogger(__name__)

MIN_OPSET = 13


@dataclass
class OptimizeResult:
    """What `optimize_model` did. `model` is a new ModelProto (the input is not modified)."""

    model: onnx.ModelProto
    changed: bool
    nodes_before: int
    nodes_after: int
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    applied: dict[str, int] = field(default_factory=dict)
    refusals: list[str] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)
    iterations: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """JSON-ready summary (without the model)."""
        return {
            "changed": self.changed,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "ops_before": dict(self.ops_before),
            "ops_after": dict(self.ops_after),
            "applied": dict(self.applied),
            "refusals": list(self.refusals),
            "decisions": list(self.decisions),
            "iterations": self.iterations,
            "seconds": round(self.seconds, 3),
        }


def _ops(model: onnx.ModelProto) -> dict[str, int]:
    """Node count per op type, sorted by op type."""
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def _opset(model: onnx.ModelProto) -> int | None:
    """The model's default-domain opset version, or None if it imports none."""
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o.version
    return None


def optimize_model(
    model: onnx.ModelProto,
    *,
    max_iterations: int = 10,
    cost_model: CostModel = DEFAULT_COST_MODEL,
    fold_layernorm_affine: bool = False,
    in_place: bool = False,
) -> OptimizeResult:
    """Fold BatchNorm/LayerNorm/affines, rewrite channels-last sandwiches, merge linear chains
    (cost-planned) and fold residuals, repeating until a fixed point.

    Args:
        model: any ONNX model (opset >= 13; 17+ for LayerNormalization). Not modified, unless
            `in_place`.
        max_iterations: upper bound on repeat rounds.
        cost_model: the estimates the chain planner minimizes.
        fold_layernorm_affine: also fold LayerNormalization's gamma/beta into the following linear.
            Off by default: ORT's LayerNormalization kernel applies its affine for free, so the
            fold never removes work on its own, and folding beta into a MatMul bias that was zero
            keeps an Add alive that simplifiers would otherwise delete (measured 3% slower on
            ConvNeXt-T, ORT 1.31 CPU). Turn it on when a later step needs an affine-free LN.
        in_place: rewrite `model` itself instead of a copy (for a caller that no longer needs
            it: a model of several GB is then not held twice).

    Raises:
        InputError: the model has no graph or an unsupported opset.
    """
    t0 = time.perf_counter()
    _validate(model)
    ops_before, nodes_before = _ops(model), len(model.graph.node)
    if in_place:
        work = model
    else:
        work = onnx.ModelProto()
        work.CopyFrom(model)
    # Two phases per round, each on a fresh view (fresh shapes): the planner needs the spatial
    # sizes of tensors that the folds and the channels-last rewrite have just created.
    folds = (canonicalize, channels_last, fold_affine) + ((fold_layernorm,) if fold_layernorm_affine else ())
    phases = (
        folds,
        (lambda g: merge_chains(g, cost_model), fold_residual),
    )
    # The passes compute in float64 with the file's values as they are: a NaN or Inf weight, or a
    # negative variance, gives NaN or Inf, which the verification compares with what the original
    # computes (NaN-aware). numpy's RuntimeWarnings about them would only be noise on stderr.
    # Denormal constants are computed as they are, also where training flushed them to zero.
    with _foreign_ops_hidden(work) as restore, np.errstate(all="ignore"), exact_denormals():
        run = _iterate(work, phases, max_iterations)
        restore(run.model)
    work = run.model
    try:
        with model_file(work) if is_large(work) else contextlib.nullcontext(work) as checkable:
            onnx.checker.check_model(checkable, full_check=True)  # past protobuf's 2 GB: as a file
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:  # a rewrite's bug
        raise RuntimeError(f"optimized model fails the ONNX checker: {str(exc).splitlines()[0]}") from exc
    res = OptimizeResult(
        work,
        bool(run.applied),
        nodes_before,
        len(work.graph.node),
        ops_before,
        _ops(work),
        dict(sorted(run.applied.items())),
        list(dict.fromkeys(run.last.refusals)),
        run.decisions,
        run.iterations,
        time.perf_counter() - t0,
    )
    logger.info(
        "optimize: %d -> %d nodes in %d iterations (%.2fs): %s",
        res.nodes_before,
        res.nodes_after,
        run.iterations,
        res.seconds,
        res.applied,
    )
    return res


# Prefixed to the op type of a node of another domain while the passes run (no ONNX op has a colon).
_FOREIGN = "updp-foreign:"


def _restore_foreign_ops(model: onnx.ModelProto) -> None:
    for n in model.graph.node:
        if n.op_type.startswith(_FOREIGN):
            n.op_type = n.op_type[len(_FOREIGN):]


@contextlib.contextmanager
def _foreign_ops_hidden(model: onnx.ModelProto):
    """The passes match nodes by op type. A node of another domain (com.microsoft, a custom one, a
    model-local function) that is named like an ONNX op is not that op, and rewriting it as one
    would change what the model computes: while the passes run, its op type carries a prefix no
    pattern matches. Yields the function that takes the prefix off a result's nodes; `model`'s own
    nodes get theirs back in any case."""
    for n in model.graph.node:
        if n.domain not in ("", "ai.onnx"):
            n.op_type = _FOREIGN + n.op_type
    try:
        yield _restore_foreign_ops
    finally:
        _restore_foreign_ops(model)


def _validate(model: onnx.ModelProto) -> None:
    """Refuse models the passes cannot work on, before any work is done."""
    if not model.graph.node:
        raise InputError("the model has no nodes")
    opset = _opset(model)
    if opset is None or opset < MIN_OPSET:
        raise InputError(
            f"default-domain opset {opset} is too old; export with opset >= {MIN_OPSET} (17+ recommended)"
        )


Pass = Callable[[Graph], RewriteTally]


@dataclass
class _Run:
    """What the iterations did, for `optimize_model` to report."""

    model: onnx.ModelProto
    applied: Counter  # rule applications summed over all iterations
    last: RewriteTally  # the last iteration's tally (its refusals are the ones reported)
    decisions: list[str]  # planner decisions, each once, in first-seen order
    iterations: int


def _iterate(work: onnx.ModelProto, phases: Sequence[Sequence[Pass]], max_iterations: int) -> _Run:
    """Run the phases round after round until a round changes nothing (or `max_iterations`).

    Each phase gets a fresh `Graph` view (one shape inference) and writes the model back at its
    end, so the next phase sees the shapes of the tensors the previous one created.
    """
    applied: Counter = Counter()
    last = RewriteTally()
    decisions: list[str] = []
    iterations = 0
    for iterations in range(1, max_iterations + 1):
        it = RewriteTally()
        for phase in phases:
            g = Graph(work)
            for p in phase:
                it.merge(p(g))
            work = g.finish()
        applied.update(it.applied)
        for d in it.decisions:
            if d not in decisions:
                decisions.append(d)
        last = it
        logger.debug("iteration %d: %s", iterations, dict(it.applied))
        if not it.changed:
            break
    else:
        logger.warning("optimization did not converge in %d iterations", max_iterations)
    return _Run(work, applied, last, decisions, iterations)
