"""Regression: our passes must not break activation patterns that ONNX Runtime fuses.

Folding GELU's `/ sqrt(2)` or `* 0.5` into a neighbouring MatMul is exact, but it breaks ORT's
Gelu fusion; measured, that made unpruned ConvNeXt-T ~7% slower under ORT_ENABLE_ALL.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from updp.onnx_passes import optimize_model
from updp.verify import check_equivalence


def _mlp_with_erf_gelu(identity_after_erf: bool = False):
    """fc1 -> erf-form GELU -> fc2, optionally with an Identity between the Erf and its Add."""
    rng = np.random.default_rng(0)
    d, h = 8, 32
    inits = [numpy_helper.from_array(rng.standard_normal((d, h)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(h).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((h, d)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array(1.4142135, np.float32), "sqrt2"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"], name="fc1/MatMul"),
             helper.make_node("Add", ["m1", "b1"], ["h"], name="fc1/Add"),
             helper.make_node("Div", ["h", "sqrt2"], ["d"], name="act/Div"),
             helper.make_node("Erf", ["d"], ["e0" if identity_after_erf else "e"], name="act/Erf"),
             *([helper.make_node("Identity", ["e0"], ["e"], name="act/Identity")] if identity_after_erf else []),
             helper.make_node("Add", ["e", "one"], ["a"], name="act/Add"),
             helper.make_node("Mul", ["h", "a"], ["m"], name="act/Mul"),
             helper.make_node("Mul", ["m", "half"], ["g"], name="act/Mul_1"),
             helper.make_node("MatMul", ["g", "w2"], ["y"], name="fc2/MatMul")]
    graph = helper.make_graph(nodes, "gelu_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, d])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


@pytest.mark.parametrize("identity_after_erf", [False, True])
def test_erf_gelu_pattern_is_left_intact(identity_after_erf):
    """With an Identity after the Erf, the pattern is complete only once the Identity is gone;
    regression: the protected set was computed before that, so the `* 0.5` was folded into fc2
    in the same sweep."""
    model = _mlp_with_erf_gelu(identity_after_erf)
    res = optimize_model(model)
    ops = [n.op_type for n in res.model.graph.node]
    assert ops == ["MatMul", "Add", "Div", "Erf", "Add", "Mul", "Mul", "MatMul"], ops
    check_equivalence(model, res.model)
