"""Merge chains of linear ops with a cost-based planner.

``merge_conv_chain``
    Before: ``x -> Conv_1 [-> Add(field_1)] -> Conv_2 [-> Add(field_2)] -> ... -> Conv_n -> y``
    After:  the chain partitioned into contiguous segments, each segment one ``Conv`` (plus an
    ``Add`` of a constant border field when its bias is position dependent), e.g. ConvNeXt's
    DW7x7 -> PW(C->4C) -> PW(4C->C) becomes DW7x7 + PW(CxC), MobileNetV2's PW -> DW3x3 -> PW one
    dense 3x3 conv.
    Conditions: every intermediate has one reader; 2-D convs, constant weights and biases,
    dilation 1, explicit pads. A segment is exact only if each conv after the first reads no zero
    padding, or everything before it in the segment is pointwise (1x1, stride 1, no pad): a merged
    kernel would otherwise read real pixels where the original read padded zeros (two "same" 3x3
    convs of a ResNet basic block cannot merge). A bias that reaches a padded conv turns into a
    position-dependent field; that needs static spatial shapes.
    Formula: K = compose(W_1, ..., W_n) with K[o2, c, s1 a + u] = sum W2[o2, o1, a] W1[o1, c, u]
    (`identities.compose_conv_kernels`; depthwise o depthwise stays depthwise,
    `compose_depthwise_kernels`); stride s1 s2; bias field = conv(b1 field, W2) with zero padding
    (`identities.conv_bias_field`), emitted as a uniform bias + a constant border Add if nonuniform.
    Plan: dynamic programming over contiguous segments minimizing `cost.CostModel` estimates.

``merge_matmul_chain``
    Before: ``x -> MatMul(W1) [-> Add(b1)] -> MatMul(W2) [-> Add(b2)] ...`` (or Gemm, transA=0)
    After:  segments of ``MatMul(W1 W2 ...) -> Add(b)`` (a Gemm if the chain starts with one)
    Conditions: constant 2-D weights, biases along the last axis, one reader per intermediate.
    Always exact; the planner keeps e.g. a bottleneck D -> d -> D with d << D apart.
    Formula: (x W1 + b1) W2 + b2 = x (W1 W2) + (b1 W2 + b2)  (`identities.compose_matmul`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from onnx import helper

from updp.identities import (
    compose_conv_kernels,
    compose_depthwise_kernels,
    compose_matmul,
    conv_bias_field,
    conv_output_size,
    dense_kernel,
    fold_affine_before_conv,
)
from updp.onnx_passes._graph import Graph, Refusal, RewriteTally, Rule, float_dtype, run_rules
from updp.onnx_passes._linear import Linear, conv_params, parse_linear
from updp.onnx_passes.cost import DEFAULT_COST_MODEL, CostModel

logger = logging.getLogger(__name__)

NOMINAL_HW = (32, 32)


# ------------------------------------------------------------------------- planner


def plan_segments(
    n: int, cost: Callable[[int, int], float | None]
) -> tuple[list[tuple[int, int]], float]:
    """Cheapest partition of units 0..n-1 into contiguous segments.

    `cost(i, j)` returns the cost of merging units i..j (inclusive) or None if not exact.
    Single-unit segments must always be feasible.
    """
    best = [0.0] + [float("inf")] * n
    back = [0] * (n + 1)
    for j in range(n):
        for i in range(j + 1):
            c = cost(i, j)
            if c is None:
                continue
            if best[i] + c < best[j + 1]:
                best[j + 1], back[j + 1] = best[i] + c, i
    segs, j = [], n
    while j > 0:
        segs.append((back[j], j - 1))
        j = back[j]
    return segs[::-1], best[n]


def _scope(names: list[str]) -> str:
    """' (scope)' from the first node name: "/stages.0/blocks.3/conv_dw/Conv" -> "/stages.0/blocks.3"."""
    first = names[0]
    scope = first.rsplit("/", 2)[0] if first.count("/") >= 2 else ""
    return f" ({scope})" if scope else ""


# ------------------------------------------------------------------------- conv units


@dataclass(frozen=True)
class ConvUnit:
    """A conv with its optional constant Add (bias field) after it; frozen: rules keep it in their match."""

    idx: int
    add_idx: int | None
    name: str
    x: str
    out: str
    W: np.ndarray  # (O, C/g, kH, kW) float64
    b: np.ndarray  # (O,)
    field: np.ndarray | None  # (O, Ho, Wo) additive constant after the conv
    groups: int
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    in_hw: tuple[int, int] | None
    out_hw: tuple[int, int] | None
    dtype: np.dtype

    @property
    def cin(self) -> int:
        return self.W.shape[1] * self.groups

    @property
    def cout(self) -> int:
        return self.W.shape[0]

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.W.shape[1] == 1 and self.cout == self.cin

    @property
    def pointwise(self) -> bool:
        return self.W.shape[2:] == (1, 1) and self.strides == (1, 1) and not any(self.pads)

    def describe(self) -> str:
        kh, kw = self.W.shape[2:]
        if self.depthwise:
            return f"DW{kh}x{kw}"
        if (kh, kw) == (1, 1):
            return f"PW {self.cin}x{self.cout}"
        return f"{'grouped' if self.groups > 1 else 'dense'} {kh}x{kw} {self.cin}x{self.cout}"


def parse_conv_unit(g: Graph, idx: int) -> ConvUnit | str | None:
    """The conv unit at `idx`; a reason string if it is a conv that cannot merge; None if no conv."""
    lin = parse_linear(g, idx)
    if lin is None or isinstance(lin, str) or lin.kind != "conv":
        return lin if isinstance(lin, str) else None
    if lin.W.ndim != 4:
        return "not a 2-D conv"
    groups, strides, pads, dil, auto_pad = conv_params(g, idx)
    if any(d != 1 for d in dil):
        return "dilated conv"
    if auto_pad == "VALID":
        pads = (0, 0, 0, 0)
    elif auto_pad != "NOTSET":
        return f"auto_pad={auto_pad} hides the padding"
    n = g.node(idx)
    shp = g.shape(n.input[0])
    in_hw = tuple(shp[2:]) if shp is not None and len(shp) == 4 else None
    out_hw = None
    if in_hw is not None:
        kh, kw = lin.W.shape[2:]
        out_hw = (
            conv_output_size(in_hw[0], kh, strides[0], pads[0], pads[2]),
            conv_output_size(in_hw[1], kw, strides[1], pads[1], pads[3]),
        )
    out, add_idx, field = n.output[0], None, None
    a = g.single_consumer(out)
    if a is not None and g.node(a).op_type == "Add" and out_hw is not None:
        an = g.node(a)
        other = an.input[1] if an.input[0] == out else an.input[0]
        c = g.const(other)
        if c is not None and float_dtype(c) and c.ndim <= 4:
            c4 = c.reshape((1,) * (4 - c.ndim) + c.shape)
            target = (1, lin.W.shape[0]) + out_hw
            if all(d in (1, t) for d, t in zip(c4.shape, target, strict=True)) and c4.shape[0] == 1:
                field = np.broadcast_to(c4[0], target[1:]).astype(np.float64)
                add_idx, out = a, an.output[0]
    return ConvUnit(
        idx,
        add_idx,
        n.name or f"Conv#{idx}",
        n.input[0],
        out,
        lin.W,
        lin.bias.copy(),
        field,
        groups,
        tuple(strides),
        tuple(pads),
        in_hw,
        out_hw,
        lin.dtype,
    )


def _prev_unit_output(g: Graph, x: str) -> bool:
    """Is `x` the output of a conv unit whose only reader is the next conv (i.e. not a chain head)?"""
    p = g.producer_of(x)
    if p is None or g.single_consumer(x) is None:
        return False
    pn = g.node(p)
    if pn.op_type == "Add":
        q = next((g.producer_of(i) for i in pn.input if g.producer_of(i) is not None), None)
        if q is None or g.node(q).op_type != "Conv":
            return False
        u = parse_conv_unit(g, q)
        return isinstance(u, ConvUnit) and u.add_idx == p
    if pn.op_type == "Conv":
        u = parse_conv_unit(g, p)
        return isinstance(u, ConvUnit) and u.out == x
    return False


@dataclass(frozen=True)
class SegMeta:
    """Shape-only description of a merged segment, what the cost model needs."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    depthwise: bool
    needs_field: bool
    cin: int
    cout: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]


def segment_meta(units: Sequence[ConvUnit], i: int, j: int) -> SegMeta | str:
    """Shape-only description of merging units i..j, or the reason it is not exact."""
    u0 = units[i]
    k, s, pads = tuple(u0.W.shape[2:]), u0.strides, u0.pads
    dw = u0.depthwise
    bias_live = bool(np.any(u0.b)) or u0.field is not None
    needs_field = u0.field is not None
    for m in range(i + 1, j + 1):
        u, prev = units[m], units[m - 1]
        pointwise = k == (1, 1) and s == (1, 1) and not any(pads)
        if any(u.pads) and not pointwise:
            return (
                f"zero padding between convs is not exact: {u.name} pads its input {list(u.pads)} "
                f"and the conv(s) before it ({prev.describe()}) are not pointwise"
            )
        if any(u.pads) and bias_live:
            needs_field = True
        if u.field is not None:
            needs_field = True
        bias_live = bias_live or bool(np.any(u.b))
        kh, kw = u.W.shape[2:]
        k = (k[0] + (kh - 1) * s[0], k[1] + (kw - 1) * s[1])
        s = (s[0] * u.strides[0], s[1] * u.strides[1])
        if any(u.pads):
            pads = u.pads
        dw = dw and u.depthwise
    if needs_field and (u0.in_hw is None or units[j].out_hw is None):
        return "dynamic spatial shape: a bias through zero padding needs static H, W"
    in_hw = u0.in_hw or NOMINAL_HW
    out_hw = units[j].out_hw
    if out_hw is None:
        out_hw = in_hw
        for m in range(i, j + 1):
            u = units[m]
            out_hw = (
                conv_output_size(out_hw[0], u.W.shape[2], u.strides[0], u.pads[0], u.pads[2]),
                conv_output_size(out_hw[1], u.W.shape[3], u.strides[1], u.pads[1], u.pads[3]),
            )
    return SegMeta(k, s, dw, needs_field, u0.cin, units[j].cout, in_hw, out_hw)


def segment_cost(units: Sequence[ConvUnit], i: int, j: int, cm: CostModel) -> float | None:
    """Estimated cost of units i..j merged into one conv (+ border Add), or None if not exact."""
    if i == j:
        u = units[i]
        meta = segment_meta(units, i, i)
        c = cm.conv_ns(u.cin, u.cout, *u.W.shape[2:], u.groups, meta.in_hw, meta.out_hw)
        if u.field is not None:
            c += cm.elementwise_ns(u.cout * meta.out_hw[0] * meta.out_hw[1])
        return c
    meta = segment_meta(units, i, j)
    if isinstance(meta, str):
        return None
    groups = meta.cin if meta.depthwise else 1
    c = cm.conv_ns(meta.cin, meta.cout, *meta.kernel, groups, meta.in_hw, meta.out_hw)
    if meta.needs_field:
        c += cm.elementwise_ns(meta.cout * meta.out_hw[0] * meta.out_hw[1])
    return c


def describe_segment(units: Sequence[ConvUnit], i: int, j: int) -> str:
    """Short kernel description of the merged segment i..j for the decision log."""
    if i == j:
        return units[i].describe()
    meta = segment_meta(units, i, j)
    kh, kw = meta.kernel
    if meta.depthwise:
        return f"DW{kh}x{kw}"
    if (kh, kw) == (1, 1):
        return f"PW {meta.cin}x{meta.cout}"
    return f"dense {kh}x{kw} {meta.cin}x{meta.cout}"


def build_segment(units: Sequence[ConvUnit], i: int, j: int) -> tuple:
    """Merged (K, groups, strides, pads, bias, field) for units i..j (exactness already checked)."""
    u0 = units[i]
    K, Kg, s, pads = u0.W, u0.groups, u0.strides, u0.pads
    dw = u0.depthwise
    b, field = u0.b, u0.field
    hw = u0.out_hw
    for m in range(i + 1, j + 1):
        u = units[m]
        ones = np.ones(b.shape[0])
        # bias (and field) through u: uniform interior value + position-dependent remainder
        b_new = fold_affine_before_conv(u.W, u.b, ones, b, u.groups)[1]
        new_field = None
        if any(u.pads) and np.any(b):
            full = conv_bias_field(
                np.broadcast_to(b[:, None, None], (b.shape[0],) + hw), u.W, u.strides, u.pads, u.groups
            )
            new_field = full + (u.b - b_new)[:, None, None]
        if field is not None:
            f2 = conv_bias_field(field, u.W, u.strides, u.pads, u.groups)
            new_field = f2 if new_field is None else new_field + f2
        if u.field is not None:
            new_field = u.field if new_field is None else new_field + u.field
        b, field, hw = b_new, new_field, u.out_hw
        # kernel
        if dw and u.depthwise:
            K = compose_depthwise_kernels(K, s, u.W)
        else:
            K = compose_conv_kernels(dense_kernel(K, Kg), s, dense_kernel(u.W, u.groups))
            Kg, dw = 1, False
        s = (s[0] * u.strides[0], s[1] * u.strides[1])
        if any(u.pads):
            pads = u.pads
    if field is not None and np.max(np.abs(field)) <= 1e-12 * (np.max(np.abs(b)) + 1e-30):
        field = None
    return K, Kg, s, pads, b, field


@dataclass(frozen=True)
class ConvChainMatch:
    units: tuple[ConvUnit, ...]  # the chain from its head, each unit the only reader of the previous
    stop: str | None  # why the chain ends where it does, when a conv follows that cannot merge


@dataclass(frozen=True)
class ChainPlan:
    """The planner's partition of a chain and the decision line the tally reports for it."""

    segments: tuple[tuple[int, int], ...]  # contiguous (first, last) unit indices, in order
    decision: str


def _chain_text(names: list[str]) -> str:
    """The chain for the decision log: the second-to-last component of each node name (the module,
    e.g. ``conv_dw`` of ``/stages.0/blocks.3/conv_dw/Conv``), joined by arrows."""
    return "\u2192".join(n_.rsplit("/", 2)[-2] if n_.count("/") >= 2 else n_ for n_ in names)


class MergeConvChain(Rule[ConvChainMatch, ChainPlan]):
    name = "merge_conv_chain"
    anchors = ("Conv",)

    def __init__(self, cost_model: CostModel = DEFAULT_COST_MODEL):
        self.cm = cost_model

    def match(self, g: Graph, idx: int) -> ConvChainMatch | None:
        head = parse_conv_unit(g, idx)
        if not isinstance(head, ConvUnit) or _prev_unit_output(g, head.x):
            return None
        units, stop = [head], None
        while True:
            c = g.single_consumer(units[-1].out)
            if c is None or g.node(c).op_type != "Conv" or g.node(c).input[0] != units[-1].out:
                break
            u = parse_conv_unit(g, c)
            if not isinstance(u, ConvUnit):
                stop = f"{g.label(c)}: {u}"
                break
            units.append(u)
        if len(units) < 2 and not stop:
            return None
        return ConvChainMatch(tuple(units), stop)

    def check(self, g: Graph, m: ConvChainMatch) -> Refusal | ChainPlan:
        units = m.units
        if len(units) < 2:
            return f"chain ends at a conv that cannot merge: {m.stop}"
        n = len(units)
        cache = {}

        def cost(i, j):
            if (i, j) not in cache:
                cache[(i, j)] = segment_cost(units, i, j, self.cm)
            return cache[(i, j)]

        segs, best = plan_segments(n, cost)
        separate = sum(cost(i, i) for i in range(n))
        full = cost(0, n - 1)
        names = [u.name for u in units]
        plan = " + ".join(describe_segment(units, i, j) for i, j in segs)
        full_txt = f"{full / 1e3:.3g}" if full is not None else "not exact"
        decision = (
            f"chain {_chain_text(names)}{_scope(names)}: {plan} (est cost {best / 1e3:.3g} us vs "
            f"separate {separate / 1e3:.3g}, fully merged {full_txt})"
        )
        if all(i == j for i, j in segs):
            reasons = []
            for k in range(n - 1):
                meta = segment_meta(units, k, k + 1)
                if isinstance(meta, str):
                    reasons.append(meta)
            why = "; ".join(reasons) if reasons else "keeping the convs separate is cheapest"
            return f"{why} [{decision}]"
        return ChainPlan(tuple(segs), decision)

    def rewrite(self, g: Graph, m: ConvChainMatch, plan: ChainPlan, tally: RewriteTally) -> None:
        units = m.units
        tally.decisions.append(plan.decision)
        for i, j in plan.segments:
            if i == j:
                continue
            K, Kg, s, pads, b, field = build_segment(units, i, j)
            first, last = units[i], units[j]
            x, y = first.x, last.out
            for u in units[i : j + 1]:
                g.remove(u.idx)
                if u.add_idx is not None:
                    g.remove(u.add_idx)
            dt = first.dtype
            base = first.name
            wn = g.add_init(K.astype(dt), f"{base}_merged_weight")
            bn = g.add_init(b.astype(dt), f"{base}_merged_bias")
            conv_out = y if field is None else g.fresh(y + "_interior")
            g.add(
                helper.make_node(
                    "Conv",
                    [x, wn, bn],
                    [conv_out],
                    name=g.fresh(f"{base}_merged"),
                    kernel_shape=list(K.shape[2:]),
                    strides=list(s),
                    pads=list(pads),
                    group=int(Kg),
                    dilations=[1, 1],
                )
            )
            if field is not None:
                fn = g.add_init(field[None].astype(dt), f"{base}_merged_border_bias")
                g.make_node("Add", [conv_out, fn], [y], f"{base}_merged/border_bias")


# ------------------------------------------------------------------------- matmul chains


def _rows(g: Graph, x: str) -> int | None:
    s = g.shape(x)
    return int(np.prod(s[:-1])) if s is not None and len(s) >= 1 else None


@dataclass(frozen=True)
class MatMulChainMatch:
    units: tuple[Linear, ...]  # at least two, from the chain's head, each the only reader of the previous


class MergeMatMulChain(Rule[MatMulChainMatch, ChainPlan]):
    name = "merge_matmul_chain"
    anchors = ("MatMul", "Gemm")

    def __init__(self, cost_model: CostModel = DEFAULT_COST_MODEL):
        self.cm = cost_model

    def match(self, g: Graph, idx: int) -> MatMulChainMatch | None:
        head = parse_linear(g, idx)
        if not isinstance(head, Linear) or head.kind == "conv":
            return None
        p = g.producer_of(head.x)
        if p is not None and g.single_consumer(head.x) is not None:
            pn = g.node(p)
            q = p
            if pn.op_type == "Add":
                q = next((g.producer_of(i) for i in pn.input if g.producer_of(i) is not None), None)
            if q is not None and g.node(q).op_type in ("MatMul", "Gemm"):
                prev = parse_linear(g, q)
                if isinstance(prev, Linear) and prev.out == head.x:
                    return None  # not the head of its chain
        units = [head]
        while True:
            c = g.single_consumer(units[-1].out)
            if (
                c is None
                or g.node(c).op_type not in ("MatMul", "Gemm")
                or g.node(c).input[0] != units[-1].out
            ):
                break
            u = parse_linear(g, c)
            if not isinstance(u, Linear):
                break
            units.append(u)
        return MatMulChainMatch(tuple(units)) if len(units) >= 2 else None

    def check(self, g: Graph, m: MatMulChainMatch) -> Refusal | ChainPlan:
        units = m.units
        rows = _rows(g, units[0].x)
        r = rows or 1

        def cost(i, j):
            return self.cm.matmul_ns(r, units[i].n_in, units[j].n_out)

        segs, best = plan_segments(len(units), cost)
        separate = sum(cost(i, i) for i in range(len(units)))
        names = [g.label(u.idx) for u in units]
        plan = " + ".join(f"linear {units[i].n_in}x{units[j].n_out}" for i, j in segs)
        decision = (
            f"chain {_chain_text(names)}{_scope(names)}: {plan} (est cost {best / 1e3:.3g} us vs "
            f"separate {separate / 1e3:.3g}{'' if rows else ', rows unknown'})"
        )
        if all(i == j for i, j in segs):
            return f"keeping the linears separate is cheapest [{decision}]"
        return ChainPlan(tuple(segs), decision)

    def rewrite(self, g: Graph, m: MatMulChainMatch, plan: ChainPlan, tally: RewriteTally) -> None:
        units = m.units
        tally.decisions.append(plan.decision)
        for i, j in plan.segments:
            if i == j:
                continue
            _merge_matmul_segment(g, units[i : j + 1])


def _merge_matmul_segment(g: Graph, seg: Sequence[Linear]) -> None:
    """Replace the units of `seg` by one MatMul (+ bias Add), or a Gemm if the segment starts with one."""
    W, b = seg[0].W, seg[0].bias
    for u in seg[1:]:
        W, b = compose_matmul(W, b, u.W, u.bias)
    has_bias = any(u.b is not None for u in seg)
    first = seg[0]
    x, y, dt = first.x, seg[-1].out, first.dtype
    base = g.label(first.idx)
    for u in seg:
        g.remove(u.idx)
        if u.bias_idx is not None:
            g.remove(u.bias_idx)
    wn = g.add_init(W.astype(dt), f"{base}_merged_weight")
    if first.kind == "gemm":
        ins = [x, wn] + ([g.add_init(b.astype(dt), f"{base}_merged_bias")] if has_bias else [])
        g.add(helper.make_node("Gemm", ins, [y], name=g.fresh(f"{base}_merged")))
    elif has_bias:
        mid = g.fresh(y + "_nobias")
        g.add(helper.make_node("MatMul", [x, wn], [mid], name=g.fresh(f"{base}_merged")))
        bn = g.add_init(b.astype(dt), f"{base}_merged_bias")
        g.make_node("Add", [mid, bn], [y], f"{base}_merged/bias")
    else:
        g.add(helper.make_node("MatMul", [x, wn], [y], name=g.fresh(f"{base}_merged")))


def merge_chains(g: Graph, cost_model: CostModel = DEFAULT_COST_MODEL) -> RewriteTally:
    """Run the conv- and matmul-chain merges once over the graph, planned with `cost_model`."""
    tally = RewriteTally()
    run_rules(g, [MergeConvChain(cost_model), MergeMatMulChain(cost_model)], tally)
    return tally


__all__ = ["MergeConvChain", "MergeMatMulChain", "merge_chains", "plan_segments"]
