"""Reading and writing the linear ops the passes fold into: Conv, Gemm, MatMul (+ bias Add).

A *linear unit* is one of
  * ``Conv(x, W[, b])``                                    W: (O, C/groups, kH, kW)
  * ``Gemm(x, B[, C])`` with transA=0                      weight seen as (K, N)
  * ``MatMul(x, W)`` with a constant 2-D W, optionally followed by ``Add(., b)`` with a constant
    broadcast along the last axis (the bias of an exported nn.Linear)   W: (K, N)
Weights are handled in float64 and written back in the model's dtype.

An *affine node* is ``BatchNormalization`` (inference), ``Mul(x, c)`` or ``Add(x, c)`` (either
operand order) with a float constant c.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from updp.identities import bn_to_affine
from updp.onnx_passes._graph import Graph, attr, channel_vector, float_dtype


@dataclass(frozen=True)
class Linear:
    """A parsed linear unit; frozen because rules keep it in their (immutable) match."""

    idx: int  # the Conv / Gemm / MatMul node
    kind: str  # "conv" | "gemm" | "matmul"
    x: str  # data input
    W: np.ndarray  # conv: (O, C/g, kH, kW); gemm/matmul: (K, N); float64
    b: np.ndarray | None  # (O,) / (N,) float64, None if absent
    bias_idx: int | None  # the bias Add of a MatMul unit
    out: str  # output of the whole unit
    dtype: np.dtype

    @property
    def n_out(self) -> int:
        return self.W.shape[0] if self.kind == "conv" else self.W.shape[1]

    @property
    def n_in(self) -> int:
        return self.W.shape[1] if self.kind == "conv" else self.W.shape[0]

    @property
    def bias(self) -> np.ndarray:
        return self.b if self.b is not None else np.zeros(self.n_out)


# Folding or merging constants that hold NaN or ±inf is not exact algebra: a folded ±inf weight
# turns the sum over a channel into inf - inf = NaN where the original computed ±inf, and 0·inf
# where it computed 0.
NOT_FINITE = "{what} holds NaN or an infinite value (folding it would create NaNs the original does not compute)"


def parse_linear(g: Graph, idx: int, *, with_bias_add: bool = True) -> Linear | str | None:
    """The linear unit whose main node is `idx`; a reason string if it is one but unusable;
    None if the node is not a linear op."""
    n = g.node(idx)
    if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2:
        return None
    Wc = g.const(n.input[1])
    if n.op_type == "MatMul" and g.const(n.input[0]) is not None:
        return None  # constant @ x mixes rows of x: not a per-row linear
    if Wc is None:
        return "weight is not a constant"
    if not float_dtype(Wc):
        return "weight is not floating point"
    if len(n.input) > 1 and n.input[1] in g.graph_inputs:
        return "weight is an overridable graph input"
    W = Wc.astype(np.float64)
    if not np.all(np.isfinite(W)):
        return NOT_FINITE.format(what="weight")
    b = None
    if len(n.input) > 2 and n.input[2]:
        bc = g.const(n.input[2])
        if bc is None:
            return "bias is not a constant"
        b = bc.astype(np.float64)
        if not np.all(np.isfinite(b)):
            return NOT_FINITE.format(what="bias")
    out = n.output[0]
    if n.op_type == "Conv":
        return Linear(idx, "conv", n.input[0], W, b, None, out, Wc.dtype)
    if n.op_type == "Gemm":
        if attr(n, "transA", 0):
            return "Gemm has transA=1"
        if W.ndim != 2:
            return "Gemm weight is not 2-D"
        if attr(n, "transB", 0):
            W = W.T
        W = W * float(attr(n, "alpha", 1.0))
        if b is not None:
            b = b * float(attr(n, "beta", 1.0))
            vec = channel_vector(b, 2, -1, W.shape[1])
            if vec is None:
                return "Gemm bias varies per row"
            b = vec.copy()
        return Linear(idx, "gemm", n.input[0], W, b, None, out, Wc.dtype)
    # MatMul
    if W.ndim != 2:
        return "MatMul weight is not 2-D"
    bias_idx = None
    if with_bias_add:
        a = g.single_consumer(out)
        if a is not None and g.node(a).op_type == "Add":
            an = g.node(a)
            other = an.input[1] if an.input[0] == out else an.input[0]
            c = g.const(other)
            r = g.rank(out)
            if c is not None and float_dtype(c) and (r is not None or c.ndim <= 1):
                vec = channel_vector(c, r if r is not None else 1, -1, W.shape[1])
                if vec is not None:
                    b, bias_idx, out = vec.copy(), a, an.output[0]
    return Linear(idx, "matmul", n.input[0], W, b, bias_idx, out, Wc.dtype)


def conv_params(g: Graph, idx: int) -> tuple[int, tuple, tuple, tuple, str]:
    """(groups, strides, pads, dilations, auto_pad) of a Conv node, with ONNX defaults."""
    n = g.node(idx)
    W = g.const(n.input[1])
    k = W.ndim - 2 if W is not None else 2
    groups = int(attr(n, "group", 1))
    strides = tuple(attr(n, "strides", [1] * k))
    pads = tuple(attr(n, "pads", [0] * (2 * k)))
    dil = tuple(attr(n, "dilations", [1] * k))
    auto_pad = attr(n, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    return groups, strides, pads, dil, auto_pad


def write_linear(g: Graph, lin: Linear, W: np.ndarray, b: np.ndarray | None) -> None:
    """Write new float64 weights back into the unit's node(s), in the model's dtype.

    `b` None leaves the bias as it is (a Gemm's C keeps its beta then, since `lin.b` has beta
    folded in but C does not). A MatMul without a bias Add keeps none unless `b` is given and
    nonzero (the caller then must add an Add node: see `append_bias_add`)."""
    n = g.node(lin.idx)
    dt = lin.dtype
    if lin.kind == "conv":
        g.set_const_input(lin.idx, 1, W.astype(dt))
        if b is not None:
            g.set_const_input(lin.idx, 2, b.astype(dt), base=f"{n.name or 'conv'}_bias")
    elif lin.kind == "gemm":
        Wst = W.T if attr(n, "transB", 0) else W
        g.set_const_input(lin.idx, 1, Wst.astype(dt))
        if attr(n, "alpha") is not None:  # folded into W now; absent means 1 already
            g.set_attribute(lin.idx, "alpha", 1.0)
        if b is not None:
            g.set_const_input(lin.idx, 2, b.astype(dt), base=f"{n.name or 'gemm'}_bias")
            if attr(n, "beta") is not None:  # folded into the new C
                g.set_attribute(lin.idx, "beta", 1.0)
    else:
        g.set_const_input(lin.idx, 1, W.astype(dt))
        if lin.bias_idx is not None and b is not None:
            an = g.node(lin.bias_idx)
            pos = 1 if an.input[0] == n.output[0] else 0
            g.set_const_input(lin.bias_idx, pos, b.astype(dt), base=f"{n.name or 'matmul'}_bias")


def append_bias_add(g: Graph, lin: Linear, b: np.ndarray) -> int:
    """Give a bias-less MatMul unit an Add(b) after it, keeping the unit's output name.

    Returns the index of the new Add (`lin` is frozen: it still describes the unit as it was).
    """
    n = g.node(lin.idx)
    out = n.output[0]
    mid = g.fresh(out + "_nobias")
    g.set_output(lin.idx, 0, mid)
    bname = g.add_init(b.astype(lin.dtype), f"{n.name or 'matmul'}_bias")
    return g.make_node("Add", [mid, bname], [out], f"{n.name or 'MatMul'}/bias")


# ------------------------------------------------------------------------- affine nodes


@dataclass(frozen=True)
class Affine:
    """A parsed affine node; frozen because rules keep it in their (immutable) match."""

    idx: int
    x: str  # data input
    out: str
    const: np.ndarray | None  # Mul/Add constant (raw, broadcastable)
    bn: tuple | None  # (scale, shift) vectors for BatchNormalization (channel axis 1)
    op: str  # "BatchNormalization" | "Mul" | "Add"


def parse_affine(g: Graph, idx: int) -> Affine | None:
    """The affine node at `idx`, or None if it is not one (or is part of a fused GELU)."""
    n = g.node(idx)
    if idx in g.protected():
        return None  # part of a GELU that ORT fuses (see Graph.protected)
    if n.op_type == "BatchNormalization":
        if len(n.input) < 5 or attr(n, "training_mode", 0):
            return None
        if any(o and g.uses(o) for o in n.output[1:]):
            return None
        vals = [g.const(i) for i in n.input[1:5]]
        if any(v is None for v in vals) or not float_dtype(vals[0]):
            return None
        gamma, beta, mean, var = (v.astype(np.float64) for v in vals)
        scale, shift = bn_to_affine(gamma, beta, mean, var, float(attr(n, "epsilon", 1e-5)))
        return Affine(idx, n.input[0], n.output[0], None, (scale, shift), n.op_type)
    if n.op_type in ("Mul", "Add") and len(n.input) == 2:
        c0, c1 = g.const(n.input[0]), g.const(n.input[1])
        if (c0 is None) == (c1 is None):
            return None
        c, x = (c1, n.input[0]) if c1 is not None else (c0, n.input[1])
        if not float_dtype(c) or sum(d > 1 for d in c.shape) > 1:
            return None  # position-dependent constant (e.g. a border field): not a channel affine
        return Affine(idx, x, n.output[0], c.astype(np.float64), None, n.op_type)
    return None


def affine_vectors(
    g: Graph, a: Affine, rank: int | None, axis: int, channels: int
) -> tuple[np.ndarray, np.ndarray] | str:
    """(scale, shift) as (channels,) vectors acting on `axis` of a rank-`rank` tensor, or a reason.

    `rank` None means unknown; then only constants of rank <= 1 on the last axis are accepted.
    """
    if a.bn is not None:
        r = rank if rank is not None else None
        if r is None:
            return "rank of the BatchNormalization input is unknown"
        if axis % r != 1:
            return "BatchNormalization acts on axis 1, not on the linear op's channel axis"
        if a.bn[0].shape[0] != channels:
            return "channel count mismatch"
        if not (np.all(np.isfinite(a.bn[0])) and np.all(np.isfinite(a.bn[1]))):
            return NOT_FINITE.format(what="BatchNormalization scale or shift")
        return a.bn
    c = a.const
    if rank is None:
        if axis != -1 or c.ndim > 1:
            return "rank of the tensor is unknown"
        rank = max(c.ndim, 1)
    vec = channel_vector(c, rank, axis, channels)
    if vec is None:
        if c.ndim > rank:
            return "constant broadcasts the tensor to a higher rank"
        return f"constant of shape {tuple(c.shape)} is not per-channel along axis {axis} of rank {rank}"
    if not np.all(np.isfinite(vec)):
        return NOT_FINITE.format(what=f"{a.op} constant")
    if a.op == "Mul":
        return vec, np.zeros(channels)
    return np.ones(channels), vec


def through_reshape(g: Graph, name: str) -> tuple[int | None, int | None]:
    """If the only reader of `name` is a Reshape keeping the last dimension (static shapes), return
    (reshape_idx, its single reader); else (None, single reader of name)."""
    c = g.single_consumer(name)
    if c is None or g.node(c).op_type != "Reshape":
        return None, c
    r = g.node(c)
    si, so = g.shape(r.input[0]), g.shape(r.output[0])
    if si is None or so is None or len(si) < 1 or len(so) < 1 or si[-1] != so[-1]:
        return None, c
    return c, g.single_consumer(r.output[0])
