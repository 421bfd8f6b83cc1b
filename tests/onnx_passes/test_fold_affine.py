"""fold_affine: per-channel affines (BN, Mul/Add) folded into the Conv/Gemm/MatMul next to them.

Positive folds, one negative per precondition (nothing changes and the refusal says why), and
regressions (shared weights, generated-name clashes).
"""

import numpy as np
import onnx
import pytest

# ------------------------------------------------------------------ BN after conv / gemm


@pytest.mark.parametrize("groups", [1, 4])
def test_bn_after_conv_folds(groups, make_builder, optimized, op_counts):
    b = make_builder(1)
    y = b.conv("x", 4, 4, 3, groups=groups, bias=groups == 1, name="/blk/conv/Conv")
    b.rename_output(b.bn(y, 4), "y")
    m = b.model({"x": (1, 4, 5, 6)}, {"y": None})
    res = optimized(m)
    assert op_counts(res.model) == {"Conv": 1}
    assert res.applied["fold_affine_after_linear"] == 1
    assert [n.name for n in res.model.graph.node] == ["/blk/conv/Conv"]


def test_bn_as_mul_add_after_conv_and_layer_scale(make_builder, optimized, op_counts):
    b = make_builder(2)
    y = b.bn_as_mul_add(b.conv("x", 3, 8, 3), 8)
    y = b.op("Mul", [y, b.const(b.rand(8, 1, 1))])  # layer scale, (C,1,1)
    b.rename_output(y, "y")
    res = optimized(b.model({"x": (1, 3, 6, 6)}, {"y": None}))
    assert op_counts(res.model) == {"Conv": 1}


def test_bn_after_gemm_and_bias_add_after_matmul(make_builder, optimized, op_counts):
    b = make_builder(3)
    y = b.op("Gemm", ["x", b.const(b.rand(5, 6)), b.const(b.rand(5))], transB=1)
    y = b.bn(y, 5)
    y = b.op("MatMul", [y, b.const(b.rand(5, 7))])
    y = b.op("Mul", [b.const(b.rand(7)), y])
    b.rename_output(b.op("Add", [y, b.const(b.rand(7))]), "y")
    res = optimized(b.model({"x": (3, 6)}, {"y": None}))
    assert op_counts(res.model) in ({"Gemm": 1}, {"Gemm": 1, "MatMul": 1, "Add": 1})
    assert res.nodes_after < res.nodes_before


def test_mul_after_gemm_with_alpha_beta(make_builder, optimized, op_counts):
    """alpha and beta are folded into W and b, and the attributes reset to 1."""
    b = make_builder(31)
    y = b.op("Gemm", ["x", b.const(b.rand(6, 5)), b.const(b.rand(5))], alpha=0.5, beta=2.0)
    b.rename_output(b.op("Mul", [y, b.const(b.rand(5))]), "y")
    res = optimized(b.model({"x": (3, 6)}, {"y": None}))
    assert op_counts(res.model) == {"Gemm": 1}
    (gemm,) = res.model.graph.node
    assert {a.name: a.f for a in gemm.attribute} == {"alpha": 1.0, "beta": 1.0}


# ------------------------------------------------------------------ BN before conv / matmul


@pytest.mark.parametrize("stride,pad,k", [(1, 1, 3), (2, 1, 3), (1, 3, 7), (1, 0, 3)])
def test_bn_before_padded_conv_is_exact(stride, pad, k, make_builder, optimized, op_counts, impulse_feeds):
    b = make_builder(4)
    b.rename_output(b.conv(b.bn("x", 4), 4, 6, k, stride=stride, pad=pad), "y")
    m = b.model({"x": (1, 4, 5, 6)}, {"y": None})
    res = optimized(m, impulse_feeds("x", (1, 4, 5, 6)))
    assert "BatchNormalization" not in op_counts(res.model)
    # the border correction exists exactly when the conv pads
    assert op_counts(res.model).get("Add", 0) == (1 if pad else 0)


def test_bn_before_depthwise_conv_via_mul_add(make_builder, optimized, op_counts, impulse_feeds):
    b = make_builder(5)
    x = b.bn_as_mul_add("x", 6)
    b.rename_output(b.conv(x, 6, 6, 3, groups=6), "y")
    res = optimized(b.model({"x": (1, 6, 5, 6)}, {"y": None}), impulse_feeds("x", (1, 6, 5, 6)))
    assert op_counts(res.model) == {"Conv": 1, "Add": 1}


def test_affine_before_rank3_matmul(make_builder, optimized, op_counts):
    b = make_builder(6)
    y = b.op("Mul", ["x", b.const(b.rand(8))])
    y = b.op("Add", [y, b.const(b.rand(1, 1, 8))])
    b.rename_output(b.matmul(y, 8, 5, bias=False), "y")
    res = optimized(b.model({"x": (2, 3, 8)}, {"y": None}))
    assert op_counts(res.model) == {"MatMul": 1, "Add": 1}


def test_mul_before_matmul_through_reshape(make_builder, optimized, op_counts):
    """A Reshape that keeps the last dim may sit between the affine and the linear."""
    b = make_builder(32)
    y = b.op("Mul", ["x", b.const(b.rand(8))])
    b.inits.append(onnx.numpy_helper.from_array(np.array([6, 8], np.int64), "flat"))
    y = b.op("Reshape", [y, "flat"])
    b.rename_output(b.matmul(y, 8, 5), "y")
    res = optimized(b.model({"x": (2, 3, 8)}, {"y": None}))
    assert res.applied["fold_affine_before_linear"] == 1
    assert op_counts(res.model) == {"Reshape": 1, "MatMul": 1, "Add": 1}


# ------------------------------------------------------------------ negatives: after a linear


def test_weight_not_constant_refused(make_builder, unchanged, assert_refused):
    b = make_builder(10)
    y = b.op("Conv", ["x", "w"], kernel_shape=[1, 1])
    b.rename_output(b.bn(y, 4), "y")
    m = b.model({"x": (1, 4, 3, 3), "w": (4, 4, 1, 1)}, {"y": None})
    res = unchanged(m)
    assert_refused(res, "fold_affine_after_linear", "weight is not a constant")


def test_bias_not_constant_refused(make_builder, unchanged, assert_refused):
    b = make_builder(33)
    y = b.op("Conv", ["x", b.const(b.rand(4, 4, 1, 1)), "bias"], kernel_shape=[1, 1])
    b.rename_output(b.bn(y, 4), "y")
    res = unchanged(b.model({"x": (1, 4, 3, 3), "bias": (4,)}, {"y": None}))
    assert_refused(res, "fold_affine_after_linear", "bias is not a constant")


@pytest.mark.parametrize("where", ["scale after", "shift before", "weight", "bias", "bn"])
def test_a_constant_holding_inf_or_nan_is_not_folded(where, make_builder, unchanged, assert_refused):
    """Folding ±inf or NaN is not exact: a folded inf weight sums to inf - inf = NaN where the
    original computes ±inf. Each place a non-finite value can sit is refused, with that reason."""
    b = make_builder(35)
    bad = b.rand(4)
    bad[1] = np.inf if where != "bias" else np.nan
    w = b.rand(4, 4, 1, 1)
    if where == "weight":
        w[2, 0, 0, 0] = -np.inf
    x = b.op("Add", ["x", b.const(bad.reshape(1, 4, 1, 1))]) if where == "shift before" else "x"
    y = b.op("Conv", [x, b.const(w), *([b.const(bad)] if where == "bias" else [])], kernel_shape=[1, 1])
    if where == "bn":
        g, beta, mean, var = b.bn_stats(4)
        var[0] = 0.0
        y = b.op("BatchNormalization", [y, *(b.const(a) for a in (g, beta, mean, var))], epsilon=0.0)
    elif where == "scale after":
        y = b.op("Mul", [y, b.const(bad.reshape(1, 4, 1, 1))])
    elif where != "shift before":  # an inf weight or bias, and a finite scale after it
        y = b.op("Mul", [y, b.const(b.rand(1, 4, 1, 1))])
    b.rename_output(y, "y")
    res = unchanged(b.model({"x": (1, 4, 3, 3)}, {"y": None}))
    rule = "fold_affine_before_linear" if where == "shift before" else "fold_affine_after_linear"
    assert_refused(res, rule, "holds NaN or an infinite value")


def test_gemm_trans_a_refused(make_builder, unchanged, assert_refused):
    b = make_builder(34)
    y = b.op("Gemm", ["x", b.const(b.rand(6, 5))], transA=1)
    b.rename_output(b.op("Mul", [y, b.const(b.rand(5))]), "y")
    res = unchanged(b.model({"x": (6, 3)}, {"y": None}))
    assert_refused(res, "fold_affine_after_linear", "Gemm has transA=1")


def test_intermediate_with_two_consumers_refused(make_builder, unchanged, assert_refused):
    b = make_builder(11)
    y = b.conv("x", 4, 4, 1)
    b.rename_output(b.bn(y, 4), "y")
    b.rename_output(y, "z")
    res = unchanged(b.model({"x": (1, 4, 3, 3)}, {"y": None, "z": None}))
    assert_refused(res, "fold_affine_after_linear", "consumers")


def test_last_axis_constant_on_nchw_is_not_per_channel(make_builder, unchanged, assert_refused):
    b = make_builder(12)
    y = b.conv("x", 4, 4, 1)
    b.rename_output(b.op("Mul", [y, b.const(b.rand(4))]), "y")  # (C,) broadcasts along W, not C
    res = unchanged(b.model({"x": (1, 4, 4, 4)}, {"y": None}))
    assert_refused(res, "fold_affine_after_linear", "not per-channel")


def test_constant_of_higher_rank_refused(make_builder, unchanged, assert_refused):
    """Mul((3, 5), (1, 1, 5)) makes the output rank 3: the fold would change the output shape."""
    b = make_builder(35)
    y = b.op("MatMul", ["x", b.const(b.rand(6, 5))])
    b.rename_output(b.op("Mul", [y, b.const(b.rand(1, 1, 5))]), "y")
    res = unchanged(b.model({"x": (3, 6)}, {"y": None}))
    assert_refused(res, "fold_affine_after_linear", "constant broadcasts the tensor to a higher rank")


@pytest.mark.parametrize("linear", ["MatMul", "Conv"])
def test_constant_of_higher_rank_before_linear_refused(linear, make_builder, unchanged, assert_refused):
    """Regression: x (2, 4) * c (1, 1, 4) is (1, 2, 4), and the MatMul's output rank 3. Folding c
    into the weight left the MatMul reading the rank-2 x, so the output lost a dimension (the
    checker then failed); likewise x (C, H, W) * c (1, C, 1, 1) feeding a Conv."""
    b = make_builder(38)
    if linear == "MatMul":
        y = b.op("Mul", ["x", b.const(b.rand(1, 1, 4))])
        b.rename_output(b.op("MatMul", [y, b.const(b.rand(4, 3))]), "y")
        m = b.model({"x": (2, 4)}, {"y": None})
    else:
        y = b.op("Mul", ["x", b.const(b.rand(1, 4, 1, 1))])
        b.rename_output(b.conv(y, 4, 4, 1), "y")
        m = b.model({"x": (4, 3, 3)}, {"y": None})
    res = unchanged(m)
    assert_refused(res, "fold_affine_before_linear", "constant broadcasts the tensor to a higher rank")


def test_bn_after_rank3_matmul_refused(make_builder, unchanged, assert_refused):
    """BN normalizes axis 1 (tokens here); the MatMul's channels are the last axis."""
    b = make_builder(36)
    y = b.op("MatMul", ["x", b.const(b.rand(8, 8))])
    b.rename_output(b.bn(y, 3), "y")
    res = unchanged(b.model({"x": (2, 3, 8)}, {"y": None}))
    assert_refused(res, "fold_affine_after_linear", "BatchNormalization acts on axis 1")


def test_position_dependent_add_is_left_alone(make_builder, unchanged):
    b = make_builder(13)
    y = b.conv("x", 4, 4, 1)
    b.rename_output(b.op("Add", [y, b.const(b.rand(1, 4, 3, 3))]), "y")
    unchanged(b.model({"x": (1, 4, 3, 3)}, {"y": None}))


def test_bn_training_mode_not_touched(make_builder, unchanged):
    b = make_builder(14)
    g, be, mu, v = b.bn_stats(4)
    y = b.conv("x", 4, 4, 1)
    b.rename_output(
        b.op("BatchNormalization", [y] + [b.const(a) for a in (g, be, mu, v)], training_mode=1, n_out=3), "y"
    )
    unchanged(b.model({"x": (2, 4, 3, 3)}, {"y": (2, 4, 3, 3)}))


# ------------------------------------------------------------------ negatives: before a conv


def test_bn_before_padded_conv_dynamic_shape_refused(make_builder, unchanged, assert_refused):
    b = make_builder(9)
    b.rename_output(b.conv(b.bn("x", 4), 4, 4, 3), "y")
    m = b.model({"x": ("N", 4, "H", "W")}, {"y": None})
    res = unchanged(m)
    assert_refused(res, "fold_affine_before_linear", "dynamic spatial shape")


@pytest.mark.parametrize(
    "case,reason",
    [
        ("auto_pad", "auto_pad=SAME_UPPER hides the padding"),
        ("dilated", "shift before a padded dilated conv is not supported"),
        ("conv1d", "shift before a padded non-2-D conv is not supported"),
    ],
)
def test_shift_before_conv_refusals(case, reason, make_builder, unchanged, assert_refused):
    b = make_builder(37)
    shape = (1, 4, 7) if case == "conv1d" else (1, 4, 6, 6)
    x = b.bn("x", 4)
    if case == "auto_pad":
        y = b.op("Conv", [x, b.const(b.rand(4, 4, 3, 3))], kernel_shape=[3, 3], auto_pad="SAME_UPPER")
    elif case == "dilated":
        y = b.op("Conv", [x, b.const(b.rand(4, 4, 3, 3))], kernel_shape=[3, 3], pads=[2] * 4, dilations=[2, 2])
    else:
        y = b.op("Conv", [x, b.const(b.rand(4, 4, 3))], kernel_shape=[3], pads=[1, 1])
    b.rename_output(y, "y")
    res = unchanged(b.model({"x": shape}, {"y": None}))
    assert_refused(res, "fold_affine_before_linear", reason)


# ------------------------------------------------------------------ regressions


def test_shared_weight_is_not_changed_for_the_other_user(make_builder, optimized, op_counts):
    b = make_builder(15)
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


def test_name_clash_with_generated_names(make_builder, optimized, impulse_feeds):
    b = make_builder(16)
    y = b.conv(b.bn("x", 4), 4, 4, 3, name="/blk/Conv")
    # occupy the names the fold would generate
    b.const(np.zeros(1), "/blk/Conv_border_bias")
    b.rename_output(b.op("Add", [y, b.const(np.zeros(1), "/blk/Conv_out0_interior")]), "y")
    m = b.model({"x": (1, 4, 5, 5)}, {"y": None})
    optimized(m, impulse_feeds("x", (1, 4, 5, 5), limit=10))
