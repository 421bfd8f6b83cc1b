"""Channel-layout rewrites around Transpose pairs (ConvNeXt's permute sandwich, ViT's BN-over-tokens).

``transposed_bn_to_affine``
    Before: ``x -> Transpose(p) -> BatchNormalization -> Transpose(p^-1) -> y`` with p[1] = last axis
    (e.g. ViT tokens (B, N, D) -> (B, D, N) -> BN over D -> back)
    After:  ``x -> Mul(scale) -> Add(shift) -> y``, both broadcast along the last axis of x
    Conditions: inference BN with constant statistics; both intermediates have one reader.
    Formula: BN over axis 1 of x^T is a per-channel affine of x's last axis (`identities.bn_to_affine`).

``channels_last_to_nchw``
    Before: ``x(N,C,H,W) -> Transpose([0,2,3,1]) -> ops on the last axis -> Transpose([0,3,1,2]) -> y``
    After:  ``x -> the same ops in NCHW -> y`` with MatMul(W: (K, N)) / Gemm -> Conv 1x1 with weight
    W^T[:, :, None, None], Mul/Add constants reshaped to (1, C, 1, 1), Reshapes dropped.
    Conditions: a single path (every intermediate has one reader); every op acts on the last axis
    only: MatMul/Gemm with a constant 2-D weight, Mul/Add/Sub/Div with a float constant varying only
    along the last axis, Reshape keeping the last dimension (then the static shape entering the
    closing Transpose must equal the one leaving the opening Transpose). Anything else (a
    LayerNormalization, a nonlinearity) keeps the sandwich as it is.
    Formula: (x^T W)^T = conv1x1(x, W^T); elementwise ops commute with the transpose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import helper

from updp.onnx_passes._graph import (
    Graph,
    Refusal,
    RewriteTally,
    Rule,
    attr,
    channel_vector,
    float_dtype,
    run_rules,
)
from updp.onnx_passes._linear import Linear, parse_affine, parse_linear
from updp.onnx_passes.canonicalize import perm_inverse

TO_NHWC = [0, 2, 3, 1]
TO_NCHW = [0, 3, 1, 2]
MAX_INTERIOR = 64


# ------------------------------------------------------------------------- BN between transposes


@dataclass(frozen=True)
class TransposedBatchNormMatch:
    t1: int  # Transpose(p) with p[1] = last axis
    bn: int  # BatchNormalization, the only reader of t1
    t2: int  # Transpose(p^-1), the only reader of bn


@dataclass(frozen=True)
class TransposedBatchNormPlan:
    scale: np.ndarray  # (C,) float64, acting on the last axis of t1's input
    shift: np.ndarray


class TransposedBatchNorm(Rule[TransposedBatchNormMatch, TransposedBatchNormPlan]):
    name = "transposed_bn_to_affine"
    anchors = ("Transpose",)

    def match(self, g: Graph, idx: int) -> TransposedBatchNormMatch | None:
        t1 = g.node(idx)
        p = list(attr(t1, "perm", []) or [])
        if len(p) < 3 or p[1] != len(p) - 1:
            return None
        bn = g.single_consumer(t1.output[0])
        if bn is None or g.node(bn).op_type != "BatchNormalization":
            return None
        t2 = g.single_consumer(g.node(bn).output[0])
        if t2 is None or g.node(t2).op_type != "Transpose":
            return None
        if list(attr(g.node(t2), "perm", []) or []) != perm_inverse(p):
            return None
        return TransposedBatchNormMatch(idx, bn, t2)

    def check(self, g: Graph, m: TransposedBatchNormMatch) -> Refusal | TransposedBatchNormPlan:
        a = parse_affine(g, m.bn)
        if a is None:
            return "BatchNormalization is in training mode or its statistics are not constant"
        scale, shift = a.bn
        return TransposedBatchNormPlan(scale, shift)

    def rewrite(
        self, g: Graph, m: TransposedBatchNormMatch, plan: TransposedBatchNormPlan, tally: RewriteTally
    ) -> None:
        t1, bn, t2 = g.node(m.t1), g.node(m.bn), g.node(m.t2)
        dtype = g.const(bn.input[1]).dtype
        x, y, name = t1.input[0], t2.output[0], bn.name or "BatchNormalization"
        for i in (m.t1, m.bn, m.t2):
            g.remove(i)
        s = g.add_init(plan.scale.astype(dtype), f"{name}_scale")
        t = g.add_init(plan.shift.astype(dtype), f"{name}_shift")
        mid = g.fresh(f"{name}_scaled")
        g.make_node("Mul", [x, s], [mid], f"{name}/scale")
        g.make_node("Add", [mid, t], [y], f"{name}/shift")


# ------------------------------------------------------------------------- channels-last sandwich


@dataclass(frozen=True)
class SandwichMatch:
    t1: int  # the opening Transpose([0,2,3,1])
    path: tuple[int, ...]  # the single-reader nodes after it, in order
    t2: int | None  # the closing Transpose([0,3,1,2]); None when the path stops before one
    stop: str | None = None  # why the path stops (then a refusal), else None


@dataclass(frozen=True)
class SandwichOp:
    """One node of the sandwich's interior, as check parsed it."""

    kind: str  # "linear" | "elementwise" | "reshape"
    idx: int
    linear: Linear | None = None  # kind "linear": its weights
    const: np.ndarray | None = None  # kind "elementwise": its raw constant operand


@dataclass(frozen=True)
class SandwichPlan:
    ops: tuple[SandwichOp, ...]  # the interior in path order


def _sandwich_op(g: Graph, i: int, C: int | None, has_reshape: bool) -> Refusal | tuple[SandwichOp, int | None]:
    """Parse one interior node acting on the last axis of a C-channel tensor: (op, C after it)."""
    n = g.node(i)
    op = n.op_type
    if op in ("MatMul", "Gemm"):
        lin = parse_linear(g, i, with_bias_add=False)
        if isinstance(lin, str) or lin is None:
            return f"{op} {n.name!r}: {lin or 'not a linear on the last axis'}"
        if op == "Gemm" and not has_reshape:
            return f"Gemm {n.name!r} on a 4-D tensor"
        if C is not None and lin.n_in != C:
            return f"{op} {n.name!r} expects {lin.n_in} channels, gets {C}"
        return SandwichOp("linear", i, linear=lin), lin.n_out
    if op in ("Mul", "Add", "Sub", "Div"):
        c0, c1 = (g.const(x) for x in n.input[:2])
        if (c0 is None) == (c1 is None):
            return f"{op} {n.name!r} has no constant operand"
        if op in ("Sub", "Div") and c1 is None:
            return f"{op} {n.name!r} has the tensor as second operand"
        c = c1 if c1 is not None else c0
        if not float_dtype(c):
            return f"{op} {n.name!r} is not float math (its constant is {c.dtype})"
        if C is None:
            return "channel count unknown (dynamic shape)"
        if c.ndim > 4 or channel_vector(c, 4, -1, C) is None:
            return f"{op} {n.name!r}: constant {tuple(c.shape)} does not act on the last axis only"
        return SandwichOp("elementwise", i, const=c), C
    if op == "Reshape":
        si, so = g.shape(n.input[0]), g.shape(n.output[0])
        if si is None or so is None or si[-1] != so[-1]:
            return f"Reshape {n.name!r} does not keep the last axis (or shapes unknown)"
        return SandwichOp("reshape", i), C
    return f"{op} {n.name!r} between the transposes is not a last-axis-only linear op"


class ChannelsLastSandwich(Rule[SandwichMatch, SandwichPlan]):
    name = "channels_last_to_nchw"
    anchors = ("Transpose",)

    def match(self, g: Graph, idx: int) -> SandwichMatch | None:
        t1 = g.node(idx)
        if list(attr(t1, "perm", []) or []) != TO_NHWC:
            return None
        path, cur = [], t1.output[0]
        for _ in range(MAX_INTERIOR):
            c = g.single_consumer(cur)
            if c is None:
                if not path:
                    return None
                return SandwichMatch(idx, tuple(path), None, f"intermediate {cur!r} has {g.uses(cur)} consumers")
            cn = g.node(c)
            if cn.op_type == "Transpose" and list(attr(cn, "perm", []) or []) == TO_NCHW:
                return SandwichMatch(idx, tuple(path), c)
            path.append(c)
            cur = cn.output[0]
        return SandwichMatch(idx, tuple(path), None, "no closing Transpose([0,3,1,2]) within reach")

    def check(self, g: Graph, m: SandwichMatch) -> Refusal | SandwichPlan:
        if m.stop is not None:
            return m.stop
        t1 = g.node(m.t1)
        shp = g.shape(t1.input[0])
        ops, has_reshape = [], False
        C = shp[1] if shp is not None and len(shp) == 4 else None
        for i in m.path:
            parsed = _sandwich_op(g, i, C, has_reshape)
            if isinstance(parsed, str):
                return parsed
            op, C = parsed
            has_reshape = has_reshape or op.kind == "reshape"
            ops.append(op)
        if has_reshape:
            s1, s2 = g.shape(t1.output[0]), g.shape(g.node(m.t2).input[0])
            if s1 is None or s2 is None or s1[:3] != s2[:3]:
                return "reshapes inside the sandwich change the N, H, W dims (or shapes unknown)"
        return SandwichPlan(tuple(ops))

    def rewrite(self, g: Graph, m: SandwichMatch, plan: SandwichPlan, tally: RewriteTally) -> None:
        t1, t2 = g.node(m.t1), g.node(m.t2)
        cur, y = t1.input[0], t2.output[0]
        g.remove(m.t1)
        g.remove(m.t2)
        work = [(op, g.node(op.idx)) for op in plan.ops]
        for i in m.path:
            g.remove(i)
        compute = [(op, n) for op, n in work if op.kind != "reshape"]
        if not compute:
            g.make_node("Identity", [cur], [y], t1.name or "Transpose")
            return
        for k, (op, n) in enumerate(compute):
            out = y if k == len(compute) - 1 else g.fresh(n.output[0] + "_nchw")
            name = n.name or n.op_type
            if n.name:
                g.release_name(n.name)  # the old node is gone: the new one keeps its name
            if op.kind == "linear":
                _emit_conv1x1(g, op.linear, n, name, cur, out)
            else:
                _emit_elementwise(g, op.const, n, name, cur, out)
            cur = out


def _emit_conv1x1(g: Graph, lin: Linear, n, name: str, x: str, out: str) -> None:
    """The NCHW form of a last-axis MatMul/Gemm `n`: Conv 1x1 with weight W^T[:, :, None, None]."""
    W = lin.W.T[:, :, None, None].astype(lin.dtype)  # (N, K, 1, 1)
    wn = g.add_init(W, (n.input[1] or name) + "_1x1")
    ins = [x, wn]
    if lin.b is not None:
        ins.append(g.add_init(lin.b.astype(lin.dtype), f"{name}_bias"))
    g.add(
        helper.make_node(
            "Conv",
            ins,
            [out],
            name=g.fresh(name),
            kernel_shape=[1, 1],
            pads=[0, 0, 0, 0],
            strides=[1, 1],
            group=1,
        )
    )


def _emit_elementwise(g: Graph, c: np.ndarray, n, name: str, x: str, out: str) -> None:
    """The NCHW form of a last-axis elementwise op `n`: its constant reshaped to (1, C, 1, 1)."""
    C = c.shape[-1] if c.ndim else 1
    c4 = c.reshape(1, C, 1, 1) if c.size > 1 else c
    cn = g.add_init(c4, (n.input[1] if g.const(n.input[1]) is not None else n.input[0]) + "_nchw")
    tensor_first = g.const(n.input[0]) is None
    ins = [x, cn] if tensor_first else [cn, x]
    g.add(helper.make_node(n.op_type, ins, [out], name=g.fresh(name)))


RULES = [TransposedBatchNorm(), ChannelsLastSandwich()]


def channels_last(g: Graph) -> RewriteTally:
    """Run the channel-layout rules once over the graph."""
    tally = RewriteTally()
    run_rules(g, RULES, tally)
    return tally
