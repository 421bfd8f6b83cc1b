"""Inputs for a check: generated ones valid for the graph, and the user's (.npz, test-data .pb)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from updp.core.errors import InputError, UnsupportedError
from updp.feeds import generate_feeds, graph_inputs, load_feeds, shape_like_uses


def _model(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def test_a_shape_input_is_never_random():
    m = _model([helper.make_node("Cast", ["s"], ["s64"], to=TensorProto.INT64),
                helper.make_node("Reshape", ["x", "s64"], ["y"], name="rs")],
               [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
                helper.make_tensor_value_info("s", TensorProto.INT32, [2])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    assert shape_like_uses(m) == {"s": ["Reshape 'rs' input 1 (shape)"]}  # seen through the Cast
    with pytest.raises(UnsupportedError, match="input 's' feeds Reshape 'rs' input 1 \\(shape\\).*--inputs"):
        generate_feeds(m)


def test_an_input_with_a_default_in_the_model_is_not_fed():
    m = _model([helper.make_node("Reshape", ["x", "s"], ["y"])],
               [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
                helper.make_tensor_value_info("s", TensorProto.INT64, [2])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
               [numpy_helper.from_array(np.array([3, 2], np.int64), "s")])
    assert [s.name for s in graph_inputs(m)] == ["x"] and shape_like_uses(m) == {}
    assert set(generate_feeds(m)[0]) == {"x"}


def test_zero_dims_stay_zero_and_symbols_agree_across_inputs():
    m = _model([helper.make_node("Add", ["a", "b"], ["y"])],
               [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 0, "T"]),
                helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 1, "T"])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    f = generate_feeds(m, batch=2)[0]
    assert f["a"].shape == (2, 0, 3) and f["b"].shape == (2, 1, 3)


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE, TensorProto.INT8,
                                   TensorProto.UINT16, TensorProto.UINT64, TensorProto.BOOL, TensorProto.STRING])
def test_every_dtype_gets_values(dtype):
    m = _model([helper.make_node("Identity", ["x"], ["y"])], [helper.make_tensor_value_info("x", dtype, [4])],
               [helper.make_tensor_value_info("y", dtype, [4])])
    a, b = generate_feeds(m, trials=2)
    assert a["x"].shape == (4,) and a["x"].dtype == helper.tensor_dtype_to_np_dtype(dtype)
    if dtype not in (TensorProto.BOOL,):
        assert not np.array_equal(a["x"], b["x"]) or dtype == TensorProto.STRING


def test_integers_are_small_and_nonzero():
    m = _model([helper.make_node("Div", ["x", "d"], ["y"])],
               [helper.make_tensor_value_info("x", TensorProto.INT32, [64]),
                helper.make_tensor_value_info("d", TensorProto.INT32, [64])],
               [helper.make_tensor_value_info("y", TensorProto.INT32, [64])])
    d = generate_feeds(m)[0]["d"]
    assert d.min() >= 1 and d.max() <= 4


def test_sequence_inputs_get_two_tensors():
    seq = helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, [2, 2])
    m = _model([helper.make_node("ConcatFromSequence", ["s"], ["y"], axis=0)], [seq],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    value = generate_feeds(m)[0]["s"]
    assert isinstance(value, list) and [v.shape for v in value] == [(2, 2), (2, 2)]


def test_user_inputs_from_npz_and_pb(tmp_path):
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    x = np.array([1.0, -2.0, 3.0], np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    assert np.array_equal(load_feeds(tmp_path / "in.npz", m)[0]["x"], x)
    for k in range(2):
        d = tmp_path / "data" / f"test_data_set_{k}"
        d.mkdir(parents=True)
        (d / "input_0.pb").write_bytes(numpy_helper.from_array(x * (k + 1), "x").SerializeToString())
    feeds = load_feeds(tmp_path / "data", m)
    assert len(feeds) == 2 and np.array_equal(feeds[1]["x"], 2 * x)
    np.savez(tmp_path / "wrong.npz", z=x)
    with pytest.raises(InputError, match="name \\['z'\\], the model takes \\['x'\\]"):
        load_feeds(tmp_path / "wrong.npz", m)
    with pytest.raises(InputError, match="expected an .npz"):
        load_feeds(tmp_path / "nothing.txt", m)


def test_pickled_npz_is_refused(tmp_path):
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    np.savez(tmp_path / "p.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError, match="cannot read inputs"):
        load_feeds(tmp_path / "p.npz", m)
    assert onnx.checker.check_model(m) is None
