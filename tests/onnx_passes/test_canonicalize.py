"""canonicalize: constants as initializers, no-op nodes removed, Sub/Div by constants as Add/Mul,
inverse Transpose pairs cancelled."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.backend.test.case.node import function_testcase_helper

from updp.onnx_passes import optimize_model
from updp.verify import check_equivalence


def test_constant_nodes_identity_dropout_sub_div(make_builder, optimized, op_counts):
    b = make_builder(17)
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
    for rule in ("constant_to_initializer", "remove_identity", "const_arith_to_affine"):
        assert res.applied[rule] >= 1, res.applied


# ------------------------------------------------------------------ constant_to_initializer


@pytest.mark.parametrize("form", ["value", "value_float", "value_ints"])
def test_constant_becomes_initializer(form, builder, optimized, op_counts):
    if form == "value":
        c = builder.op("Constant", [], value=helper.make_tensor("v", TensorProto.FLOAT, [4], [1, 2, 3, 4]))
    elif form == "value_float":
        c = builder.op("Constant", [], value_float=2.0)
    else:  # a Reshape target
        c = builder.op("Constant", [], value_ints=[2, 4])
    op = "Reshape" if form == "value_ints" else "Max"
    builder.rename_output(builder.op(op, ["x", c]), "y")
    res = optimized(builder.model({"x": (2, 4)}, {"y": None}))
    assert res.applied["constant_to_initializer"] == 1
    assert op_counts(res.model) == {op: 1}
    assert len(res.model.graph.initializer) == 1


def test_string_constant_refused(unchanged, assert_refused):
    node = helper.make_node("Constant", [], ["s"], name="/strings", value_strings=["a", "b"])
    shape = helper.make_node("Shape", ["s"], ["y"], name="/shape")
    graph = helper.make_graph(
        [node, shape], "t", [], [helper.make_tensor_value_info("y", TensorProto.INT64, [1])]
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(m, full_check=True)
    res = unchanged(m)
    assert_refused(res, "constant_to_initializer", "Constant holds a sparse or string value")


def test_constant_graph_output_is_kept(builder, unchanged):
    builder.op("Constant", [], "/c", value_float=1.0)
    builder.rename_output("/c_out0", "y")
    builder.rename_output(builder.op("Relu", ["x"]), "z")
    unchanged(builder.model({"x": (2, 4)}, {"y": None, "z": (2, 4)}))


# ------------------------------------------------------------------ remove_identity


def test_identity_and_inference_dropout_removed(builder, optimized, op_counts):
    y = builder.op("Identity", [builder.op("Relu", ["x"])])
    builder.inits.append(onnx.numpy_helper.from_array(np.array(False), "training_mode"))
    y = builder.op("Dropout", [y, "", "training_mode"])
    builder.rename_output(builder.op("Relu", [y]), "y")
    res = optimized(builder.model({"x": (2, 4)}, {"y": None}))
    assert res.applied["remove_identity"] == 2
    assert op_counts(res.model) == {"Relu": 2}


def test_dropout_with_used_mask_is_kept(builder, unchanged):
    y = builder.op("Dropout", [builder.op("Relu", ["x"])], "/drop", n_out=2)
    builder.rename_output(y, "y")
    builder.rename_output("/drop_out1", "mask")
    m = builder.model({"x": (2, 4)}, {"y": (2, 4)}, check=False)
    m.graph.output.append(helper.make_tensor_value_info("mask", TensorProto.BOOL, [2, 4]))
    onnx.checker.check_model(m, full_check=True)
    unchanged(m)


@pytest.mark.parametrize("source", ["graph_input", "two_readers"])
def test_identity_to_graph_output_with_unrenamable_source_refused(source, builder, unchanged, assert_refused):
    x = "x" if source == "graph_input" else builder.op("Relu", ["x"])
    builder.rename_output(builder.op("Identity", [x]), "y")
    outputs = {"y": (2, 4)}
    if source == "two_readers":
        builder.rename_output(builder.op("Relu", [x]), "z")
        outputs["z"] = (2, 4)
    res = unchanged(builder.model({"x": (2, 4)}, outputs))
    assert_refused(res, "remove_identity", "output is a graph output and its source cannot be renamed")


# ------------------------------------------------------------------ remove_neutral_elementwise


def test_add_zero_and_mul_one_removed(make_builder, optimized, op_counts):
    b = make_builder(21)
    h = b.op("Add", ["x", b.const(np.zeros(8, np.float32))])
    h = b.op("Relu", [h])
    h = b.op("Mul", [b.const(np.ones((1, 1, 8), np.float32)), h])
    b.rename_output(b.op("Relu", [h]), "y")
    res = optimized(b.model({"x": (2, 3, 8)}, {"y": None}))
    assert op_counts(res.model) == {"Relu": 2}
    assert res.applied["remove_neutral_elementwise"] == 2


def test_add_zero_that_broadcasts_is_kept(make_builder, unchanged, assert_refused):
    b = make_builder(22)
    h = b.op("Add", ["x", b.const(np.zeros((3, 8), np.float32))])
    b.rename_output(b.op("Relu", [h]), "y")
    res = unchanged(b.model({"x": (1, 8)}, {"y": None}))
    assert_refused(res, "remove_neutral_elementwise", "the constant may broadcast x to a larger shape")


def test_add_zero_of_higher_rank_is_kept(builder, unchanged, assert_refused):
    h = builder.op("Add", ["x", builder.const(np.zeros((1, 8), np.float32))])
    builder.rename_output(builder.op("Relu", [h]), "y")
    res = unchanged(builder.model({"x": (8,)}, {"y": None}))
    assert_refused(res, "remove_neutral_elementwise", "cannot prove the constant does not broadcast x")


def test_add_zero_as_graph_output_is_renamed_not_dropped(make_builder, optimized, op_counts):
    b = make_builder(23)
    h = b.op("Relu", ["x"])
    b.rename_output(b.op("Add", [h, b.const(np.zeros(8, np.float32))]), "y")
    res = optimized(b.model({"x": (2, 8)}, {"y": None}))
    assert op_counts(res.model) == {"Relu": 1}
    assert res.model.graph.output[0].name == "y"


def test_add_zero_from_graph_input_to_graph_output_refused(builder, unchanged, assert_refused):
    builder.rename_output(builder.op("Add", ["x", builder.const(np.zeros(8, np.float32))]), "y")
    res = unchanged(builder.model({"x": (2, 8)}, {"y": None}))
    assert_refused(res, "remove_neutral_elementwise", "output is a graph output and its source cannot be renamed")


def test_mul_one_inside_gelu_is_kept(builder, unchanged, assert_refused):
    """x * (1 + erf(x / sqrt 2)) * 1.0: the final Mul is part of the pattern ORT fuses."""
    h = builder.op("Relu", ["x"])
    e = builder.op("Erf", [builder.op("Div", [h, builder.const(np.array(1.4142135, np.float32))])])
    a = builder.op("Add", [e, builder.const(np.array(1.0, np.float32))])
    m = builder.op("Mul", [h, a])
    builder.rename_output(builder.op("Relu", [builder.op("Mul", [m, builder.const(np.ones(8, np.float32))])]), "y")
    res = unchanged(builder.model({"x": (2, 8)}, {"y": None}))
    assert_refused(res, "remove_neutral_elementwise", "part of a GELU that ORT fuses")


# ------------------------------------------------------------------ const_arith_to_affine


@pytest.mark.parametrize("op", ["Sub", "Div"])
def test_sub_div_by_constant_become_affine_and_fold(op, builder, optimized, op_counts):
    c = builder.const(1 + np.abs(builder.rand(1, 4, 1, 1)))
    builder.rename_output(builder.op(op, [builder.conv("x", 4, 4, 1), c]), "y")
    res = optimized(builder.model({"x": (1, 4, 3, 3)}, {"y": None}))
    assert res.applied["const_arith_to_affine"] == 1
    assert op_counts(res.model) == {"Conv": 1}


def test_sub_stays_as_add_when_nothing_folds(builder, optimized, op_counts):
    builder.rename_output(builder.op("Sub", [builder.op("Relu", ["x"]), builder.const(builder.rand(4))]), "y")
    res = optimized(builder.model({"x": (2, 4)}, {"y": None}))
    assert op_counts(res.model) == {"Relu": 1, "Add": 1}


def test_div_by_zero_refused(builder, unchanged, assert_refused):
    builder.rename_output(builder.op("Div", ["x", builder.const(np.array([1, 0, 2, 3], np.float32))]), "y")
    res = unchanged(builder.model({"x": (2, 4)}, {"y": None}))
    assert_refused(res, "const_arith_to_affine", "divisor has zeros")


def test_constant_minus_tensor_is_left_alone(builder, unchanged):
    builder.rename_output(builder.op("Sub", [builder.const(builder.rand(4)), "x"]), "y")
    unchanged(builder.model({"x": (2, 4)}, {"y": None}))


# ------------------------------------------------------------------ cancel_transposes


def test_transpose_pair_cancels(make_builder, optimized, op_counts):
    b = make_builder(7)
    y = b.op("Transpose", [b.conv("x", 4, 4, 1)], perm=[0, 2, 3, 1])
    y = b.op("Transpose", [y], perm=[0, 3, 1, 2])
    b.rename_output(b.conv(y, 4, 4, 3), "y")
    res = optimized(b.model({"x": (1, 4, 5, 5)}, {"y": None}))
    assert "Transpose" not in op_counts(res.model)


def test_transpose_pair_cancels_rank3(builder, optimized, op_counts):
    y = builder.op("Transpose", [builder.op("Relu", ["x"])], perm=[0, 2, 1])
    y = builder.op("Transpose", [y], perm=[0, 2, 1])
    builder.rename_output(builder.op("Relu", [y]), "y")
    res = optimized(builder.model({"x": (2, 3, 4)}, {"y": None}))
    assert res.applied["cancel_transposes"] == 1
    assert op_counts(res.model) == {"Relu": 2}


def test_transpose_pair_from_graph_input_to_graph_output_refused(builder, unchanged, assert_refused):
    y = builder.op("Transpose", [builder.op("Transpose", ["x"], perm=[0, 2, 1])], perm=[0, 2, 1])
    builder.rename_output(y, "y")
    res = unchanged(builder.model({"x": (2, 3, 4)}, {"y": None}))
    assert_refused(res, "cancel_transposes", "output is a graph output and its source cannot be renamed")


def test_non_inverse_transposes_are_kept(builder):
    y = builder.op("Transpose", [builder.op("Relu", ["x"])], perm=[1, 2, 0])
    y = builder.op("Transpose", [y], perm=[1, 2, 0])
    builder.rename_output(builder.op("Relu", [y]), "y")
    res = optimize_model(builder.model({"x": (2, 3, 4)}, {"y": None}))
    assert "cancel_transposes" not in res.applied


def test_sub_of_0d_constant_keeps_0d(optimized):
    """Regression: Sub(x, c) with 0-d x and c became Add(x, -c) with -c written as shape (1,), so y
    became (1,) and the full checker failed on the declared 0-d output."""
    sub = helper.make_node("Sub", ["x", "c"], ["y"], name="/sub")
    graph = helper.make_graph(
        [sub],
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
        [onnx.numpy_helper.from_array(np.array(1.5, np.float32), "c")],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    res = optimized(m)
    assert res.applied["const_arith_to_affine"] == 1
    (init,) = res.model.graph.initializer
    assert list(init.dims) == [] and onnx.numpy_helper.to_array(init) == -1.5


def _window_expanded(op: str, periodic: int) -> onnx.ModelProto:
    """onnx's backend case `test_<op>_expanded`: the window op's function body as plain nodes
    (the expansion `collect_testcases` runs), for a 0-d int32 size."""
    node = helper.make_node(op, ["x"], ["y"], periodic=periodic)
    opset = [helper.make_opsetid("", 17)]
    size_type = helper.make_tensor_type_proto(TensorProto.INT32, [])
    (nodes, _), *_ = function_testcase_helper(node, [size_type], f"test_{op.lower()}", opset_imports=opset)[0]
    graph = helper.make_graph(
        nodes,
        f"test_{op.lower()}_expanded",
        [helper.make_tensor_value_info("x", TensorProto.INT32, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [10])],
    )
    m = helper.make_model(graph, opset_imports=opset, ir_version=8)
    onnx.checker.check_model(m, full_check=True)
    return m


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    vis = list(inferred.graph.value_info) + list(inferred.graph.output)
    return {v.name: len(v.type.tensor_type.shape.dim) for v in vis if v.type.tensor_type.HasField("shape")}


@pytest.mark.parametrize("op", ["HannWindow", "HammingWindow", "BlackmanWindow"])
@pytest.mark.parametrize("periodic", [1, 0])
def test_window_function_expanded_keeps_ranks(op, periodic):
    """Regression (onnx backend cases hann/hamming/blackman window, expanded): the scalar
    `Sub(size, 1)` became `Add(size, [-1])`, turning the 0-d window length (and everything computed
    from it) into shape (1,)."""
    m = _window_expanded(op, periodic)
    res = optimize_model(m)
    assert res.applied["const_arith_to_affine"] == 1
    before, after = _ranks(m), _ranks(res.model)
    common = before.keys() & after.keys()
    assert any(k.endswith("Symmetric_Size_FP") for k in common)  # the Sub's output
    assert {k: after[k] for k in common} == {k: before[k] for k in common}
    for n in (8, 10):
        check_equivalence(m, res.model, feeds=[{"x": np.array(n, np.int32)}])


def test_div_by_constant_with_non_normal_reciprocal_refused(builder, unchanged, assert_refused):
    """Regression: x / 1e-39 became x * inf (1/1e-39 overflows float32), and x / 3e38 became x times
    a subnormal that has lost bits; x / c itself is finite and exact there."""
    c = builder.const(np.array([2.0, 1e-39, 3e38, 4.0], np.float32))
    builder.rename_output(builder.op("Div", ["x", c]), "y")
    res = unchanged(builder.model({"x": (2, 4)}, {"y": None}))
    assert_refused(res, "const_arith_to_affine", "the divisor's reciprocal is not a normal float")


def test_identity_read_by_a_subgraph_from_graph_input_refused(unchanged, assert_refused):
    """Regression: an Identity whose output only an If branch reads, and whose input is a graph
    input, passed check but could not be bypassed (the rewrite's assertion failed mid-edit): a
    tensor a subgraph reads keeps its name, like a graph output."""
    branch = helper.make_graph(
        [helper.make_node("Relu", ["t"], ["r"], name="/then/relu")],
        "then",
        [],
        [helper.make_tensor_value_info("r", TensorProto.FLOAT, [2, 4])],
    )
    other = helper.make_graph(
        [helper.make_node("Neg", ["t"], ["n"], name="/else/neg")],
        "else",
        [],
        [helper.make_tensor_value_info("n", TensorProto.FLOAT, [2, 4])],
    )
    nodes = [
        helper.make_node("Identity", ["x"], ["t"], name="/id"),
        helper.make_node("If", ["cond"], ["y"], name="/if", then_branch=branch, else_branch=other),
    ]
    graph = helper.make_graph(
        nodes,
        "t",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(m, full_check=True)
    res = unchanged(m)
    assert_refused(res, "remove_identity", "output is read by a subgraph and its source cannot be renamed")


def test_div_by_a_denormal_is_refused_for_its_reason_also_after_training_flushed_denormals(
        builder, unchanged, assert_refused, denormal_flush):
    """Regression: in a process whose training had flushed denormals to zero (`updp run`), numpy
    read the divisor 1e-39 as 0 and the pass refused for "divisor has zeros": the passes folded
    constants differently from a fresh process. They now run with denormals exact."""
    from updp.training.device import fast_cpu_math

    c = builder.const(np.array([2.0, 1e-39, 4.0, 8.0], np.float32))
    builder.rename_output(builder.op("Div", ["x", c]), "y")
    model = builder.model({"x": (2, 4)}, {"y": None})
    with fast_cpu_math():
        res = unchanged(model)
    assert_refused(res, "const_arith_to_affine", "the divisor's reciprocal is not a normal float")
    assert not any("divisor has zeros" in r for r in res.refusals), res.refusals
