"""Linear-chain merging, channels-last sandwiches, residual folds and the pipeline contract."""


import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnx_builders import Builder, impulse_feeds, op_counts, optimized

from updp.onnx_passes import optimize_model
from updp.onnx_passes.cost import CostModel
from updp.verify import check_equivalence


def weight_of(model, node):
    inits = {t.name: t for t in model.graph.initializer}
    return numpy_helper.to_array(inits[node.input[1]])


# ------------------------------------------------------------------ MobileNetV2-like


def mbv2_block(c=8, t=6, stride=1, hw=(5, 6), residual=True, seed=0):
    b = Builder(seed)
    h = c * t
    y = b.bn(b.conv("x", c, h, 1, bias=True, name="/blk/pw/Conv"), h)
    y = b.bn(b.conv(y, h, h, 3, stride=stride, pad=1, groups=h, name="/blk/dw/Conv"), h)
    y = b.bn(b.conv(y, h, c, 1, name="/blk/pwl/Conv"), c)
    if residual:
        y = b.op("Add", ["x", y], "/blk/Add")
    b.rename_output(y, "y")
    return b.model({"x": (1, c) + hw}, {"y": None})


@pytest.mark.parametrize("stride", [1, 2])
def test_mbv2_t6_merges_to_one_dense_conv(stride):
    m = mbv2_block(stride=stride, residual=stride == 1)
    res = optimized(m, impulse_feeds("x", (1, 8, 5, 6)))
    convs = [n for n in res.model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 1
    assert weight_of(res.model, convs[0]).shape == (8, 8, 3, 3)
    assert convs[0].name.startswith("/blk/pw/Conv")
    assert "merge_conv_chain" in res.applied
    if stride == 1:
        assert res.applied.get("fold_residual") == 1
    assert any("dense 3x3" in d for d in res.decisions), res.decisions


def test_mbv2_t1_dw_pw_kept_separate():
    b = Builder(1)
    y = b.bn(b.conv("x", 32, 32, 3, groups=32, name="/blk/dw/Conv"), 32)
    b.rename_output(b.bn(b.conv(y, 32, 16, 1, name="/blk/pw/Conv"), 16), "y")
    # realistic size: at 8x8 per-op overhead dominates and merging is (correctly) cheaper
    res = optimized(b.model({"x": (1, 32, 56, 56)}, {"y": None}))
    assert op_counts(res.model) == {"Conv": 2}
    assert any("separate is cheapest" in r for r in res.refusals), res.refusals


def test_resnet_basic_3x3_3x3_refused():
    b = Builder(2)
    y = b.bn(b.conv("x", 8, 8, 3), 8)
    y = b.bn(b.conv(y, 8, 8, 3), 8)
    b.rename_output(b.op("Add", ["x", y]), "y")
    res = optimized(b.model({"x": (1, 8, 6, 6)}, {"y": None}))
    assert op_counts(res.model) == {"Conv": 2, "Add": 1}
    assert any("zero padding between convs is not exact" in r for r in res.refusals), res.refusals


def test_resnet_bottleneck_merge_is_exact_when_forced():
    """With a cost model that favours merging, PW -> 3x3 stride 2 -> PW becomes one conv, exactly."""
    b = Builder(3)
    y = b.conv("x", 16, 4, 1, bias=False)  # no bias through the padding: no border Add
    y = b.conv(y, 4, 4, 3, stride=2, pad=1)
    b.rename_output(b.conv(y, 4, 16, 1), "y")
    m = b.model({"x": (1, 16, 5, 6)}, {"y": None})
    res = optimize_model(m, cost_model=CostModel(op_overhead_ns=1e9))
    assert op_counts(res.model).get("Conv") == 1
    check_equivalence(m, res.model, feeds=impulse_feeds("x", (1, 16, 5, 6)))


def test_chain_intermediate_graph_output_not_merged():
    b = Builder(4)
    y = b.conv("x", 8, 48, 1)
    b.rename_output(y, "mid")
    b.rename_output(b.conv("mid", 48, 8, 1), "y")
    res = optimize_model(b.model({"x": (1, 8, 4, 4)}, {"y": None, "mid": None}))
    assert op_counts(res.model) == {"Conv": 2}


def test_depthwise_chain_stays_depthwise():
    b = Builder(5)
    y = b.conv("x", 8, 8, 3, groups=8, pad=0)
    b.rename_output(b.conv(y, 8, 8, 3, groups=8, pad=0), "y")
    m = b.model({"x": (1, 8, 7, 7)}, {"y": None})
    res = optimize_model(m, cost_model=CostModel(op_overhead_ns=1e9))
    (conv,) = [n for n in res.model.graph.node if n.op_type == "Conv"]
    assert weight_of(res.model, conv).shape == (8, 1, 5, 5)
    check_equivalence(m, res.model, feeds=impulse_feeds("x", (1, 8, 7, 7)))


# ------------------------------------------------------------------ ConvNeXt-like sandwich


def convnext_block(c=32, hw=(6, 7), interior=None, seed=6):
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


def test_convnext_pruned_block_becomes_dw_plus_pw():
    m = convnext_block()
    res = optimized(m, impulse_feeds("x", (1, 32, 6, 7)))
    assert op_counts(res.model) == {"Conv": 2, "Add": 1}
    dw, pw = [n for n in res.model.graph.node if n.op_type == "Conv"]
    assert weight_of(res.model, dw).shape == (32, 1, 7, 7)
    assert weight_of(res.model, pw).shape == (32, 32, 1, 1)
    assert dw.name == "/stages.0/blocks.3/conv_dw/Conv"
    assert pw.name.startswith("/stages.0/blocks.3/")
    assert res.applied["channels_last_to_nchw"] == 1
    assert any("DW7x7 + PW 32x32" in d for d in res.decisions), res.decisions


def test_convnext_real_size_decision():
    res = optimized(convnext_block(c=96, hw=(14, 14)))
    assert op_counts(res.model) == {"Conv": 2, "Add": 1}
    assert any("DW7x7 + PW 96x96" in d and "fully merged" in d for d in res.decisions)


@pytest.mark.parametrize("op", ["Relu", "LayerNormalization"])
def test_sandwich_with_nonlinear_interior_refused(op):
    def interior(b, y):
        if op == "Relu":
            return b.op("Relu", [y])
        return b.op("LayerNormalization", [y, b.const(np.ones(32))], axis=-1)

    res = optimized(convnext_block(interior=interior))
    assert op_counts(res.model)["Transpose"] == 2
    assert any("channels_last_to_nchw" in r and op in r for r in res.refusals), res.refusals


def test_transpose_pair_cancels():
    b = Builder(7)
    y = b.op("Transpose", [b.conv("x", 4, 4, 1)], perm=[0, 2, 3, 1])
    y = b.op("Transpose", [y], perm=[0, 3, 1, 2])
    b.rename_output(b.conv(y, 4, 4, 3), "y")
    res = optimized(b.model({"x": (1, 4, 5, 5)}, {"y": None}))
    assert "Transpose" not in op_counts(res.model)


# ------------------------------------------------------------------ ViT-like token MLP


def vit_mlp(d=16, n=5, hidden=64, seed=8):
    b = Builder(seed)
    y = b.op("Transpose", ["x"], "/blocks.2/Transpose", perm=[0, 2, 1])
    y = b.bn(y, d, "/blocks.2/norm2/BatchNormalization")
    y = b.op("Transpose", [y], "/blocks.2/Transpose_1", perm=[0, 2, 1])
    y = b.matmul(y, d, hidden, name="/blocks.2/mlp/fc1")
    y = b.matmul(y, hidden, d, name="/blocks.2/mlp/fc2")
    b.rename_output(b.op("Add", ["x", y], "/blocks.2/Add"), "y")
    return b.model({"x": (2, n, d)}, {"y": None})


def test_vit_mlp_and_residual_fold_to_one_linear():
    m = vit_mlp()
    res = optimized(m)
    assert op_counts(res.model) == {"MatMul": 1, "Add": 1}
    mm = next(n for n in res.model.graph.node if n.op_type == "MatMul")
    assert mm.name.startswith("/blocks.2/mlp/fc1")
    assert res.applied["fold_residual"] == 1


def test_vit_mlp_onnxsim_gemm_form():
    """onnx-simplifier turns the MLP into Reshape -> Gemm -> Gemm -> Reshape."""
    b = Builder(9)
    d, n = 16, 5
    shp = b.const(np.array([-1, d]), "flat")
    y = b.op("Reshape", ["x", "flat"])
    y = b.op("Gemm", [y, b.const(b.rand(d, 64)), b.const(b.rand(64))], "Gemm_1")
    y = b.op("Gemm", [y, b.const(b.rand(16, 64)), b.const(b.rand(16))], "Gemm_2", transB=1)
    y = b.op("Reshape", [y, "back"])
    b.rename_output(b.op("Add", ["x", y]), "y")
    b.inits = [
        t if t.name != "flat" else numpy_helper.from_array(np.array([-1, d], np.int64), "flat")
        for t in b.inits
    ]
    b.inits.append(numpy_helper.from_array(np.array([2, n, d], np.int64), "back"))
    del shp
    res = optimized(b.model({"x": (2, n, d)}, {"y": None}))
    assert op_counts(res.model) == {"Reshape": 2, "Gemm": 1}


def test_matmul_bottleneck_kept_separate():
    b = Builder(10)
    y = b.matmul("x", 384, 32)
    b.rename_output(b.matmul(y, 32, 384), "y")
    res = optimized(b.model({"x": (1, 196, 384)}, {"y": None}))
    # the first bias moves into the second (b1 W2 + b2); the product is not formed
    assert op_counts(res.model) == {"MatMul": 2, "Add": 1}
    assert any("separate is cheapest" in r for r in res.refusals), res.refusals


# ------------------------------------------------------------------ residual folds


@pytest.mark.parametrize("groups", [1, 8])
def test_residual_into_conv_centre(groups):
    b = Builder(11)
    b.rename_output(b.op("Add", [b.conv("x", 8, 8, 3, groups=groups), "x"]), "y")
    res = optimized(b.model({"x": (1, 8, 5, 6)}, {"y": None}), impulse_feeds("x", (1, 8, 5, 6)))
    assert op_counts(res.model) == {"Conv": 1}


@pytest.mark.parametrize("case", ["strided", "other_input", "channels", "pad"])
def test_residual_refusals(case):
    b = Builder(12)
    if case == "strided":
        y = b.conv("x", 8, 8, 3, stride=2)
        y = b.op("Add", [b.op("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1]), y])
    elif case == "other_input":
        y = b.op("Add", [b.op("Relu", ["x"]), b.conv("x", 8, 8, 3)])
    elif case == "channels":
        y = b.op("Add", [b.conv("x", 8, 8, 1), b.conv(b.conv("x", 8, 4, 1), 4, 8, 1)])
    else:
        y = b.op(
            "Add",
            ["x", b.op("Conv", ["x", b.const(b.rand(8, 8, 3, 3))], kernel_shape=[3, 3], pads=[2, 0, 0, 2])],
        )
    b.rename_output(y, "y")
    m = b.model({"x": (1, 8, 5, 6)}, {"y": None})
    res = optimize_model(m)
    assert res.applied.get("fold_residual") is None
    check_equivalence(m, res.model)


# ------------------------------------------------------------------ pipeline contract


def test_pipeline_contract_idempotent_and_clean():
    m = mbv2_block(c=8, t=6)
    m.graph.value_info.append(
        helper.make_tensor_value_info("/blk/dw/Conv_out0", onnx.TensorProto.FLOAT, [1, 48, 5, 6])
    )
    res = optimized(m)
    d = res.to_dict()
    for k in (
        "changed",
        "nodes_before",
        "nodes_after",
        "ops_before",
        "ops_after",
        "applied",
        "refusals",
        "decisions",
    ):
        assert k in d
    assert res.nodes_after < res.nodes_before
    assert [i.name for i in res.model.graph.input] == ["x"]
    assert [o.name for o in res.model.graph.output] == ["y"]
    produced = {o for n in res.model.graph.node for o in n.output}
    assert all(v.name in produced for v in res.model.graph.value_info)
    used = {i for n in res.model.graph.node for i in n.input}
    assert all(t.name in used for t in res.model.graph.initializer)
    again = optimize_model(res.model)
    assert not again.changed
    assert len(m.graph.node) == res.nodes_before  # the input model is untouched
