"""Canonical form for the other passes: constants as initializers, no no-op nodes.

Rules:

``constant_to_initializer``
    Before: ``Constant(value=T) -> y``.  After: initializer ``y = T``.
    Conditions: the value is a dense tensor (or value_float(s)/value_int(s)); ``y`` is not a
    graph output.

``remove_identity`` / ``remove_dropout``
    Before: ``x -> Identity -> y`` (or inference ``Dropout``).  After: readers of ``y`` read ``x``.
    Conditions: Dropout's mask output is unused and ``training_mode`` is absent or constant false;
    if ``y`` is a graph output, the producer of ``x`` must be renameable (``x`` has one reader and
    is not itself a graph output).

``sub_const_to_add`` / ``div_const_to_mul``
    Before: ``Sub(x, c)`` / ``Div(x, c)`` with a float constant c.
    After: ``Add(x, -c)`` / ``Mul(x, 1 / c)``, so that affine folds see one form.
    Formula: x - c = x + (-c); x / c = x * (1/c) (rounding differs by at most 1 ulp).

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
"""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from updp.onnx_passes._graph import Graph, PassResult, Rule, _const_node_value, attr, float_dtype, run_rules


class ConstantToInitializer(Rule):
    name = "constant_to_initializer"
    anchors = ("Constant",)

    def match(self, g, idx):
        n = g.node(idx)
        return idx if len(n.output) == 1 and n.output[0] not in g.graph_outputs else None

    def check(self, g, idx):
        if _const_node_value(g.node(idx)) is None:
            return "Constant holds a sparse or string value"
        return None

    def rewrite(self, g, idx, result):
        n = g.node(idx)
        arr = _const_node_value(n)
        name = n.output[0]
        g.remove(idx)
        g.inits[name] = numpy_helper.from_array(arr, name)
        g._arrays[name] = arr


class RemoveIdentity(Rule):
    name = "remove_identity"
    anchors = ("Identity", "Dropout")

    def match(self, g, idx):
        n = g.node(idx)
        if n.op_type == "Dropout":
            if len(n.output) > 1 and n.output[1] and g.uses(n.output[1]):
                return None  # mask is used: not a no-op
            if len(n.input) > 2 and n.input[2]:
                tm = g.const(n.input[2])
                if tm is None or bool(tm):
                    return None  # training mode may be on
        return idx

    def check(self, g, idx):
        n = g.node(idx)
        out, src = n.output[0], n.input[0]
        if out in g.graph_outputs:
            p = g.producer_of(src)
            if p is None or src in g.graph_outputs or len(g.consumers.get(src, ())) != 1:
                return "output is a graph output and its source cannot be renamed"
        return None

    def rewrite(self, g, idx, result):
        n = g.node(idx)
        if n.op_type == "Dropout":
            g.truncate_inputs(idx, 1)
        ok = g.bypass(idx, n.input[0])
        assert ok


class RemoveNeutralElementwise(Rule):
    name = "remove_neutral_elementwise"
    anchors = ("Add", "Mul")

    def match(self, g, idx):
        n = g.node(idx)
        if len(n.input) != 2:
            return None
        for k in (0, 1):
            c = g.const(n.input[k])
            if c is None or g.const(n.input[1 - k]) is not None or not float_dtype(c):
                continue
            neutral = 0.0 if n.op_type == "Add" else 1.0
            if c.size and np.all(c == neutral):
                return {"idx": idx, "x": n.input[1 - k], "c": c}
        return None

    def check(self, g, m):
        if m["idx"] in g.protected():
            return "part of a GELU that ORT fuses"
        xs = g.shapes.get(m["x"])
        c = m["c"]
        if c.ndim > 0:
            if xs is None or c.ndim > len(xs):
                return "cannot prove the constant does not broadcast x to a larger shape"
            for dc, dx in zip(reversed(c.shape), reversed(xs)):
                if dc != 1 and not (isinstance(dx, int) and dx == dc):
                    return "the constant may broadcast x to a larger shape"
        n = g.node(m["idx"])
        if n.output[0] in g.graph_outputs:
            p = g.producer_of(m["x"])
            if p is None or m["x"] in g.graph_outputs or len(g.consumers.get(m["x"], ())) != 1:
                return "output is a graph output and its source cannot be renamed"
        return None

    def rewrite(self, g, m, result):
        ok = g.bypass(m["idx"], m["x"])
        assert ok


class ConstArithmetic(Rule):
    """Sub(x, c) -> Add(x, -c); Div(x, c) -> Mul(x, 1/c)."""

    name = "const_arith_to_affine"
    anchors = ("Sub", "Div")

    def match(self, g, idx):
        n = g.node(idx)
        c = g.const(n.input[1])
        if c is None or g.const(n.input[0]) is not None or not float_dtype(c):
            return None
        if idx in g.protected():
            return None  # GELU's `/ sqrt(2)`: ORT fuses the Div form (see Graph.protected)
        return idx

    def check(self, g, idx):
        n = g.node(idx)
        c = g.const(n.input[1])
        if n.op_type == "Div" and np.any(c == 0):
            return "divisor has zeros"
        return None

    def rewrite(self, g, idx, result):
        n = g.node(idx)
        c = g.const(n.input[1]).astype(np.float64)
        dtype = g.const(n.input[1]).dtype
        new = (-c if n.op_type == "Sub" else 1.0 / c).astype(dtype)
        name = g.add_init(new, n.input[1] + ("_neg" if n.op_type == "Sub" else "_recip"))
        g.set_input(idx, 1, name)
        n.op_type = "Add" if n.op_type == "Sub" else "Mul"


def perm_inverse(p):
    inv = [0] * len(p)
    for i, v in enumerate(p):
        inv[v] = i
    return inv


class CancelTransposes(Rule):
    name = "cancel_transposes"
    anchors = ("Transpose",)

    def match(self, g, idx):
        n = g.node(idx)
        nxt = g.single_consumer(n.output[0])
        if nxt is None or g.node(nxt).op_type != "Transpose":
            return None
        p, q = attr(n, "perm"), attr(g.node(nxt), "perm")
        if p is None or q is None or list(q) != perm_inverse(list(p)):
            return None
        return idx, nxt

    def check(self, g, m):
        idx, nxt = m
        out = g.node(nxt).output[0]
        src = g.node(idx).input[0]
        if out in g.graph_outputs and (g.producer_of(src) is None or g.uses(src) != 1):
            return "output is a graph output and its source cannot be renamed"
        return None

    def rewrite(self, g, m, result):
        idx, nxt = m
        src = g.node(idx).input[0]
        g.remove(idx)
        g.set_input(nxt, 0, src)  # nxt now reads src directly, then drop it too
        assert g.bypass(nxt, src)


RULES = [ConstantToInitializer(), RemoveIdentity(), RemoveNeutralElementwise(), ConstArithmetic(), CancelTransposes()]


def canonicalize(g: Graph) -> PassResult:
    """Run the canonicalization rules once over the graph."""
    result = PassResult()
    run_rules(g, RULES, result)
    return result
