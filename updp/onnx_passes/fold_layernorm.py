"""Fold a LayerNormalization's affine (gamma, beta) into the linear that reads it.

``fold_layernorm_affine``
    Before: ``LayerNormalization(x; gamma, beta, axis=-1) -> [Reshape keeping last dim] -> MatMul/Gemm(W, b)``
    After:  ``LayerNormalization(x; 1) -> [Reshape] -> MatMul/Gemm(diag(gamma) W, beta W + b)``
    Conditions: normalization over the last axis only; gamma/beta constant; the LN output has the
    linear as only reader (through at most one Reshape that keeps the last dimension); LN's Mean
    and InvStdDev outputs unused; gamma != 1 or beta != 0 (else nothing to do); a nonzero beta
    needs a bias on the linear to land in (a bias-less MatMul would need a new Add, slower than
    LN's own fused affine).
    Formula: LN(x; g, be) W + b = LN0(x) (diag(g) W) + (be W + b)
    (`identities.fold_layernorm_affine_into_matmul`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from updp.identities import fold_layernorm_affine_into_matmul
from updp.onnx_passes._graph import PROCEED, Graph, Proceed, Refusal, RewriteTally, Rule, attr, run_rules
from updp.onnx_passes._linear import Linear, append_bias_add, parse_linear, through_reshape, write_linear


@dataclass(frozen=True)
class LayerNormMatch:
    idx: int  # the LayerNormalization
    linear: Linear | str  # the MatMul/Gemm unit reading it, or why that unit cannot take the fold
    gamma: np.ndarray  # raw constant
    beta: np.ndarray | None  # raw constant; None if absent or not a constant


class FoldLayerNormAffine(Rule[LayerNormMatch, Proceed]):
    name = "fold_layernorm_affine"
    anchors = ("LayerNormalization",)

    def match(self, g: Graph, idx: int) -> LayerNormMatch | None:
        n = g.node(idx)
        gamma = g.const(n.input[1]) if len(n.input) > 1 else None
        beta = g.const(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if gamma is None:
            return None
        if np.all(gamma == 1) and (beta is None or not np.any(beta)):
            return None  # already plain
        r, c = through_reshape(g, n.output[0])
        if c is None or g.node(c).op_type not in ("MatMul", "Gemm"):
            return None
        src = g.node(r).output[0] if r is not None else n.output[0]
        if g.node(c).input[0] != src:
            return None
        lin = parse_linear(g, c)
        if lin is None:
            return None
        return LayerNormMatch(idx, lin, gamma, beta)

    def check(self, g: Graph, m: LayerNormMatch) -> Refusal | Proceed:
        n = g.node(m.idx)
        lin = m.linear
        if isinstance(lin, str):
            return lin
        if n.input[2:3] and n.input[2] and m.beta is None:
            return "beta is not a constant"
        axis = int(attr(n, "axis", -1))
        rank = g.rank(n.input[0])
        if not (axis == -1 or (rank is not None and axis == rank - 1)):
            return f"LayerNormalization normalizes from axis {axis}, not the last axis only"
        if any(o and g.uses(o) for o in n.output[1:]):
            return "Mean/InvStdDev outputs are used"
        if m.gamma.ndim != 1 or m.gamma.shape[0] != lin.n_in:
            return "gamma is not a (K,) vector matching the linear's input"
        if lin.kind == "matmul" and lin.bias_idx is None and m.beta is not None and np.any(m.beta):
            # LayerNormalization adds beta inside its kernel for free; a bias-less MatMul would
            # need a new Add node for beta·W, which is slower than what it replaces.
            return "the MatMul has no bias Add: folding beta would add an Add that LN applies for free"
        return PROCEED

    def rewrite(self, g: Graph, m: LayerNormMatch, plan: Proceed, tally: RewriteTally) -> None:
        lin = m.linear
        gamma = m.gamma.astype(np.float64)
        beta = m.beta.astype(np.float64) if m.beta is not None else np.zeros_like(gamma)
        beta = np.broadcast_to(beta.reshape(-1), gamma.shape)
        W, b = fold_layernorm_affine_into_matmul(gamma, beta, lin.W, lin.bias)
        write_linear(g, lin, W, b if (lin.b is not None or np.any(b)) else None)
        if lin.kind == "matmul" and lin.bias_idx is None and np.any(b):
            append_bias_add(g, lin, b)
        g.set_const_input(m.idx, 1, np.ones_like(m.gamma), base=g.node(m.idx).input[1] + "_ones")
        g.truncate_inputs(m.idx, 2)


RULES = [FoldLayerNormAffine()]


def fold_layernorm(g: Graph) -> RewriteTally:
    """Run the LayerNorm-affine fold once over the graph."""
    tally = RewriteTally()
    run_rules(g, RULES, tally)
    return tally
