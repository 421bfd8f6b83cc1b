"""Canonical form for the other passes: constants as initializers, no no-op nodes.

Rules:

``constant_to_initializer``
    Before: ``Constant(value=T) -> y``.  After: initializer ``y = T``.
    Conditions: the value is a dense tensor (or value_float(s)/value_int(s)); ``y`` is not a
    graph output.

``remove_identity`` / ``remove_dropout``
    Before: ``x -> Identity -> y`` (or inference ``Dropout``).  After: readers of ``y`` read ``x``.
    Conditions: Dropout's mask output is unused and ``training_mode`` is absent or constant false;
    if ``y`` is a graph output (or read by a subgraph), the producer of ``x`` must be renameable
    (``x`` has one reader and is neither a graph output nor read by a subgraph).

``sub_const_to_add`` / ``div_const_to_mul``
    Before: ``Sub(x, c)`` / ``Div(x, c)`` with a float constant c.
    After: ``Add(x, -c)`` / ``Mul(x, 1 / c)``, so that affine folds see one form.
    Conditions: for Div, every 1/c is a normal float of c's dtype (a subnormal c has an infinite
    reciprocal, a huge one a subnormal reciprocal: x * (1/c) would be inf or lose bits where
    x / c does not). The new constant has c's shape (a 0-d c stays 0-d: the output keeps its rank).
    Formula: x - c = x + (-c) (exact); x / c = x * (1/c) (rounding differs by about 1 ulp).

``remove_neutral_elementwise``
    Before: ``Add(x, 0)`` / ``Mul(x, 1)`` with a constant of zeros / ones.  After: readers read x.
    Conditions: the constant does not broadcast x to a larger shape (it has at most x's rank and
    every dim is 1 or x's known dim); the output is not a graph output whose source cannot be
    renamed. Such Adds come from zero-initialized biases (or a fold that produced zeros).
    Formula: x + 0 = x; x * 1 = x (exact in floating point, including -0.0 + 0 = 0 vs -0.0,
    which no consumer here distinguishes).

``cancel_transposes``
    Before: ``x -> Transpose(p) -> Transpose(q) -> y`` with q o p = identity.  After: ``y = x``.
    Conditions: the intermediate has one reader.

``gelu_constant_last``
    Before: ``Mul(x, Mul(c, 1 + Erf(x / s)))``, the erf GELU in the order torch's torch.export-based
    exporter writes below opset 20.  After: ``Mul(Mul(x, 1 + Erf(x / s)), c)``, the order of the
    TorchScript exporter, which ONNX Runtime fuses into one Gelu kernel (it does not fuse the
    other: measured on a pruned ConvNeXt-T, 18 GELUs left as 5 nodes each and the file 8% slower).
    Conditions: c and s are one-element constants (the shapes stay as they are), the Add adds 1,
    each intermediate has one reader, and c is a power of two (0.5 here).
    Formula: x * (c * a) = (x * a) * c, exact for c = 2^k: scaling by a power of two rounds
    nothing, so both sides round the same product once; they can differ only where a result
    overflows or is subnormal.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from updp.onnx_passes._graph import (
    PROCEED,
    Graph,
    Proceed,
    Refusal,
    RewriteTally,
    Rule,
    attr,
    const_node_value,
    float_dtype,
    run_rules,
)


def _unrenamable_source(g: Graph, out: str, src: str) -> Refusal | None:
    """Why bypassing a node from `src` to `out` would need to rename a tensor that cannot be
    renamed, or None if it would not.

    A graph output, or a tensor a subgraph reads, keeps its name, so the producer of `src` would
    have to be renamed instead, which is only possible if it exists and `src` has no other reader
    (node, graph output or subgraph): the conditions of `Graph.bypass`.
    """
    if out in g.graph_outputs:
        what = "a graph output"
    elif out in g.sub_refs:
        what = "read by a subgraph"
    else:
        return None
    if (
        g.producer_of(src) is None
        or src in g.graph_outputs
        or src in g.sub_refs
        or len(g.consumers.get(src, ())) != 1
    ):
        return f"output is {what} and its source cannot be renamed"
    return None


# ------------------------------------------------------------------------- Constant


@dataclass(frozen=True)
class ConstantMatch:
    idx: int  # the Constant node


@dataclass(frozen=True)
class ConstantPlan:
    value: np.ndarray  # what the initializer will hold


class ConstantToInitializer(Rule[ConstantMatch, ConstantPlan]):
    name = "constant_to_initializer"
    anchors = ("Constant",)

    def match(self, g: Graph, idx: int) -> ConstantMatch | None:
        n = g.node(idx)
        return ConstantMatch(idx) if len(n.output) == 1 and n.output[0] not in g.graph_outputs else None

    def check(self, g: Graph, m: ConstantMatch) -> Refusal | ConstantPlan:
        value = const_node_value(g.node(m.idx))
        if value is None:
            return "Constant holds a sparse or string value"
        return ConstantPlan(value)

    def rewrite(self, g: Graph, m: ConstantMatch, plan: ConstantPlan, tally: RewriteTally) -> None:
        name = g.node(m.idx).output[0]
        g.remove(m.idx)
        g.set_initializer(name, plan.value)


# ------------------------------------------------------------------------- no-op nodes


@dataclass(frozen=True)
class IdentityMatch:
    idx: int  # the Identity or inference Dropout


class RemoveIdentity(Rule[IdentityMatch, Proceed]):
    name = "remove_identity"
    anchors = ("Identity", "Dropout")

    def match(self, g: Graph, idx: int) -> IdentityMatch | None:
        n = g.node(idx)
        if n.op_type == "Dropout":
            if len(n.output) > 1 and n.output[1] and g.uses(n.output[1]):
                return None  # mask is used: not a no-op
            if len(n.input) > 2 and n.input[2]:
                tm = g.const(n.input[2])
                if tm is None or bool(tm):
                    return None  # training mode may be on
        return IdentityMatch(idx)

    def check(self, g: Graph, m: IdentityMatch) -> Refusal | Proceed:
        n = g.node(m.idx)
        why = _unrenamable_source(g, n.output[0], n.input[0])
        if why:
            return why
        return PROCEED

    def rewrite(self, g: Graph, m: IdentityMatch, plan: Proceed, tally: RewriteTally) -> None:
        n = g.node(m.idx)
        if n.op_type == "Dropout":
            g.truncate_inputs(m.idx, 1)
        ok = g.bypass(m.idx, n.input[0])
        assert ok


@dataclass(frozen=True)
class NeutralElementwiseMatch:
    idx: int  # the Add / Mul
    x: str  # its tensor operand
    c: np.ndarray  # its all-zeros (Add) / all-ones (Mul) constant operand


class RemoveNeutralElementwise(Rule[NeutralElementwiseMatch, Proceed]):
    name = "remove_neutral_elementwise"
    anchors = ("Add", "Mul")

    def match(self, g: Graph, idx: int) -> NeutralElementwiseMatch | None:
        n = g.node(idx)
        if len(n.input) != 2:
            return None
        for k in (0, 1):
            c = g.const(n.input[k])
            if c is None or g.const(n.input[1 - k]) is not None or not float_dtype(c):
                continue
            neutral = 0.0 if n.op_type == "Add" else 1.0
            if c.size and np.all(c == neutral):
                return NeutralElementwiseMatch(idx, n.input[1 - k], c)
        return None

    def check(self, g: Graph, m: NeutralElementwiseMatch) -> Refusal | Proceed:
        if m.idx in g.protected():
            return "part of a GELU that ORT fuses"
        xs = g.shapes.get(m.x)
        c = m.c
        if c.ndim > 0:
            if xs is None or c.ndim > len(xs):
                return "cannot prove the constant does not broadcast x to a larger shape"
            for dc, dx in zip(reversed(c.shape), reversed(xs)):
                if dc != 1 and not (isinstance(dx, int) and dx == dc):
                    return "the constant may broadcast x to a larger shape"
        why = _unrenamable_source(g, g.node(m.idx).output[0], m.x)
        if why:
            return why
        return PROCEED

    def rewrite(self, g: Graph, m: NeutralElementwiseMatch, plan: Proceed, tally: RewriteTally) -> None:
        ok = g.bypass(m.idx, m.x)
        assert ok


# ------------------------------------------------------------------------- Sub / Div by a constant


@dataclass(frozen=True)
class ConstArithmeticMatch:
    idx: int  # the Sub / Div whose second operand is a float constant


class ConstArithmetic(Rule[ConstArithmeticMatch, Proceed]):
    """Sub(x, c) -> Add(x, -c); Div(x, c) -> Mul(x, 1/c)."""

    name = "const_arith_to_affine"
    anchors = ("Sub", "Div")

    def match(self, g: Graph, idx: int) -> ConstArithmeticMatch | None:
        n = g.node(idx)
        c = g.const(n.input[1])
        if c is None or g.const(n.input[0]) is not None or not float_dtype(c):
            return None
        if idx in g.protected():
            return None  # GELU's `/ sqrt(2)`: ORT fuses the Div form (see Graph.protected)
        return ConstArithmeticMatch(idx)

    def check(self, g: Graph, m: ConstArithmeticMatch) -> Refusal | Proceed:
        n = g.node(m.idx)
        c = g.const(n.input[1])
        if n.op_type == "Div":
            if np.any(c == 0):
                return "divisor has zeros"
            with np.errstate(over="ignore", divide="ignore"):
                r = (1.0 / c.astype(np.float64)).astype(c.dtype)
            tiny = ml_dtypes.finfo(c.dtype).tiny
            if np.any(np.isinf(r) & np.isfinite(c)) or np.any((r != 0) & (np.abs(r) < tiny)):
                # x * (1/c) then overflows where x / c does not, or loses bits in a subnormal 1/c
                return "the divisor's reciprocal is not a normal float (it overflows or is subnormal)"
        return PROCEED

    def rewrite(self, g: Graph, m: ConstArithmeticMatch, plan: Proceed, tally: RewriteTally) -> None:
        n = g.node(m.idx)
        c = g.const(n.input[1]).astype(np.float64)
        dtype = g.const(n.input[1]).dtype
        sub = n.op_type == "Sub"
        new = (-c if sub else 1.0 / c).astype(dtype)
        name = g.add_init(new, n.input[1] + ("_neg" if sub else "_recip"))
        g.set_input(m.idx, 1, name)
        g.set_op_type(m.idx, "Add" if sub else "Mul")


# ------------------------------------------------------------------------- Transpose pairs


def perm_inverse(p: list[int]) -> list[int]:
    """The permutation that undoes `p` (Transpose(perm_inverse(p)) after Transpose(p) is a no-op)."""
    inv = [0] * len(p)
    for i, v in enumerate(p):
        inv[v] = i
    return inv


@dataclass(frozen=True)
class TransposePairMatch:
    first: int  # Transpose(p)
    second: int  # Transpose(p^-1), the only reader of the first


class CancelTransposes(Rule[TransposePairMatch, Proceed]):
    name = "cancel_transposes"
    anchors = ("Transpose",)

    def match(self, g: Graph, idx: int) -> TransposePairMatch | None:
        n = g.node(idx)
        nxt = g.single_consumer(n.output[0])
        if nxt is None or g.node(nxt).op_type != "Transpose":
            return None
        p, q = attr(n, "perm"), attr(g.node(nxt), "perm")
        if p is None or q is None or list(q) != perm_inverse(list(p)):
            return None
        return TransposePairMatch(idx, nxt)

    def check(self, g: Graph, m: TransposePairMatch) -> Refusal | Proceed:
        out = g.node(m.second).output[0]
        src = g.node(m.first).input[0]
        why = _unrenamable_source(g, out, src)
        if why:
            return why
        return PROCEED

    def rewrite(self, g: Graph, m: TransposePairMatch, plan: Proceed, tally: RewriteTally) -> None:
        src = g.node(m.first).input[0]
        g.remove(m.first)
        g.set_input(m.second, 0, src)  # the second now reads src directly, then drop it too
        assert g.bypass(m.second, src)


# ------------------------------------------------------------------------- GELU's constant factor


def _one_element(c: np.ndarray | None) -> bool:
    return c is not None and c.size == 1 and float_dtype(c)


def _other_operand(n, name: str) -> str:
    """The input of a two-input node that is not `name`."""
    return n.input[1 - list(n.input).index(name)]


@dataclass(frozen=True)
class GeluConstantMatch:
    scale_mul: int  # Mul(c, 1 + erf): the constant factor
    outer_mul: int  # Mul(x, scale_mul's output)
    c_pos: int  # where c sits in scale_mul
    x: str


class GeluConstantLast(Rule[GeluConstantMatch, Proceed]):
    """Mul(x, Mul(c, 1 + Erf(x / s))) -> Mul(Mul(x, 1 + Erf(x / s)), c), the order ORT fuses."""

    name = "gelu_constant_last"
    anchors = ("Erf",)

    def match(self, g: Graph, idx: int) -> GeluConstantMatch | None:
        erf = g.node(idx)
        scaling = g.producer_of(erf.input[0])
        if scaling is None:
            return None
        sc = g.node(scaling)
        if sc.op_type not in ("Div", "Mul") or len(sc.input) != 2:
            return None
        k = 1 if sc.op_type == "Div" else next((k for k in (0, 1) if g.const(sc.input[k]) is not None), None)
        if k is None or not _one_element(g.const(sc.input[k])) or g.const(sc.input[1 - k]) is not None:
            return None
        x = sc.input[1 - k]
        add = g.single_consumer(erf.output[0])
        if add is None or g.node(add).op_type != "Add":
            return None
        a = g.node(add)
        one = g.const(_other_operand(a, erf.output[0]))
        if not _one_element(one) or float(one.reshape(())) != 1.0:
            return None
        scale_mul = g.single_consumer(a.output[0])
        if scale_mul is None or g.node(scale_mul).op_type != "Mul":
            return None
        m1 = g.node(scale_mul)
        c_pos = 1 - list(m1.input).index(a.output[0])  # the rewrite needs the position, not only the name
        if not _one_element(g.const(m1.input[c_pos])):
            return None
        outer_mul = g.single_consumer(m1.output[0])
        if outer_mul is None or g.node(outer_mul).op_type != "Mul":
            return None
        m2 = g.node(outer_mul)
        if _other_operand(m2, m1.output[0]) != x:
            return None
        return GeluConstantMatch(scale_mul, outer_mul, c_pos, x)

    def check(self, g: Graph, m: GeluConstantMatch) -> Refusal | Proceed:
        c = g.const(g.node(m.scale_mul).input[m.c_pos]).astype(np.float64)
        if not np.all(np.isfinite(c)) or np.any(c == 0) or np.any(np.frexp(np.abs(c))[0] != 0.5):
            return "the constant factor is not a power of two: moving it would change the rounding"
        rank = g.rank(m.x)
        if c.ndim > 0 and (rank is None or c.ndim > rank):
            return "cannot prove the constant factor does not raise the rank of the product"
        return PROCEED

    def rewrite(self, g: Graph, m: GeluConstantMatch, plan: Proceed, tally: RewriteTally) -> None:
        inner = g.node(m.scale_mul)
        c, one_plus_erf, product = inner.input[m.c_pos], inner.input[1 - m.c_pos], inner.output[0]
        # exactly the TorchScript exporter's operand order, the one ORT's fusion is known to match
        g.set_input(m.scale_mul, 0, m.x)  # now x * (1 + erf): the shape of x, as before
        g.set_input(m.scale_mul, 1, one_plus_erf)
        g.set_input(m.outer_mul, 0, product)
        g.set_input(m.outer_mul, 1, c)


RULES = [ConstantToInitializer(), RemoveIdentity(), RemoveNeutralElementwise(), ConstArithmetic(), CancelTransposes(),
         GeluConstantLast()]


def canonicalize(g: Graph) -> RewriteTally:
    """Run the canonicalization rules once over the graph."""
    tally = RewriteTally()
    run_rules(g, RULES, tally)
    return tally
