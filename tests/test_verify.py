"""The one equivalence check: per-dtype tolerances, NaN and Inf, exact integers, sequences and
optionals, random outputs, and onnx's reference evaluator where ONNX Runtime cannot run a model."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from updp.core.errors import VerificationError
from updp.verify import TOLERANCES, check_equivalence, compare_outputs, tolerance_for


def test_nan_and_inf_at_the_same_places_are_equal():
    r = np.array([1.0, np.nan, np.inf, -np.inf], np.float32)
    assert compare_outputs([r], [r.copy()], ["y"]).passed


def test_a_nan_on_one_side_is_a_difference_and_never_reported_as_zero():
    r = np.array([1.0, 2.0, 3.0], np.float32)
    o = np.array([1.0, np.nan, 3.0], np.float32)
    rep = compare_outputs([r], [o], ["y"])
    assert not rep.passed and rep.failures == ["output 'y': NaN/Inf at 1 position(s) where the other model has "
                                               "another value"]
    assert "diff 0" not in " ".join(rep.failures)


def test_integers_strings_and_bools_must_be_equal():
    assert not compare_outputs([np.array([1, 2])], [np.array([1, 3])], ["i"]).passed
    assert compare_outputs([np.array(["a", "b"], dtype=object)], [np.array(["a", "b"], dtype=object)], ["s"]).passed
    assert not compare_outputs([np.array([True])], [np.array([False])], ["b"]).passed


def test_sequences_optionals_and_maps_element_by_element():
    a = [np.ones(2, np.float32), np.zeros(3, np.float32)]
    assert compare_outputs([a], [[x.copy() for x in a]], ["s"]).passed
    rep = compare_outputs([a], [a[:1]], ["s"])
    assert not rep.passed and "sequence lengths differ (2 vs 1)" in rep.failures[0]
    assert compare_outputs([None], [None], ["o"]).passed
    assert not compare_outputs([None], [np.ones(1)], ["o"]).passed
    assert compare_outputs([{1: np.ones(1)}], [{1: np.ones(1)}], ["m"]).passed
    assert not compare_outputs([{1: np.ones(1)}], [{2: np.ones(1)}], ["m"]).passed


@pytest.mark.parametrize("dtype, scale", [(np.float32, 1e-5), (np.float16, 5e-3), (ml_dtypes.bfloat16, 3e-2),
                                          (np.float64, 1e-10)])
def test_each_float_dtype_has_its_tolerance(dtype, scale):
    rtol, _ = tolerance_for(np.dtype(dtype))
    r = np.linspace(-3, 3, 64).astype(dtype)
    within = (r.astype(np.float64) + 3 * scale).astype(dtype)
    beyond = (r.astype(np.float64) + 3 * rtol * 4).astype(dtype)
    assert compare_outputs([r], [within], ["y"]).passed
    assert not compare_outputs([r], [beyond], ["y"]).passed


def test_the_tolerances_are_the_documented_ones():
    assert TOLERANCES == {"float32": (1e-4, 1e-6), "float16": (1e-2, 1e-4), "bfloat16": (6e-2, 6e-4),
                          "float64": (1e-9, 1e-11)}
    assert tolerance_for(np.dtype(ml_dtypes.float8_e4m3fn))[0] == 0.125


def _model(nodes, inp, out, inits=(), opset=18, ir=None):
    m = helper.make_model(helper.make_graph(nodes, "g", inp, out, list(inits)),
                          opset_imports=[helper.make_opsetid("", opset)])
    if ir is not None:
        m.ir_version = ir
    return m


def test_random_outputs_are_compared_by_shape_and_dtype():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])
    m = _model([helper.make_node("Bernoulli", ["x"], ["y"])], [x], [y])
    feeds = [{"x": np.full(64, 0.5, np.float32)}]
    rep = check_equivalence(m, m, feeds=feeds)
    assert rep.passed and rep.random_outputs == ["y"]


def test_a_difference_is_caught_and_named():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    a = _model([helper.make_node("Mul", ["x", "c"], ["y"])], [x], [y],
               [numpy_helper.from_array(np.full(4, 2.0, np.float32), "c")])
    b = _model([helper.make_node("Mul", ["x", "c"], ["y"])], [x], [y],
               [numpy_helper.from_array(np.full(4, 2.001, np.float32), "c")])
    with pytest.raises(VerificationError, match="output 'y': max abs diff .* exceeds 1e-06 \\+ 0.0001"):
        check_equivalence(a, b)


def test_a_model_onnx_runtime_cannot_load_is_checked_with_the_reference_evaluator():
    """An IR version newer than ONNX Runtime reads: both sides run in onnx's reference evaluator."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [x], [y], ir=99)
    rep = check_equivalence(m, m)
    assert rep.passed and rep.runtime == "onnx reference evaluator"
