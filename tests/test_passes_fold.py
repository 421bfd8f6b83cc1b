"""BatchNorm / affine / LayerNorm folding: positive, negative (one per precondition), regression."""


import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx_builders import Builder, impulse_feeds, op_counts, optimized, unchanged

# ------------------------------------------------------------------ BN after conv / gemm


@pytest.mark.parametrize("groups", [1, 4])
def test_bn_after_conv_folds(groups):
    b = Builder(1)
    y = b.conv("x", 4, 4, 3, groups=groups, bias=groups == 1, name="/blk/conv/Conv")
    b.rename_output(b.bn(y, 4), "y")
    m = b.model({"x": (1, 4, 5, 6)}, {"y": None})
    res = optimized(m)
    assert op_counts(res.model) == {"Conv": 1}
    assert res.applied["fold_affine_after_linear"] == 1
    assert [n.name for n in res.model.graph.node] == ["/blk/conv/Conv"]


def test_bn_as_mul_add_after_conv_and_layer_scale():
    b = Builder(2)
    y = b.bn_as_mul_add(b.conv("x", 3, 8, 3), 8)
    y = b.op("Mul", [y, b.const(b.rand(8, 1, 1))])  # layer scale, (C,1,1)
    b.rename_output(y, "y")
    res = optimized(b.model({"x": (1, 3, 6, 6)}, {"y": None}))
    assert op_counts(res.model) == {"Conv": 1}


def test_bn_after_gemm_and_bias_add_after_matmul():
    b = Builder(3)
    y = b.op("Gemm", ["x", b.const(b.rand(5, 6)), b.const(b.rand(5))], transB=1)
    y = b.bn(y, 5)
    y = b.op("MatMul", [y, b.const(b.rand(5, 7))])
    y = b.op("Mul", [b.const(b.rand(7)), y])
    b.rename_output(b.op("Add", [y, b.const(b.rand(7))]), "y")
    res = optimized(b.model({"x": (3, 6)}, {"y": None}))
    assert op_counts(res.model) in ({"Gemm": 1}, {"Gemm": 1, "MatMul": 1, "Add": 1})
    assert res.nodes_after < res.nodes_before


# ------------------------------------------------------------------ BN before conv


@pytest.mark.parametrize("stride,pad,k", [(1, 1, 3), (2, 1, 3), (1, 3, 7), (1, 0, 3)])
def test_bn_before_padded_conv_is_exact(stride, pad, k):
    b = Builder(4)
    b.rename_output(b.conv(b.bn("x", 4), 4, 6, k, stride=stride, pad=pad), "y")
    m = b.model({"x": (1, 4, 5, 6)}, {"y": None})
    res = optimized(m, impulse_feeds("x", (1, 4, 5, 6)))
    assert "BatchNormalization" not in op_counts(res.model)
    # the border correction exists exactly when the conv pads
    assert op_counts(res.model).get("Add", 0) == (1 if pad else 0)


def test_bn_before_depthwise_conv_via_mul_add():
    b = Builder(5)
    x = b.bn_as_mul_add("x", 6)
    b.rename_output(b.conv(x, 6, 6, 3, groups=6), "y")
    res = optimized(b.model({"x": (1, 6, 5, 6)}, {"y": None}), impulse_feeds("x", (1, 6, 5, 6)))
    assert op_counts(res.model) == {"Conv": 1, "Add": 1}


def test_affine_before_rank3_matmul():
    b = Builder(6)
    y = b.op("Mul", ["x", b.const(b.rand(8))])
    y = b.op("Add", [y, b.const(b.rand(1, 1, 8))])
    b.rename_output(b.matmul(y, 8, 5, bias=False), "y")
    res = optimized(b.model({"x": (2, 3, 8)}, {"y": None}))
    assert op_counts(res.model) == {"MatMul": 1, "Add": 1}


# ------------------------------------------------------------------ LayerNorm affine


def test_layernorm_affine_into_matmul():
    b = Builder(7)
    y = b.op("LayerNormalization", ["x", b.const(1 + b.rand(8)), b.const(b.rand(8))], axis=-1)
    b.rename_output(b.matmul(y, 8, 6), "y")
    res = optimized(b.model({"x": (2, 3, 8)}, {"y": None}), fold_layernorm_affine=True)
    assert res.applied["fold_layernorm_affine"] == 1
    ln = next(n for n in res.model.graph.node if n.op_type == "LayerNormalization")
    assert len(ln.input) == 2
    gamma = next(t for t in res.model.graph.initializer if t.name == ln.input[1])
    assert np.all(onnx.numpy_helper.to_array(gamma) == 1)


def test_layernorm_beta_into_biasless_matmul_refused():
    """LN applies beta inside its kernel; folding it would add a new Add node after the MatMul."""
    b = Builder(17)
    y = b.op("LayerNormalization", ["x", b.const(1 + b.rand(8)), b.const(b.rand(8))], axis=-1)
    b.rename_output(b.matmul(y, 8, 6, bias=False), "y")
    res = unchanged(b.model({"x": (2, 3, 8)}, {"y": None}), fold_layernorm_affine=True)
    assert any("no bias Add" in r for r in res.refusals), res.refusals


def test_layernorm_gamma_only_into_biasless_matmul():
    """With beta = 0 there is nothing that needs a bias: gamma folds into W."""
    b = Builder(18)
    y = b.op("LayerNormalization", ["x", b.const(1 + b.rand(8)), b.const(np.zeros(8, np.float32))], axis=-1)
    b.rename_output(b.matmul(y, 8, 6, bias=False), "y")
    res = optimized(b.model({"x": (2, 3, 8)}, {"y": None}), fold_layernorm_affine=True)
    assert res.applied["fold_layernorm_affine"] == 1
    assert op_counts(res.model) == {"LayerNormalization": 1, "MatMul": 1}


def test_layernorm_not_last_axis_refused():
    b = Builder(8)
    y = b.op("LayerNormalization", ["x", b.const(1 + b.rand(3, 8)), b.const(b.rand(3, 8))], axis=1)
    b.rename_output(b.matmul(y, 8, 6), "y")
    res = unchanged(b.model({"x": (2, 3, 8)}, {"y": None}), fold_layernorm_affine=True)
    assert any("not the last axis" in r or "(K,) vector" in r for r in res.refusals), res.refusals


def test_layernorm_fold_is_off_by_default():
    b = Builder(19)
    y = b.op("LayerNormalization", ["x", b.const(1 + b.rand(8)), b.const(b.rand(8))], axis=-1)
    b.rename_output(b.matmul(y, 8, 6), "y")
    res = unchanged(b.model({"x": (2, 3, 8)}, {"y": None}))
    assert "fold_layernorm_affine" not in res.applied


# ------------------------------------------------------------------ negatives


def test_bn_before_padded_conv_dynamic_shape_refused():
    b = Builder(9)
    b.rename_output(b.conv(b.bn("x", 4), 4, 4, 3), "y")
    m = b.model({"x": ("N", 4, "H", "W")}, {"y": None})
    res = unchanged(m)
    assert any("dynamic spatial shape" in r for r in res.refusals), res.refusals


def test_weight_not_constant_refused():
    b = Builder(10)
    y = b.op("Conv", ["x", "w"], kernel_shape=[1, 1])
    b.rename_output(b.bn(y, 4), "y")
    m = b.model({"x": (1, 4, 3, 3), "w": (4, 4, 1, 1)}, {"y": None})
    res = unchanged(m)
    assert any("weight is not a constant" in r for r in res.refusals)


def test_intermediate_with_two_consumers_refused():
    b = Builder(11)
    y = b.conv("x", 4, 4, 1)
    b.rename_output(b.bn(y, 4), "y")
    b.rename_output(y, "z")
    res = unchanged(b.model({"x": (1, 4, 3, 3)}, {"y": None, "z": None}))
    assert any("consumers" in r for r in res.refusals), res.refusals


def test_last_axis_constant_on_nchw_is_not_per_channel():
    b = Builder(12)
    y = b.conv("x", 4, 4, 1)
    b.rename_output(b.op("Mul", [y, b.const(b.rand(4))]), "y")  # (C,) broadcasts along W, not C
    res = unchanged(b.model({"x": (1, 4, 4, 4)}, {"y": None}))
    assert any("not per-channel" in r for r in res.refusals), res.refusals


def test_position_dependent_add_is_left_alone():
    b = Builder(13)
    y = b.conv("x", 4, 4, 1)
    b.rename_output(b.op("Add", [y, b.const(b.rand(1, 4, 3, 3))]), "y")
    unchanged(b.model({"x": (1, 4, 3, 3)}, {"y": None}))


def test_bn_training_mode_not_touched():
    b = Builder(14)
    g, be, mu, v = b.bn_stats(4)
    y = b.conv("x", 4, 4, 1)
    b.rename_output(
        b.op("BatchNormalization", [y] + [b.const(a) for a in (g, be, mu, v)], training_mode=1, n_out=3), "y"
    )
    unchanged(b.model({"x": (2, 4, 3, 3)}, {"y": (2, 4, 3, 3)}))


# ------------------------------------------------------------------ regressions


def test_shared_weight_is_not_changed_for_the_other_user():
    b = Builder(15)
    W = b.const(b.rand(4, 4, 1, 1), "shared_w")
    y1 = b.op("Conv", ["x", W], kernel_shape=[1, 1])
    b.rename_output(b.bn(y1, 4), "y")
    b.rename_output(b.op("Conv", ["x", W], kernel_shape=[1, 1]), "z")
    m = b.model({"x": (1, 4, 3, 3)}, {"y": None, "z": None})
    res = optimized(m)
    assert "BatchNormalization" not in op_counts(res.model)
    names = {n.name: n for n in res.model.graph.node}
    assert "shared_w" in [i for n in names.values() for i in n.input]
    w = next(t for t in res.model.graph.initializer if t.name == "shared_w")
    np.testing.assert_array_equal(
        onnx.numpy_helper.to_array(w),
        onnx.numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "shared_w")),
    )


def test_name_clash_with_generated_names():
    b = Builder(16)
    y = b.conv(b.bn("x", 4), 4, 4, 3, name="/blk/Conv")
    # occupy the names the fold would generate
    b.const(np.zeros(1), "/blk/Conv_border_bias")
    b.rename_output(b.op("Add", [y, b.const(np.zeros(1), "/blk/Conv_out0_interior")]), "y")
    m = b.model({"x": (1, 4, 5, 5)}, {"y": None})
    optimized(m, impulse_feeds("x", (1, 4, 5, 5), limit=10))


def test_constant_nodes_identity_dropout_sub_div():
    b = Builder(17)
    c = b.op(
        "Constant", [], value=helper.make_tensor("v", TensorProto.FLOAT, [1, 4, 1, 1], b.rand(4).tolist())
    )
    y = b.op("Identity", [b.conv("x", 4, 4, 1)])
    y = b.op("Dropout", [y])
    y = b.op("Sub", [y, c])
    y = b.op("Div", [y, b.const(1 + np.abs(b.rand(1, 4, 1, 1)))])
    b.rename_output(y, "y")
    res = optimized(b.model({"x": (1, 4, 3, 3)}, {"y": None}))
    assert op_counts(res.model) == {"Conv": 1}


# ------------------------------------------------------------------ neutral elementwise


def test_add_zero_and_mul_one_removed():
    b = Builder(21)
    h = b.op("Add", ["x", b.const(np.zeros(8, np.float32))])
    h = b.op("Relu", [h])
    h = b.op("Mul", [b.const(np.ones((1, 1, 8), np.float32)), h])
    b.rename_output(b.op("Relu", [h]), "y")
    res = optimized(b.model({"x": (2, 3, 8)}, {"y": None}))
    assert op_counts(res.model) == {"Relu": 2}
    assert res.applied["remove_neutral_elementwise"] == 2


def test_add_zero_that_broadcasts_is_kept():
    b = Builder(22)
    h = b.op("Add", ["x", b.const(np.zeros((3, 8), np.float32))])
    b.rename_output(b.op("Relu", [h]), "y")
    res = unchanged(b.model({"x": (1, 8)}, {"y": None}))
    assert any("broadcast" in r for r in res.refusals), res.refusals


def test_add_zero_as_graph_output_is_renamed_not_dropped():
    b = Builder(23)
    h = b.op("Relu", ["x"])
    b.rename_output(b.op("Add", [h, b.const(np.zeros(8, np.float32))]), "y")
    res = optimized(b.model({"x": (2, 8)}, {"y": None}))
    assert op_counts(res.model) == {"Relu": 1}
    assert res.model.graph.output[0].name == "y"
