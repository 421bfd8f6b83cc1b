"""Tiny ONNX graphs for pass tests, built inline with onnx.helper."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18


class Builder:
    """Accumulates nodes and float32 initializers; `model()` returns a checked ModelProto."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._k = 0

    def name(self, base: str) -> str:
        self._k += 1
        return f"{base}_{self._k}"

    def const(self, arr, name: str | None = None) -> str:
        name = name or self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name))
        return name

    def rand(self, *shape, scale: float = 0.5) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)

    def op(self, op: str, inputs: list[str], name: str | None = None, n_out: int = 1, **attrs) -> str:
        name = name or self.name(f"/{op}")
        outs = [f"{name}_out{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0]

    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int = 1,
        stride: int = 1,
        pad: int | None = None,
        groups: int = 1,
        bias: bool = True,
        name: str | None = None,
        W=None,
    ) -> str:
        pad = (k // 2) if pad is None else pad
        W = self.rand(cout, cin // groups, k, k) if W is None else W
        ins = [x, self.const(W)]
        if bias:
            ins.append(self.const(self.rand(cout)))
        return self.op(
            "Conv", ins, name, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, group=groups
        )

    def bn_stats(self, c: int):
        """Randomized BN statistics: gamma, beta, mean, var (var in [0.5, 2])."""
        return (
            1 + self.rand(c),
            self.rand(c),
            self.rand(c),
            self.rng.uniform(0.5, 2.0, c).astype(np.float32),
        )

    def bn(self, x: str, c: int, name: str | None = None) -> str:
        g, b, m, v = self.bn_stats(c)
        return self.op("BatchNormalization", [x] + [self.const(a) for a in (g, b, m, v)], name, epsilon=1e-5)

    def bn_as_mul_add(self, x: str, c: int, shape=None) -> str:
        """Eval BN exported as Mul + Add with (1, C, 1, 1) (or `shape`) constants."""
        g, b, m, v = self.bn_stats(c)
        s = g / np.sqrt(v + 1e-5)
        t = b - m * s
        shape = shape or (1, c, 1, 1)
        y = self.op("Mul", [x, self.const(s.reshape(shape))])
        return self.op("Add", [self.const(t.reshape(shape)), y])  # constant first: both orders occur

    def matmul(self, x: str, k: int, n: int, bias: bool = True, name: str | None = None) -> str:
        name = name or self.name("/fc")
        y = self.op("MatMul", [x, self.const(self.rand(k, n))], name + "/MatMul")
        if bias:
            y = self.op("Add", [self.const(self.rand(n)), y], name + "/Add")
        return y

    def model(
        self, inputs: dict[str, tuple], outputs: dict[str, tuple | None], check: bool = True
    ) -> onnx.ModelProto:
        ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs.items()]
        outs = [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s) if s else None)
            for n, s in outputs.items()
        ]
        graph = helper.make_graph(self.nodes, "test", ins, outs, self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        m.ir_version = 9
        if any(s is None for s in outputs.values()):  # fill unknown output shapes by inference
            inferred = onnx.shape_inference.infer_shapes(m)
            known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
            for o in m.graph.output:
                if not o.type.tensor_type.HasField("shape") and o.name in known:
                    o.type.CopyFrom(known[o.name].type)
        if check:
            onnx.checker.check_model(m, full_check=True)
        return m

    def rename_output(self, old: str, new: str) -> None:
        for n in self.nodes:
            for i, o in enumerate(n.output):
                if o == old:
                    n.output[i] = new
            for i, v in enumerate(n.input):
                if v == old:
                    n.input[i] = new


def impulse_feeds(name: str, shape: tuple, limit: int | None = None) -> list[dict[str, np.ndarray]]:
    """One feed per pixel: a single 1 at (0, c, h, w) for every h, w (channel cycling), to catch
    padding, stride and bias-field bugs."""
    n, c, h, w = shape
    feeds = []
    for i in range(h):
        for j in range(w):
            x = np.zeros(shape, np.float32)
            x[0, (i * w + j) % c, i, j] = 1.0
            feeds.append({name: x})
    feeds.append({name: np.zeros(shape, np.float32)})  # the bias field alone
    return feeds[:limit] if limit else feeds


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in model.graph.node:
        out[n.op_type] = out.get(n.op_type, 0) + 1
    return out


def optimized(model: onnx.ModelProto, feeds=None, **options):
    """Optimize, then insist: full checker passes, outputs equal (random and `feeds`), JSON-able."""
    import json

    from updp.onnx_passes import optimize_model
    from updp.verify import check_equivalence

    res = optimize_model(model, **options)
    onnx.checker.check_model(res.model, full_check=True)
    check_equivalence(model, res.model)
    if feeds:
        check_equivalence(model, res.model, feeds=feeds)
    json.dumps(res.to_dict())
    return res


def unchanged(model: onnx.ModelProto, **options):
    """Optimize and insist that nothing changed (a negative test)."""
    from updp.onnx_passes import optimize_model

    res = optimize_model(model, **options)
    assert not res.changed, res.applied
    assert res.nodes_after == res.nodes_before
    return res
