"""FP16 conversion: runs, keeps or changes the I/O dtypes as asked, verified with float16's tolerance."""

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from updp.core.errors import VerificationError
from updp.exporter.fp16 import METADATA_KEY, convert_fp16, verify_fp16
from updp.verify import compare_outputs


def _mlp(scale: float = 0.3):
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.standard_normal((16, 32)) * scale).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((32, 4)) * scale).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


@pytest.mark.parametrize("keep_io", [True, False])
def test_fp16_file_is_verified_with_float16_tolerance(keep_io):
    model = _mlp()
    half = convert_fp16(model, keep_io_types=keep_io)
    io = TensorProto.FLOAT if keep_io else TensorProto.FLOAT16
    assert half.graph.input[0].type.tensor_type.elem_type == io
    assert half.graph.output[0].type.tensor_type.elem_type == io
    assert any(t.data_type == TensorProto.FLOAT16 for t in half.graph.initializer)
    report = verify_fp16(model, half)
    assert report.passed and 0 < report.max_abs_diff and report.rel_diff < 1e-2
    assert json.loads({p.key: p.value for p in half.metadata_props}[METADATA_KEY])["compute"] == "float16"


def test_a_float16_file_that_overflows_is_refused():
    half = convert_fp16(_mlp(scale=3000.0))  # activations beyond float16's 65504: Inf in the half model
    with pytest.raises(VerificationError, match="float16 model|differs"):
        verify_fp16(_mlp(scale=3000.0), half)


def test_precision_compares_float_outputs_of_different_dtypes_with_its_tolerance():
    ref = [np.array([1.0, 2.0], np.float32)]
    close = [np.array([1.005, 2.0], np.float16)]
    assert not compare_outputs(ref, close, ["y"]).passed  # a dtype change fails by default
    assert compare_outputs(ref, close, ["y"], precision="float16").passed
    assert not compare_outputs(ref, [np.array([1.1, 2.0], np.float16)], ["y"], precision="float16").passed
