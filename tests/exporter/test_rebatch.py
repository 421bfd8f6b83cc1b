"""Files exported at a fixed batch, run at other batches: rebatched where the graph allows it and
checked per sample, re-exported by updp where the batch is baked in, refused otherwise; and
`updp bench --batch` with one table per batch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from updp.core.errors import InputError
from updp.exporter.rebatch import BATCH_SYMBOL, at_batch, fixed_batch
from updp.ort import make_session
from updp.workflows.bench import bench
from updp.workflows.config import BenchConfig, ExportConfig
from updp.workflows.export import export


def _flatten_classifier(batch: int, *, shared_shape: bool = False) -> onnx.ModelProto:
    """Conv -> Reshape to the constant (batch, -1) -> MatMul: the Reshape carries the batch."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([batch, -1], np.int64), "shape"),
             numpy_helper.from_array(rng.standard_normal((4 * 6 * 6, 5)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Reshape", ["c", "shape"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 5])]
    if shared_shape:  # a second Reshape reads the same shape constant
        nodes.append(helper.make_node("Reshape", ["c", "shape"], ["f2"], name="flatten2"))
        outputs.append(helper.make_tensor_value_info("f2", TensorProto.FLOAT, [batch, 144]))
    graph = helper.make_graph(nodes, "flat", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _concat_with_batch_constant() -> onnx.ModelProto:
    """A token of shape (1, 1, 4) concatenated to the input along axis 1: the batch is baked in."""
    token = numpy_helper.from_array(np.ones((1, 1, 4), np.float32), "token")
    graph = helper.make_graph([helper.make_node("Concat", ["token", "x"], ["y"], name="cat", axis=1)], "tok",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4])], [token])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


@pytest.mark.parametrize("shared", [False, True])
def test_fixed_batch_reshape_runs_at_other_batches_with_the_same_per_sample_outputs(shared):
    model = _flatten_classifier(1, shared_shape=shared)
    assert fixed_batch(model) == 1
    eight = at_batch(model, 8)
    assert eight.graph.input[0].type.tensor_type.shape.dim[0].dim_param == BATCH_SYMBOL
    x = np.random.default_rng(1).standard_normal((8, 3, 8, 8)).astype(np.float32)
    got = make_session(eight, opt_level="disable").run(None, {"x": x})[0]
    ref = make_session(model, opt_level="disable")
    expected = np.concatenate([ref.run(None, {"x": x[i:i + 1]})[0] for i in range(8)])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("batch", [1, 5, 6])
def test_a_fixed_batch_of_two_goes_to_smaller_larger_and_odd_batches(batch):
    model = _flatten_classifier(2)
    assert at_batch(model, 2) is model
    other = at_batch(model, batch)
    assert fixed_batch(other) is None
    x = np.random.default_rng(2).standard_normal((batch, 3, 8, 8)).astype(np.float32)
    got = make_session(other, opt_level="disable").run(None, {"x": x})[0]
    ref = make_session(model, opt_level="disable")
    expected = [ref.run(None, {"x": np.concatenate([x[i:i + 1], x[i:i + 1]])})[0][0] for i in range(batch)]
    np.testing.assert_allclose(got, np.stack(expected), rtol=1e-6, atol=1e-6)


def test_a_batch_baked_into_a_constant_is_refused_with_what_to_do():
    with pytest.raises(InputError, match="--dynamic-batch"):
        at_batch(_concat_with_batch_constant(), 4, where="tok.onnx")


def test_bench_times_each_batch_and_reexports_updp_files_whose_batch_is_baked_in(tmp_path):
    """A DeiT export at batch 1 folds its class token to a (1, 1, C) constant: the graph cannot be
    rebatched, so bench exports it again (its metadata records the model and the seed) with a
    dynamic batch and checks it against the file first."""
    out = tmp_path / "deit.onnx"
    export(ExportConfig(model="deit_tiny_patch16_224", input_size=(32, 32), model_kwargs={"patch_size": 8},
                        prune=2, out=str(out)))
    with pytest.raises(InputError):
        at_batch(onnx.load(str(out)), 2)
    sweep = bench(BenchConfig(models=[str(out)], batch=[1, 2], repeats=2, warmup=1, opt_levels=["all"]))
    assert sweep.batches == [1, 2] and [r.setup.batch for r in sweep.reports] == [1, 2]
    assert sweep.rebatched == {"deit.onnx": 1} and "random weights (seed 0)" in sweep.reexported["deit.onnx"]
    assert sweep.get("deit.onnx", "all", batch=2).n == 2
    text = sweep.format_table()
    assert "## batch 1" in text and "## batch 2" in text and "exported again" in text


def test_bench_refuses_repeated_batches():
    with pytest.raises(InputError, match="distinct"):
        BenchConfig(models=["a.onnx"], batch=[8, 8])


def test_bench_times_files_at_their_own_fixed_batch_unless_told(tmp_path):
    two = tmp_path / "two.onnx"
    onnx.save(_flatten_classifier(2), str(two))
    sweep = bench(BenchConfig(models=[str(two)], repeats=2, warmup=1, opt_levels=["all"]))
    assert sweep.batches == [2] and sweep.rebatched == {}
    one = tmp_path / "one.onnx"
    onnx.save(_flatten_classifier(1), str(one))
    with pytest.raises(InputError, match="different fixed batches"):
        bench(BenchConfig(models=[str(two), str(one)], repeats=2, warmup=1))
