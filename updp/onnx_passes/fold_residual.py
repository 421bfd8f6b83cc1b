"""Fold a residual connection into the linear op it skips.

``fold_residual_conv``
    Before: ``y = Add(x, Conv(x; W, b) [+ constant border field])`` (either operand order)
    After:  ``y = Conv(x; W + I_centre, b) [+ field]``
    Conditions: the other Add input is literally the conv's input tensor; the conv output has the
    Add as only reader; stride 1, dilation 1, odd kernel, symmetric "same" pads ((k-1)/2), as many
    output as input channels, dense or grouped with O/groups == C/groups (depthwise included);
    constant weight.
    Formula: x + conv(x, W) = conv(x, W + delta) with delta = 1 at the kernel centre on the
    channel diagonal (`identities.add_identity_to_kernel_centre`).

``fold_residual_matmul``
    Before: ``y = Add(x, MatMul(x, W) [+ b])`` or ``Add(x, Gemm(x, W, b))`` or the onnx-simplifier form
    ``Add(x, Reshape(Gemm(Reshape(x, [-1, D]), W, b), shape(x)))``
    After:  ``y = MatMul(x, I + W) [+ b]`` (resp. the Gemm / reshaped Gemm)
    Conditions: the other Add input is literally the linear's input (through the flattening
    Reshape, whose output shape must be restored exactly); square constant weight; one reader per
    intermediate.
    Formula: x + x W + b = x (I + W) + b (`identities.add_identity_to_matmul`).
"""

from __future__ import annotations

from dataclasses import dataclass

from updp.identities import add_identity_to_kernel_centre, add_identity_to_matmul
from updp.onnx_passes._graph import Graph, Refusal, RewriteTally, Rule, run_rules
from updp.onnx_passes._linear import Linear, conv_params, parse_linear, write_linear


def _unit_behind(g: Graph, t: str) -> tuple[Linear, list[int], str] | None:
    """(linear unit, list of node indices between the linear and t, data input seen from t)."""
    p = g.producer_of(t)
    if p is None:
        return None
    pn = g.node(p)
    chain = []
    reshape_in = None
    if pn.op_type == "Reshape":
        chain.append(p)
        reshape_in = pn
        p = g.producer_of(pn.input[0])
        if p is None:
            return None
        pn = g.node(p)
    if pn.op_type == "Add":  # MatMul bias or conv border field
        q = next(
            (
                g.producer_of(i)
                for i in pn.input
                if g.producer_of(i) is not None and g.node(g.producer_of(i)).op_type in ("MatMul", "Conv")
            ),
            None,
        )
        if q is None:
            return None
        lin = parse_linear(g, q)
        if not isinstance(lin, Linear):
            return None
        if lin.kind == "matmul" and lin.bias_idx != p:
            return None
        if lin.kind == "conv":
            other = [i for i in pn.input if g.producer_of(i) != q]
            if len(other) != 1 or g.const(other[0]) is None or g.single_consumer(lin.out) != p:
                return None
        chain.append(p)
        p, pn = q, g.node(q)
    elif pn.op_type in ("MatMul", "Gemm", "Conv"):
        lin = parse_linear(g, p, with_bias_add=False)
        if not isinstance(lin, Linear):
            return None
    else:
        return None
    x = lin.x
    if reshape_in is not None:
        if lin.kind == "conv":
            return None
        r1 = g.producer_of(x)
        if r1 is None or g.node(r1).op_type != "Reshape":
            return None
        chain.append(r1)
        x = g.node(r1).input[0]
    return lin, chain, x


@dataclass(frozen=True)
class ResidualMatch:
    add: int  # the residual Add
    x: str  # its skip input, also the linear's data input
    t: str  # its other input, the end of the linear's branch
    linear: Linear
    chain: tuple[int, ...]  # nodes between the linear and the Add (bias Add, Reshapes)


@dataclass(frozen=True)
class ResidualPlan:
    groups: int  # the conv's groups (1 for a MatMul/Gemm)


class FoldResidual(Rule[ResidualMatch, ResidualPlan]):
    name = "fold_residual"
    anchors = ("Add",)

    def match(self, g: Graph, idx: int) -> ResidualMatch | None:
        n = g.node(idx)
        if len(n.input) != 2 or g.const(n.input[0]) is not None or g.const(n.input[1]) is not None:
            return None
        for k in (0, 1):
            x, t = n.input[k], n.input[1 - k]
            found = _unit_behind(g, t)
            if found is None:
                continue
            lin, chain, data = found
            if data == x:
                return ResidualMatch(idx, x, t, lin, tuple(chain))
        return None

    def check(self, g: Graph, m: ResidualMatch) -> Refusal | ResidualPlan:
        lin, chain = m.linear, m.chain
        # every intermediate from the flattening Reshape to the Add has one reader
        for i in (lin.idx, *chain):
            out = g.node(i).output[0]
            if g.single_consumer(out) is None:
                return f"intermediate {out!r} has {g.uses(out)} consumers"
        if lin.kind == "conv":
            return _check_conv(g, lin)
        if lin.W.shape[0] != lin.W.shape[1]:
            return f"weight {lin.W.shape} is not square"
        if len(chain) and g.node(chain[0]).op_type == "Reshape":
            sx, st = g.shape(m.x), g.shape(m.t)
            if sx is None or st is None or sx != st:
                return "the reshape after the linear does not restore the residual's shape"
        return ResidualPlan(1)

    def rewrite(self, g: Graph, m: ResidualMatch, plan: ResidualPlan, tally: RewriteTally) -> None:
        lin = m.linear
        if lin.kind == "conv":
            W = add_identity_to_kernel_centre(lin.W, plan.groups)
        else:
            W = add_identity_to_matmul(lin.W)
        write_linear(g, lin, W, None)
        y = g.node(m.add).output[0]
        tp = g.producer_of(m.t)
        g.remove(m.add)
        g.set_output(tp, list(g.node(tp).output).index(m.t), y)


def _check_conv(g: Graph, lin: Linear) -> Refusal | ResidualPlan:
    """Can the identity be added at the kernel centre of this conv (size-preserving, square)?"""
    groups, strides, pads, dil, auto_pad = conv_params(g, lin.idx)
    if lin.W.ndim != 4:
        return "not a 2-D conv"
    kh, kw = lin.W.shape[2:]
    if any(s != 1 for s in strides) or any(d != 1 for d in dil):
        return "conv is strided or dilated"
    if kh % 2 == 0 or kw % 2 == 0:
        return "even kernel has no centre"
    if auto_pad == "NOTSET" and list(pads) != [kh // 2, kw // 2, kh // 2, kw // 2]:
        return f"pads {list(pads)} are not 'same' for a {kh}x{kw} kernel"
    if auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER"):
        return f"auto_pad={auto_pad} does not keep the size"
    if lin.W.shape[0] != lin.W.shape[1] * groups or (lin.W.shape[0] // groups) != lin.W.shape[1]:
        return f"output channels {lin.W.shape[0]} != input channels {lin.W.shape[1] * groups} per group"
    return ResidualPlan(groups)


RULES = [FoldResidual()]


def fold_residual(g: Graph) -> RewriteTally:
    """Run the residual fold once over the graph."""
    tally = RewriteTally()
    run_rules(g, RULES, tally)
    return tally
