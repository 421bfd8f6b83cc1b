"""Fixtures for the ONNX pass tests: tiny graphs built inline with onnx.helper, and the checks every
rewrite must pass (full ONNX checker, outputs equal to the original).

The helpers are fixtures (not an importable module) so that test modules in other folders of
`tests/` never shadow them: without `__init__.py` files, pytest imports test folders by their
basename, and a shared helper module name would clash.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from updp.onnx_passes import OptimizeResult, optimize_model
from updp.verify import check_equivalence

OPSET = 18


class Builder:
    """Accumulates nodes and float32 initializers; `model()` returns a checked ModelProto.

    Weights are random (seeded), so a fold that mixes up channels or drops a bias changes the
    outputs and fails the equivalence check.
    """

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


# ------------------------------------------------------------------------- plain helpers


def make_impulse_feeds(name: str, shape: tuple, limit: int | None = None) -> list[dict[str, np.ndarray]]:
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


def count_ops(model: onnx.ModelProto) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in model.graph.node:
        out[n.op_type] = out.get(n.op_type, 0) + 1
    return out


def optimize_checked(model: onnx.ModelProto, feeds=None, **options) -> OptimizeResult:
    """Optimize, then insist: full checker passes, outputs equal (random and `feeds`), JSON-able."""
    res = optimize_model(model, **options)
    onnx.checker.check_model(res.model, full_check=True)
    check_equivalence(model, res.model)
    if feeds:
        check_equivalence(model, res.model, feeds=feeds)
    json.dumps(res.to_dict())
    return res


def optimize_unchanged(model: onnx.ModelProto, **options) -> OptimizeResult:
    """Optimize and insist that nothing changed (a negative test); the model bytes stay the same
    up to the passes' normal write-back (same nodes, same initializers)."""
    res = optimize_model(model, **options)
    assert not res.changed, res.applied
    assert res.nodes_after == res.nodes_before
    assert [n.SerializeToString() for n in res.model.graph.node] == [
        n.SerializeToString() for n in model.graph.node
    ]
    return res


def check_refused(res: OptimizeResult, rule: str, text: str) -> None:
    """Assert that `rule` reported a refusal containing `text` (the format is "rule @ node: reason")."""
    assert any(r.startswith(f"{rule} @ ") and text in r for r in res.refusals), res.refusals


# ------------------------------------------------------------------------- model factories


def build_mbv2_block(c=8, t=6, stride=1, hw=(5, 6), residual=True, seed=0) -> onnx.ModelProto:
    """MobileNetV2 inverted residual: PW(C->tC)+BN -> DW3x3+BN -> PW(tC->C)+BN [-> Add(x)]."""
    b = Builder(seed)
    h = c * t
    y = b.bn(b.conv("x", c, h, 1, bias=True, name="/blk/pw/Conv"), h)
    y = b.bn(b.conv(y, h, h, 3, stride=stride, pad=1, groups=h, name="/blk/dw/Conv"), h)
    y = b.bn(b.conv(y, h, c, 1, name="/blk/pwl/Conv"), c)
    if residual:
        y = b.op("Add", ["x", y], "/blk/Add")
    b.rename_output(y, "y")
    return b.model({"x": (1, c) + hw}, {"y": None})


def build_convnext_block(c=32, hw=(6, 7), interior=None, seed=6) -> onnx.ModelProto:
    """ConvNeXt block with LN replaced by BN: DW7x7 -> permute -> [interior] -> norm -> MLP -> gamma
    -> permute back -> Add(x)."""
    b = Builder(seed)
    y = b.conv("x", c, c, 7, groups=c, name="/stages.0/blocks.3/conv_dw/Conv")
    y = b.op("Transpose", [y], "/stages.0/blocks.3/Transpose", perm=[0, 2, 3, 1])
    if interior:
        y = interior(b, y)
    y = b.bn_as_mul_add(y, c, shape=(c,))  # LN -> BN, channels-last: constants on the last axis
    y = b.matmul(y, c, 4 * c, name="/stages.0/blocks.3/mlp/fc1")
    y = b.matmul(y, 4 * c, c, name="/stages.0/blocks.3/mlp/fc2")
    y = b.op("Mul", [y, b.const(b.rand(c))], "/stages.0/blocks.3/Mul")  # gamma
    y = b.op("Transpose", [y], "/stages.0/blocks.3/Transpose_1", perm=[0, 3, 1, 2])
    b.rename_output(b.op("Add", ["x", y], "/stages.0/blocks.3/Add"), "y")
    return b.model({"x": (1, c) + hw}, {"y": None})


def build_vit_mlp(d=16, n=5, hidden=64, seed=8) -> onnx.ModelProto:
    """ViT MLP with BN over tokens (transpose sandwich) and a residual."""
    b = Builder(seed)
    y = b.op("Transpose", ["x"], "/blocks.2/Transpose", perm=[0, 2, 1])
    y = b.bn(y, d, "/blocks.2/norm2/BatchNormalization")
    y = b.op("Transpose", [y], "/blocks.2/Transpose_1", perm=[0, 2, 1])
    y = b.matmul(y, d, hidden, name="/blocks.2/mlp/fc1")
    y = b.matmul(y, hidden, d, name="/blocks.2/mlp/fc2")
    b.rename_output(b.op("Add", ["x", y], "/blocks.2/Add"), "y")
    return b.model({"x": (2, n, d)}, {"y": None})


def weight_of_node(model: onnx.ModelProto, node: onnx.NodeProto) -> np.ndarray:
    """The initializer read by input 1 (the weight) of `node`."""
    inits = {t.name: t for t in model.graph.initializer}
    return numpy_helper.to_array(inits[node.input[1]])


# ------------------------------------------------------------------------- fixtures


@pytest.fixture
def builder() -> Builder:
    """A fresh graph builder with seed 0."""
    return Builder(seed=0)


@pytest.fixture
def make_builder() -> Callable[[int], Builder]:
    """`make_builder(seed)`: a fresh graph builder with that seed (tests keep distinct weights)."""
    return Builder


@pytest.fixture
def optimized() -> Callable[..., OptimizeResult]:
    """`optimized(model, feeds=None, **options)`: optimize and insist the result is valid and equal."""
    return optimize_checked


@pytest.fixture
def unchanged() -> Callable[..., OptimizeResult]:
    """`unchanged(model, **options)`: optimize and insist nothing changed."""
    return optimize_unchanged


@pytest.fixture
def assert_refused() -> Callable[[OptimizeResult, str, str], None]:
    """`assert_refused(res, rule, text)`: the rule reported a refusal containing `text`."""
    return check_refused


@pytest.fixture
def impulse_feeds() -> Callable[..., list[dict[str, np.ndarray]]]:
    """`impulse_feeds(name, (n, c, h, w), limit=None)`: one-hot feeds, one per pixel, plus zeros."""
    return make_impulse_feeds


@pytest.fixture
def op_counts() -> Callable[[onnx.ModelProto], dict[str, int]]:
    """`op_counts(model)`: node count per op type."""
    return count_ops


@pytest.fixture
def weight_of() -> Callable[[onnx.ModelProto, onnx.NodeProto], np.ndarray]:
    """`weight_of(model, node)`: the weight initializer of a Conv/MatMul/Gemm node."""
    return weight_of_node


@pytest.fixture
def mbv2_block() -> Callable[..., onnx.ModelProto]:
    """`mbv2_block(c=8, t=6, stride=1, hw=(5, 6), residual=True, seed=0)`: see `build_mbv2_block`."""
    return build_mbv2_block


@pytest.fixture
def convnext_block() -> Callable[..., onnx.ModelProto]:
    """`convnext_block(c=32, hw=(6, 7), interior=None, seed=6)`: see `build_convnext_block`."""
    return build_convnext_block


@pytest.fixture
def vit_mlp() -> Callable[..., onnx.ModelProto]:
    """`vit_mlp(d=16, n=5, hidden=64, seed=8)`: see `build_vit_mlp`."""
    return build_vit_mlp
