"""fold_residual: ``x + linear(x)`` folded into the linear's weight (identity added)."""

import numpy as np
import pytest
from onnx import numpy_helper

from updp.onnx_passes import optimize_model
from updp.verify import check_equivalence


@pytest.mark.parametrize("groups", [1, 8])
def test_residual_into_conv_centre(groups, make_builder, optimized, op_counts, impulse_feeds):
    b = make_builder(11)
    b.rename_output(b.op("Add", [b.conv("x", 8, 8, 3, groups=groups), "x"]), "y")
    res = optimized(b.model({"x": (1, 8, 5, 6)}, {"y": None}), impulse_feeds("x", (1, 8, 5, 6)))
    assert op_counts(res.model) == {"Conv": 1}


def test_residual_into_matmul_with_bias(builder, optimized, op_counts):
    builder.rename_output(builder.op("Add", ["x", builder.matmul("x", 8, 8)]), "y")
    res = optimized(builder.model({"x": (2, 3, 8)}, {"y": None}))
    assert res.applied["fold_residual"] == 1
    assert op_counts(res.model) == {"MatMul": 1, "Add": 1}


def test_vit_mlp_onnxsim_gemm_form(make_builder, optimized, op_counts):
    """onnx-simplifier turns the MLP into Reshape -> Gemm -> Gemm -> Reshape."""
    b = make_builder(9)
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
    assert res.applied["fold_residual"] == 1


@pytest.mark.parametrize("trans_b", [0, 1])
def test_residual_into_gemm_keeps_beta(trans_b, make_builder, optimized, op_counts):
    """Regression: x + Gemm(x, W, C, alpha, beta) became Gemm(x, W + I, C) with alpha and beta
    reset to 1, so C lost its beta (the fold rewrote W but left C as it was)."""
    b = make_builder(14)
    W = b.rand(6, 6)
    y = b.op("Gemm", ["x", b.const(W.T if trans_b else W), b.const(b.rand(6))], alpha=2.0, beta=0.5, transB=trans_b)
    b.rename_output(b.op("Add", ["x", y]), "y")
    res = optimized(b.model({"x": (3, 6)}, {"y": None}))
    assert res.applied["fold_residual"] == 1
    assert op_counts(res.model) == {"Gemm": 1}


@pytest.mark.parametrize("case", ["strided", "other_input", "channels", "pad"])
def test_residual_refusals(case, make_builder):
    b = make_builder(12)
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


# ------------------------------------------------------------------ one refusal per precondition


def _conv_residual(b, cin=8, cout=8, **attrs):
    W = b.const(b.rand(cout, cin // attrs.get("group", 1), *attrs["kernel_shape"]))
    y = b.op("Conv", ["x", W], **attrs)
    b.rename_output(b.op("Add", ["x", y]), "y")
    return y


CONV_REFUSALS = {
    "dilated": (dict(kernel_shape=[3, 3], pads=[2] * 4, dilations=[2, 2]), "conv is strided or dilated"),
    "even_kernel": (dict(kernel_shape=[2, 2], pads=[0, 0, 1, 1]), "even kernel has no centre"),
    "pads": (dict(kernel_shape=[3, 3], pads=[2, 0, 0, 2]), "pads [2, 0, 0, 2] are not 'same' for a 3x3 kernel"),
    "auto_pad": (dict(kernel_shape=[1, 1], auto_pad="VALID"), "auto_pad=VALID does not keep the size"),
}


@pytest.mark.parametrize("case", list(CONV_REFUSALS))
def test_conv_residual_precondition_refused(case, builder, unchanged, assert_refused):
    attrs, reason = CONV_REFUSALS[case]
    _conv_residual(builder, **attrs)
    res = unchanged(builder.model({"x": (1, 8, 5, 6)}, {"y": None}))
    assert_refused(res, "fold_residual", reason)


def test_conv_residual_channel_mismatch_refused(builder, unchanged, assert_refused):
    """x (1 channel) broadcasts against the 8-channel conv output: no identity to add."""
    _conv_residual(builder, cin=1, cout=8, kernel_shape=[3, 3], pads=[1] * 4)
    res = unchanged(builder.model({"x": (1, 1, 5, 6)}, {"y": None}))
    assert_refused(res, "fold_residual", "output channels 8 != input channels 1 per group")


def test_residual_intermediate_with_two_readers_refused(builder, unchanged, assert_refused):
    y = _conv_residual(builder, kernel_shape=[3, 3], pads=[1] * 4)
    builder.rename_output(y, "z")
    res = unchanged(builder.model({"x": (1, 8, 5, 6)}, {"y": None, "z": None}))
    assert_refused(res, "fold_residual", "intermediate 'z' has 2 consumers")


def test_residual_non_square_matmul_refused(builder, unchanged, assert_refused):
    y = builder.op("MatMul", ["x", builder.const(builder.rand(1, 4))])
    builder.rename_output(builder.op("Add", ["x", y]), "y")
    res = unchanged(builder.model({"x": (3, 1)}, {"y": None}))
    assert_refused(res, "fold_residual", "weight (1, 4) is not square")


def test_residual_reshape_not_restoring_shape_refused(builder, unchanged, assert_refused):
    """Reshape(Gemm(Reshape(x))) to (5, 1, 16) broadcasts against x (1, 5, 16) instead of matching it."""
    builder.inits.append(numpy_helper.from_array(np.array([-1, 16], np.int64), "flat"))
    builder.inits.append(numpy_helper.from_array(np.array([5, 1, 16], np.int64), "back"))
    y = builder.op("Reshape", ["x", "flat"])
    y = builder.op("Gemm", [y, builder.const(builder.rand(16, 16)), builder.const(builder.rand(16))])
    y = builder.op("Reshape", [y, "back"])
    builder.rename_output(builder.op("Add", ["x", y]), "y")
    res = unchanged(builder.model({"x": (1, 5, 16)}, {"y": None}))
    assert_refused(res, "fold_residual", "the reshape after the linear does not restore the residual's shape")
