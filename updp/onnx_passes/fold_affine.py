"""Fold per-channel affines (inference BatchNorm, layer scale, BN exported as Mul + Add, bias
Adds) into the adjacent Conv / Gemm / MatMul.

``fold_affine_after_linear``
    Before: ``Linear(x; W, b) -> A -> y`` with A = BatchNormalization | Mul(c) | Add(c)
    After:  ``Linear(x; W', b') -> y``
    Conditions: weight (and bias) constant and finite, as A's constants must be (folding ±inf or
    NaN is not exact: see `_linear.NOT_FINITE`); the linear's output has A as only reader; A's constant
    varies only along the linear's output-channel axis (axis 1 of a Conv output, the last axis of
    a Gemm/MatMul output); a BatchNormalization next to a MatMul needs a rank-2 tensor (BN acts on
    axis 1).
    Formula: (Wx + b) s + t = (W s) x + (b s + t)  (`identities.fold_affine_after_conv` / `_matmul`).

``fold_affine_before_linear``
    Before: ``x -> A -> [Reshape keeping the last dim] -> Linear(.; W, b) -> y``
    After:  ``x -> [Reshape] -> Linear(.; W', b') [-> Add(border correction)] -> y``
    Conditions: A's output has the linear as only reader (through at most one Reshape that keeps
    the last dimension, for MatMul/Gemm); constant per input channel, of no higher rank than x (a
    higher-rank constant broadcasts x up, and the linear would then read x's lower rank). For a
    zero-padded Conv and a nonzero shift: 2-D, dilation 1, explicit pads and a static input shape,
    because the shift does not reach the padded border: the exact form adds a constant
    (1, O, Ho, Wo) correction computed by `identities.conv_bias_field`, emitted only if nonzero.
    Formula: W(x s + t) + b = (W diag(s)) x + (W t + b)  (`identities.fold_affine_before_conv_exact`
    / `fold_affine_before_matmul`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from updp.identities import (
    fold_affine_after_conv,
    fold_affine_after_matmul,
    fold_affine_before_conv,
    fold_affine_before_conv_exact,
    fold_affine_before_matmul,
)
from updp.onnx_passes._graph import Graph, Refusal, RewriteTally, Rule, run_rules
from updp.onnx_passes._linear import (
    Affine,
    Linear,
    affine_vectors,
    append_bias_add,
    conv_params,
    parse_affine,
    parse_linear,
    through_reshape,
    write_linear,
)

AFFINE_OPS = ("BatchNormalization", "Mul", "Add")


def _nonzero(v: np.ndarray) -> bool:
    return bool(np.any(v != 0))


# ------------------------------------------------------------------------- affine after a linear


@dataclass(frozen=True)
class AffineAfterLinearMatch:
    affine: Affine  # the anchor
    linear: Linear | str  # the unit producing its input, or why that unit cannot take the fold


@dataclass(frozen=True)
class AffineAfterLinearPlan:
    scale: np.ndarray  # (O,) float64 per output channel of the linear
    shift: np.ndarray


class FoldAffineAfter(Rule[AffineAfterLinearMatch, AffineAfterLinearPlan]):
    name = "fold_affine_after_linear"
    anchors = AFFINE_OPS

    def match(self, g: Graph, idx: int) -> AffineAfterLinearMatch | None:
        a = parse_affine(g, idx)
        if a is None:
            return None
        p = g.producer_of(a.x)
        if p is None:
            return None
        pn = g.node(p)
        if pn.op_type == "Add":  # maybe the bias Add of a MatMul unit
            q = next(
                (
                    g.producer_of(i)
                    for i in pn.input
                    if g.producer_of(i) is not None and g.node(g.producer_of(i)).op_type == "MatMul"
                ),
                None,
            )
            if q is None:
                return None
            lin = parse_linear(g, q)
            if not isinstance(lin, Linear) or lin.bias_idx != p:
                return None
            return AffineAfterLinearMatch(a, lin)
        if pn.op_type not in ("Conv", "Gemm", "MatMul"):
            return None
        if pn.op_type == "MatMul" and a.op == "Add":
            return None  # this Add is the MatMul's own bias
        lin = parse_linear(g, p, with_bias_add=False)
        if lin is None:
            return None
        return AffineAfterLinearMatch(a, lin)

    def check(self, g: Graph, m: AffineAfterLinearMatch) -> Refusal | AffineAfterLinearPlan:
        a, lin = m.affine, m.linear
        if isinstance(lin, str):
            return lin
        if g.single_consumer(lin.out) != a.idx:
            return f"intermediate has {g.uses(lin.out)} consumers"
        if lin.kind == "conv":
            vec = affine_vectors(g, a, lin.W.ndim, 1, lin.n_out)
        elif lin.kind == "gemm":
            vec = affine_vectors(g, a, 2, -1, lin.n_out)
        else:
            vec = affine_vectors(g, a, g.rank(lin.out), -1, lin.n_out)
        if isinstance(vec, str):
            return vec
        return AffineAfterLinearPlan(*vec)

    def rewrite(
        self, g: Graph, m: AffineAfterLinearMatch, plan: AffineAfterLinearPlan, tally: RewriteTally
    ) -> None:
        a, lin = m.affine, m.linear
        s, t = plan.scale, plan.shift
        if lin.kind == "conv":
            W, b = fold_affine_after_conv(lin.W, lin.bias, s, t)
        else:
            W, b = fold_affine_after_matmul(lin.W, lin.bias, s, t)
        keep_b = lin.b is not None or _nonzero(b)
        write_linear(g, lin, W, b if keep_b else None)
        last = lin.bias_idx if lin.bias_idx is not None else lin.idx
        g.remove(a.idx)
        g.set_output(last, 0, a.out)
        if lin.kind == "matmul" and lin.bias_idx is None and _nonzero(b):
            append_bias_add(g, lin, b)


# ------------------------------------------------------------------------- affine before a linear


@dataclass(frozen=True)
class AffineBeforeLinearMatch:
    affine: Affine  # the anchor
    reshape: int | None  # a Reshape between the affine and the linear (MatMul/Gemm only)
    linear: Linear | str  # the unit reading the affine, or why that unit cannot take the fold


@dataclass(frozen=True)
class BorderPadding:
    """What the exact fold of a shift before a zero-padded conv needs to compute the border field."""

    groups: int
    strides: tuple[int, ...]
    pads: tuple[int, ...]
    hw: tuple[int, int]  # the conv's static input H, W


@dataclass(frozen=True)
class AffineBeforeLinearPlan:
    scale: np.ndarray  # per input channel of the linear, float64
    shift: np.ndarray
    border: BorderPadding | None  # set when a nonzero shift meets zero padding


class FoldAffineBefore(Rule[AffineBeforeLinearMatch, AffineBeforeLinearPlan]):
    name = "fold_affine_before_linear"
    anchors = AFFINE_OPS

    def match(self, g: Graph, idx: int) -> AffineBeforeLinearMatch | None:
        a = parse_affine(g, idx)
        if a is None:
            return None
        r, c = through_reshape(g, a.out)
        if c is None:
            return None
        cn = g.node(c)
        if cn.op_type not in ("Conv", "Gemm", "MatMul"):
            return None
        src = g.node(r).output[0] if r is not None else a.out
        if cn.input[0] != src or (r is not None and cn.op_type == "Conv"):
            return None
        if cn.op_type == "MatMul" and cn.input[1] == src:
            return None
        lin = parse_linear(g, c)
        if lin is None:
            return None
        return AffineBeforeLinearMatch(a, r, lin)

    def check(self, g: Graph, m: AffineBeforeLinearMatch) -> Refusal | AffineBeforeLinearPlan:
        a, r, lin = m.affine, m.reshape, m.linear
        if isinstance(lin, str):
            return lin
        rank_x = g.rank(a.x)
        if a.const is not None and a.const.ndim > (rank_x if rank_x is not None else 1):
            # x * c with c of a higher rank broadcasts x up: the linear would read a lower rank
            return "constant broadcasts the tensor to a higher rank"
        if lin.kind == "conv":
            groups = conv_params(g, lin.idx)[0]
            vec = affine_vectors(g, a, lin.W.ndim, 1, lin.W.shape[1] * groups)
        else:
            rank = 2 if (lin.kind == "gemm" and r is None) else g.rank(a.out)
            vec = affine_vectors(g, a, rank, -1, lin.n_in)
        if isinstance(vec, str):
            return vec
        s, t = vec
        border = None
        if lin.kind == "conv" and _nonzero(t):
            groups, strides, pads, dil, auto_pad = conv_params(g, lin.idx)
            if auto_pad not in ("NOTSET", "VALID"):
                return f"auto_pad={auto_pad} hides the padding; a shift before it needs explicit pads"
            if auto_pad == "NOTSET" and any(pads):
                if lin.W.ndim != 4:
                    return "shift before a padded non-2-D conv is not supported"
                if any(d != 1 for d in dil):
                    return "shift before a padded dilated conv is not supported"
                shp = g.shape(a.x)
                if shp is None or len(shp) != 4:
                    return "dynamic spatial shape: a shift before a padded conv needs static H, W"
                border = BorderPadding(groups, strides, pads, shp[2:])
        return AffineBeforeLinearPlan(s, t, border)

    def rewrite(
        self, g: Graph, m: AffineBeforeLinearMatch, plan: AffineBeforeLinearPlan, tally: RewriteTally
    ) -> None:
        a, r, lin = m.affine, m.reshape, m.linear
        s, t, border = plan.scale, plan.shift, plan.border
        reader = r if r is not None else lin.idx
        corr = None
        if lin.kind == "conv":
            if border is not None:
                W, b, corr = fold_affine_before_conv_exact(
                    lin.W, lin.bias, s, t, border.groups, border.strides, border.pads, border.hw
                )
                if corr is not None and np.max(np.abs(corr)) <= 1e-12 * (np.max(np.abs(b)) + 1e-30):
                    corr = None
            else:
                W, b = fold_affine_before_conv(lin.W, lin.bias, s, t, conv_params(g, lin.idx)[0])
        else:
            W, b = fold_affine_before_matmul(lin.W, lin.bias, s, t)
        keep_b = lin.b is not None or _nonzero(b)
        write_linear(g, lin, W, b if keep_b else None)
        g.remove(a.idx)
        g.set_input(reader, 0, a.x)
        if lin.kind == "matmul" and lin.bias_idx is None and _nonzero(b):
            append_bias_add(g, lin, b)
        if corr is not None:
            add_border_correction(g, lin.idx, corr, lin.dtype)


def add_border_correction(g: Graph, conv_idx: int, corr: np.ndarray, dtype: np.dtype) -> int:
    """Append ``Add(conv_out, corr[None])`` after a conv, keeping the conv's output name."""
    n = g.node(conv_idx)
    out = n.output[0]
    mid = g.fresh(out + "_interior")
    g.set_output(conv_idx, 0, mid)
    cname = g.add_init(corr[None].astype(dtype), f"{n.name or 'conv'}_border_bias")
    return g.make_node("Add", [mid, cname], [out], f"{n.name or 'Conv'}/border_bias")


RULES = [FoldAffineAfter(), FoldAffineBefore()]


def fold_affine(g: Graph) -> RewriteTally:
    """Fold every foldable affine once (after-folds first: they never need a border field)."""
    tally = RewriteTally()
    run_rules(g, RULES, tally)
    return tally
