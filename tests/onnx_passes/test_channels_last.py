"""channels_last: BN between transposes as an affine, and channels-last sandwiches back to NCHW."""

import numpy as np
import onnx
import pytest

# ------------------------------------------------------------------ transposed_bn_to_affine


def test_transposed_bn_becomes_mul_add(builder, optimized, op_counts):
    y = builder.op("Transpose", ["x"], perm=[0, 2, 1])
    y = builder.bn(y, 16)
    y = builder.op("Transpose", [y], perm=[0, 2, 1])
    builder.rename_output(builder.op("Relu", [y]), "y")
    res = optimized(builder.model({"x": (2, 5, 16)}, {"y": None}))
    assert res.applied["transposed_bn_to_affine"] == 1
    assert op_counts(res.model) == {"Mul": 1, "Add": 1, "Relu": 1}


def test_transposed_bn_with_graph_input_statistics_refused(builder, unchanged, assert_refused):
    y = builder.op("Transpose", ["x"], perm=[0, 2, 1])
    g, be, mu, v = builder.bn_stats(16)
    y = builder.op("BatchNormalization", [y, "gamma"] + [builder.const(a) for a in (be, mu, v)])
    builder.rename_output(builder.op("Transpose", [y], perm=[0, 2, 1]), "y")
    res = unchanged(builder.model({"x": (2, 5, 16), "gamma": (16,)}, {"y": None}))
    assert_refused(res, "transposed_bn_to_affine", "statistics are not constant")


def test_vit_mlp_and_residual_fold_to_one_linear(vit_mlp, optimized, op_counts):
    m = vit_mlp()
    res = optimized(m)
    assert op_counts(res.model) == {"MatMul": 1, "Add": 1}
    mm = next(n for n in res.model.graph.node if n.op_type == "MatMul")
    assert mm.name.startswith("/blocks.2/mlp/fc1")
    assert res.applied["transposed_bn_to_affine"] == 1
    assert res.applied["fold_residual"] == 1


# ------------------------------------------------------------------ channels_last_to_nchw: ConvNeXt


def test_convnext_pruned_block_becomes_dw_plus_pw(convnext_block, optimized, op_counts, impulse_feeds, weight_of):
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


def test_convnext_real_size_decision(convnext_block, optimized, op_counts):
    res = optimized(convnext_block(c=96, hw=(14, 14)))
    assert op_counts(res.model) == {"Conv": 2, "Add": 1}
    assert any("DW7x7 + PW 96x96" in d and "fully merged" in d for d in res.decisions)


@pytest.mark.parametrize("op", ["Relu", "LayerNormalization"])
def test_sandwich_with_nonlinear_interior_refused(op, convnext_block, optimized, op_counts):
    def interior(b, y):
        if op == "Relu":
            return b.op("Relu", [y])
        return b.op("LayerNormalization", [y, b.const(np.ones(32))], axis=-1)

    res = optimized(convnext_block(interior=interior))
    assert op_counts(res.model)["Transpose"] == 2
    assert any("channels_last_to_nchw" in r and op in r for r in res.refusals), res.refusals


def test_sandwich_with_reshapes_keeping_the_last_axis(builder, optimized, op_counts):
    """NHWC -> (N, HW, C) -> Gemm-free MatMul -> back to NHWC: the Reshapes are dropped."""
    y = builder.op("Transpose", ["x"], perm=[0, 2, 3, 1])
    builder.inits.append(onnx.numpy_helper.from_array(np.array([1, 12, 8], np.int64), "tokens"))
    builder.inits.append(onnx.numpy_helper.from_array(np.array([1, 3, 4, 8], np.int64), "grid"))
    y = builder.op("Reshape", [y, "tokens"])
    y = builder.matmul(y, 8, 8)
    y = builder.op("Reshape", [y, "grid"])
    builder.rename_output(builder.op("Transpose", [y], perm=[0, 3, 1, 2]), "y")
    res = optimized(builder.model({"x": (1, 8, 3, 4)}, {"y": None}))
    assert res.applied["channels_last_to_nchw"] == 1
    assert op_counts(res.model) == {"Conv": 1}


# ------------------------------------------------------------------ channels_last_to_nchw: refusals


def _sandwich(b, interior, shape=(1, 8, 3, 4), extra_inputs=None, outputs=None):
    y = b.op("Transpose", ["x"], perm=[0, 2, 3, 1])
    y = interior(b, y)
    b.rename_output(b.op("Transpose", [y], perm=[0, 3, 1, 2]), "y")
    return b.model({"x": shape, **(extra_inputs or {})}, outputs or {"y": None})


def _two_readers(b, y):
    return b.op("Add", [b.op("Relu", [y]), y])


def _relus(b, y, count=64):
    """A path longer than the rule walks (MAX_INTERIOR nodes)."""
    for _ in range(count):
        y = b.op("Relu", [y])
    return y


def _reshape(b, y, shape):
    name = b.name("shape")
    b.inits.append(onnx.numpy_helper.from_array(np.array(shape, np.int64), name))
    return b.op("Reshape", [y, name])


SANDWICH_REFUSALS = {
    "two_readers": (lambda b, y: _two_readers(b, b.op("Mul", [y, b.const(b.rand(8))])), "has 2 consumers"),
    "no_constant": (lambda b, y: b.op("Mul", [y, "s"]), "has no constant operand"),
    "tensor_second": (lambda b, y: b.op("Sub", [b.const(b.rand(8)), y]), "has the tensor as second operand"),
    "not_last_axis": (
        lambda b, y: b.op("Mul", [y, b.const(b.rand(3, 1, 1))]),
        "does not act on the last axis only",
    ),
    "weight_input": (lambda b, y: b.op("MatMul", [y, "w"]), "weight is not a constant"),
    "reshape_last_axis": (lambda b, y: _reshape(b, _reshape(b, y, [1, 3, 8, 4]), [1, 3, 4, 8]), "does not keep"),
    "reshape_hw": (lambda b, y: _reshape(b, y, [1, 4, 3, 8]), "change the N, H, W dims"),
    "too_long": (_relus, "no closing Transpose([0,3,1,2]) within reach"),
}


@pytest.mark.parametrize("case", list(SANDWICH_REFUSALS))
def test_sandwich_refusals(case, builder, unchanged, assert_refused):
    interior, reason = SANDWICH_REFUSALS[case]
    extra = {"w": (8, 8)} if case == "weight_input" else {"s": (8,)} if case == "no_constant" else None
    res = unchanged(_sandwich(builder, interior, extra_inputs=extra))
    assert_refused(res, "channels_last_to_nchw", reason)


def test_sandwich_dynamic_channels_refused(builder, unchanged, assert_refused):
    m = _sandwich(builder, lambda b, y: b.op("Mul", [y, b.const(b.rand(8))]), shape=(1, 8, "H", "W"))
    res = unchanged(m)
    assert_refused(res, "channels_last_to_nchw", "channel count unknown (dynamic shape)")


def test_unnamed_sandwich_ops_keep_node_names_unique(builder, optimized):
    """Regression: an unnamed Mul in a sandwich released its op type ("Mul") for reuse though
    another node carried that name, so the rewrite made a second node named "Mul"."""
    y = builder.op("Transpose", ["x"], perm=[0, 2, 3, 1])
    y = builder.op("Mul", [y, builder.const(builder.rand(8))], name="")
    y = builder.op("Transpose", [y], perm=[0, 3, 1, 2])
    scaled = builder.op("Mul", [builder.op("Relu", [y]), builder.const(builder.rand(8, 1, 1))], "Mul")
    builder.rename_output(scaled, "y")
    builder.nodes[1].name = ""
    res = optimized(builder.model({"x": (1, 8, 3, 4)}, {"y": None}))
    assert res.applied["channels_last_to_nchw"] == 1
    names = [n.name for n in res.model.graph.node]
    assert len(names) == len(set(names)) and "Mul" in names, names


def test_integer_sandwich_is_left_alone(builder, unchanged, assert_refused):
    """Integer math passes through untouched: an int64 Mul between the transposes is refused."""
    y = builder.op("Transpose", ["x"], perm=[0, 2, 3, 1])
    builder.inits.append(onnx.numpy_helper.from_array(np.arange(1, 9, dtype=np.int64), "k"))
    y = builder.op("Mul", [y, "k"], "/scale")
    builder.rename_output(builder.op("Transpose", [y], perm=[0, 3, 1, 2]), "y")
    m = builder.model({"x": (1, 8, 3, 4)}, {"y": (1, 8, 3, 4)}, check=False)
    for v in (*m.graph.input, *m.graph.output):
        v.type.tensor_type.elem_type = onnx.TensorProto.INT64
    onnx.checker.check_model(m, full_check=True)
    res = unchanged(m)
    assert_refused(res, "channels_last_to_nchw", "Mul '/scale' is not float math (its constant is int64)")
