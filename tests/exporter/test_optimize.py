"""`optimize_file` on files of every kind: float16, bfloat16 and double graphs merged and verified, integer
math untouched, subgraphs left alone, old opsets converted, inputs that cannot be generated."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from updp.cli import main
from updp.core.errors import UnsupportedError, VerificationError
from updp.exporter.optimize import optimize_file, upgrade_opset
from updp.onnx_passes import optimize_model
from updp.verify import TOLERANCES


def _conv_bn_relu_conv(dtype: int, seed: int = 0) -> onnx.ModelProto:
    """Conv -> BN -> Conv -> Relu -> Conv: the BN folds and the two convs before the Relu merge."""
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    rng = np.random.default_rng(seed)

    def init(name, *shape, low=None):
        a = rng.uniform(0.5, 1.5, shape) if low else rng.standard_normal(shape) * 0.3
        return numpy_helper.from_array(a.astype(np_dtype), name)

    inits = [init("w1", 8, 4, 3, 3), init("b1", 8), init("s", 8, low=True), init("t", 8), init("m", 8),
             init("v", 8, low=True), init("w2", 8, 8, 1, 1), init("w3", 4, 8, 1, 1)]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="c1"),
             helper.make_node("BatchNormalization", ["c1", "s", "t", "m", "v"], ["bn"], name="bn"),
             helper.make_node("Conv", ["bn", "w2"], ["c2"], name="c2"),
             helper.make_node("Relu", ["c2"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w3"], ["y"], name="c3")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", dtype, [1, 4, 8, 8])],
                          [helper.make_tensor_value_info("y", dtype, [1, 4, 8, 8])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)  # ORT 1.31 reads <= 13


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.FLOAT])
def test_float16_and_double_graphs_are_merged_and_verified(tmp_path, dtype):
    src = tmp_path / "m.onnx"
    onnx.save(_conv_bn_relu_conv(dtype), str(src))
    res = optimize_file(src, tmp_path / "o.onnx", verify=True, polish=True, fold_layernorm_affine=False)
    assert res.nodes_after < res.nodes_before and "BatchNormalization" not in res.ops_after
    if dtype == TensorProto.FLOAT:  # ORT's CPU provider has no float64 Conv: the reference evaluator checks those
        assert res.verified_with == "onnxruntime" and "verified (ORT, optimizations off" in res.format_summary()
    out = onnx.load(str(tmp_path / "o.onnx"))
    assert out.graph.input[0].type.tensor_type.elem_type == dtype
    assert all(t.data_type == dtype for t in out.graph.initializer)


def test_bfloat16_matmul_chain_is_merged_and_verified_by_the_reference_evaluator(tmp_path):
    """ONNX defines no bfloat16 Conv, and ORT's CPU provider runs no bfloat16 Mul: a bfloat16
    MatMul chain is merged in float64, cast back once, and checked with onnx's reference evaluator."""
    bf16 = ml_dtypes.bfloat16
    rng = np.random.default_rng(0)

    def init(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(bf16), name)

    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("Add", ["a", "b1"], ["b"]),
             helper.make_node("MatMul", ["b", "w2"], ["c"]), helper.make_node("Add", ["c", "b2"], ["d"]),
             helper.make_node("Mul", ["d", "s"], ["e"]), helper.make_node("Relu", ["e"], ["y"])]
    bf = TensorProto.BFLOAT16
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", bf, [2, 8, 16])],
                          [helper.make_tensor_value_info("y", bf, [2, 8, 16])],
                          [init("w1", 16, 32), init("b1", 32), init("w2", 32, 16), init("b2", 16), init("s", 16)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.save(model, str(tmp_path / "b.onnx"))
    res = optimize_file(tmp_path / "b.onnx", tmp_path / "o.onnx", verify=True, polish=True, fold_layernorm_affine=False)
    assert res.applied.get("merge_matmul_chain") == 1
    assert res.ops_after == {"Add": 1, "MatMul": 1, "Relu": 1}
    out = onnx.load(str(tmp_path / "o.onnx"))
    assert all(t.data_type == bf for t in out.graph.initializer)
    x = rng.standard_normal((2, 8, 16)).astype(bf16)
    want = ReferenceEvaluator(str(tmp_path / "b.onnx")).run(None, {"x": x})[0].astype(np.float64)
    got = ReferenceEvaluator(str(tmp_path / "o.onnx")).run(None, {"x": x})[0].astype(np.float64)
    rtol, atol = TOLERANCES["bfloat16"]
    assert np.abs(got - want).max() <= atol + rtol * np.abs(want).max()
    assert res.verified_with == "onnx reference evaluator"
    assert "verified (onnx reference evaluator: ONNX Runtime does not run this model" in res.format_summary()


def test_integer_math_passes_through_untouched(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.INT32, [4])
    y = helper.make_tensor_value_info("y", TensorProto.INT32, [4])
    nodes = [helper.make_node("Mul", ["x", "a"], ["m"]), helper.make_node("Add", ["m", "b"], ["s"]),
             helper.make_node("Sub", ["s", "c"], ["y"])]
    inits = [numpy_helper.from_array(np.array(v, np.int32), n) for n, v in (("a", [3] * 4), ("b", [1] * 4),
                                                                            ("c", [2] * 4))]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(m, str(tmp_path / "i.onnx"))
    res = optimize_file(tmp_path / "i.onnx", tmp_path / "o.onnx", verify=True, polish=False,
                        fold_layernorm_affine=False)
    assert res.applied == {} and res.ops_after == {"Add": 1, "Mul": 1, "Sub": 1}


def test_a_subgraph_is_left_alone_and_what_it_reads_is_kept(tmp_path):
    """An If whose branches read a main-graph tensor: the main graph is optimized, the branches are not."""
    f = TensorProto.FLOAT
    then_g = helper.make_graph([helper.make_node("Relu", ["bn"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", f, [1, 4, 8, 8])])
    else_g = helper.make_graph([helper.make_node("Neg", ["bn"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", f, [1, 4, 8, 8])])
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w")] + [
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 4).astype(np.float32), n) for n in ("s", "v")] + [
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), n) for n in ("t0", "m")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("BatchNormalization", ["c", "s", "t0", "m", "v"], ["bn"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f, [1, 4, 8, 8]),
                                       helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("y", f, [1, 4, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(m, str(tmp_path / "if.onnx"))
    res = optimize_file(tmp_path / "if.onnx", tmp_path / "o.onnx", verify=True, polish=False,
                        fold_layernorm_affine=False)
    assert res.applied.get("fold_affine_after_linear") == 1
    out = onnx.load(str(tmp_path / "o.onnx"))
    branch = next(n for n in out.graph.node if n.op_type == "If")
    assert sorted(n.op_type for a in branch.attribute for n in a.g.node) == ["Neg", "Relu"]


def test_an_old_opset_is_converted_then_optimized(tmp_path):
    old = _conv_bn_relu_conv(TensorProto.FLOAT)
    old.opset_import[0].version = 9
    old.ir_version = 4
    onnx.save(old, str(tmp_path / "old.onnx"))
    res = optimize_file(tmp_path / "old.onnx", tmp_path / "o.onnx", verify=True, polish=True,
                        fold_layernorm_affine=False)
    assert res.conversion == "opset 9 -> 13 (onnx version converter)"
    assert "BatchNormalization" not in res.ops_after and res.max_abs_diff is not None
    assert "upgraded: opset 9 -> 13" in res.format_summary()


def test_an_old_opset_models_local_function_is_converted_with_it(tmp_path):
    """ONNX wants a function's opsets to be the model's: a local function of an opset-11 model is
    converted to 13 with the graph (its Squeeze's `axes` attribute becomes an input), not kept at 11."""
    body = [helper.make_node("Mul", ["a", "s"], ["m"]), helper.make_node("Add", ["m", "t"], ["o1"]),
            helper.make_node("Unsqueeze", ["o1"], ["u"], axes=[0]), helper.make_node("Squeeze", ["u"], ["o"], axes=[0])]
    fn = helper.make_function("local", "Affine", ["a", "s", "t"], ["o"], body, [helper.make_opsetid("", 11)])
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)
             for name, shape in (("w1", (8, 4, 1, 1)), ("s", (8, 1, 1)), ("t", (8, 1, 1)), ("w2", (3, 8, 1, 1)))]
    g = helper.make_graph([helper.make_node("Conv", ["x", "w1"], ["c1"]),
                           helper.make_node("Affine", ["c1", "s", "t"], ["a"], domain="local"),
                           helper.make_node("Conv", ["a", "w2"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 6, 6])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 11), helper.make_opsetid("local", 1)],
                              functions=[fn], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(tmp_path / "m.onnx"))
    res = optimize_file(tmp_path / "m.onnx", tmp_path / "o.onnx", verify=True, polish=True,
                        fold_layernorm_affine=False)
    assert res.conversion == "opset 11 -> 13 (onnx version converter)" and res.max_abs_diff == 0.0
    (lifted,) = onnx.load(str(tmp_path / "o.onnx")).functions
    assert [(o.domain, o.version) for o in lifted.opset_import] == [("", 13)]
    squeeze = next(n for n in lifted.node if n.op_type == "Squeeze")
    assert len(squeeze.input) == 2 and not squeeze.attribute  # axes moved to an input, as opset 13 has it


def test_a_conversion_that_changes_the_interface_is_refused(tmp_path):
    """Scan-8 carries a batch axis that Scan-9 dropped: the converter changes the inputs."""
    from onnx.backend.test.case.node import collect_testcases

    case = next(c for c in collect_testcases() if c.name == "test_scan_sum")
    with pytest.raises(UnsupportedError, match="changes the model's inputs or outputs"):
        upgrade_opset(case.model)


def test_inputs_that_cannot_be_generated_exit_3_and_real_ones_work(tmp_path, capsys):
    f = TensorProto.FLOAT
    g = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("Relu", ["r"], ["y"])],
                          "g", [helper.make_tensor_value_info("x", f, [2, 6]),
                                helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
                          [helper.make_tensor_value_info("y", f, ["a", "b"])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "r.onnx"))
    assert main(["optimize", str(tmp_path / "r.onnx"), "--out", str(tmp_path / "o.onnx")]) == 3
    err = capsys.readouterr().err
    assert "input 'shape' feeds Reshape" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()
    np.savez(tmp_path / "in.npz", x=np.ones((2, 6), np.float32), shape=np.array([3, 4], np.int64))
    assert main(["optimize", str(tmp_path / "r.onnx"), "--out", str(tmp_path / "o.onnx"), "--inputs",
                 str(tmp_path / "in.npz")]) == 0
    assert "in.npz inputs" in capsys.readouterr().out


def test_a_model_failing_the_full_check_is_bad_input(tmp_path, capsys):
    f = TensorProto.FLOAT
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", f, [2])],
                          [helper.make_tensor_value_info("y", f, [3])])  # Relu keeps the shape: 2 != 3
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "bad.onnx"))
    assert main(["optimize", str(tmp_path / "bad.onnx"), "--out", str(tmp_path / "o.onnx")]) == 2
    assert "fails onnx's full check" in capsys.readouterr().err


def _big_enough(monkeypatch, limit: int = 1000):
    """Pretend the protobuf limit is `limit` bytes, so that a tiny model takes the external-data path."""
    monkeypatch.setattr("updp.ort.EXTERNAL_DATA_THRESHOLD", limit)


def test_a_model_over_the_limit_is_written_with_external_data(tmp_path, monkeypatch):
    _big_enough(monkeypatch)
    src = tmp_path / "m.onnx"
    onnx.save(_conv_bn_relu_conv(TensorProto.FLOAT), str(src))
    out = tmp_path / "out" / "o.onnx"
    first = optimize_file(src, out, verify=True, polish=False, fold_layernorm_affine=False)
    data = sorted(p.name for p in out.parent.iterdir())
    assert len(data) == 2 and data[0] == "o.onnx" and data[1].startswith("o.onnx.") and data[1].endswith(".data")
    proto = onnx.load(str(out), load_external_data=False)
    assert any(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer)  # > 1 kB tensors
    assert first.max_abs_diff is not None
    # a second write switches to a new data file and removes the old one
    optimize_file(src, out, verify=True, polish=False, fold_layernorm_affine=False)
    again = sorted(p.name for p in out.parent.iterdir())
    assert len(again) == 2 and again[1] != data[1]
    from updp.ort import make_session

    x = np.ones((1, 4, 8, 8), np.float32)
    assert make_session(str(out), opt_level="disable").run(None, {"x": x})[0].shape == (1, 4, 8, 8)


def test_a_failed_write_with_external_data_leaves_nothing(tmp_path, monkeypatch):
    _big_enough(monkeypatch)
    import updp.exporter.optimize as optimizing

    src = tmp_path / "m.onnx"
    onnx.save(_conv_bn_relu_conv(TensorProto.FLOAT), str(src))

    def corrupt(model, **kw):
        from updp.onnx_passes import optimize_model

        res = optimize_model(model, **kw)
        w = res.model.graph.initializer[0]
        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) + 1, w.name))
        return res

    monkeypatch.setattr(optimizing, "optimize_model", corrupt)
    with pytest.raises(Exception, match="differs from the reference"):
        optimize_file(src, tmp_path / "o.onnx", verify=True, polish=False, fold_layernorm_affine=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def _external_tensor(name: str, array: np.ndarray, folder, location: str) -> TensorProto:
    """A TensorProto whose data is written straight to `location` (a >2 GB tensor cannot pass
    through protobuf in memory)."""
    array.tofile(folder / location)
    t = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape,
                    data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", str(array.nbytes))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


@pytest.mark.slow
def test_a_real_model_over_2_gb_is_optimized_and_verified(tmp_path):
    """A 2.15 GB MatMul with a per-channel scale after it: the scale folds into the weight."""
    n = 23_200  # 23200^2 float32 = 2.15 GB
    rng = np.random.default_rng(0)
    w = rng.random((n, n), dtype=np.float32)
    w -= 0.5
    big = _external_tensor("w", w, tmp_path, "big.onnx.data")
    del w
    s = numpy_helper.from_array(rng.uniform(0.5, 1.5, n).astype(np.float32), "s")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Mul", ["m", "s"], ["y"])],
                          "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], [big, s])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.save(model, str(tmp_path / "big.onnx"))
    res = optimize_file(tmp_path / "big.onnx", tmp_path / "o.onnx", verify=True, polish=False,
                        fold_layernorm_affine=False)
    assert res.applied.get("fold_affine_after_linear") == 1 and res.ops_after == {"MatMul": 1}
    assert res.max_abs_diff is not None and res.rel_diff <= 1e-4
    assert any(p.name.startswith("o.onnx.") and p.name.endswith(".data") for p in tmp_path.iterdir())


def _conv_then(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], **model_kw) -> onnx.ModelProto:
    """x -> 1x1 Conv (w1) -> `nodes` -> y, (2, 4, 6, 6) -> (2, 8, 6, 6)."""
    w1 = numpy_helper.from_array((np.random.default_rng(0).standard_normal((8, 4, 1, 1)) * 0.3).astype(np.float32),
                                 "w1")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w1"], ["c1"], name="c1"), *nodes], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8, 6, 6])], [w1, *inits])
    return helper.make_model(g, **{"opset_imports": [helper.make_opsetid("", 17)], "ir_version": 8, **model_kw})


def _infinite_scale() -> onnx.ModelProto:
    s = np.ones((8, 1, 1), np.float32)
    s[2] = np.inf
    return _conv_then([helper.make_node("Mul", ["c1", "s"], ["y"], name="scale")], [numpy_helper.from_array(s, "s")])


def _zero_variance_bn() -> onnx.ModelProto:
    var = np.ones(8, np.float32)
    var[0] = 0.0  # with epsilon 0: an infinite scale
    inits = [numpy_helper.from_array(np.full(8, v, np.float32), n) for n, v in (("g", 1.5), ("b", 0.1), ("mu", 0.2))]
    return _conv_then([helper.make_node("BatchNormalization", ["c1", "g", "b", "mu", "var"], ["y"], epsilon=0.0)],
                      [*inits, numpy_helper.from_array(var, "var")])


def _local_function_named_like_mul() -> onnx.ModelProto:
    """A model-local function `local:Mul` whose body adds: an op of another domain that only
    shares its name with ONNX's Mul."""
    body = helper.make_node("Add", ["a", "b"], ["c"])
    fn = helper.make_function("local", "Mul", ["a", "b"], ["c"], [body], [helper.make_opsetid("", 17)])
    shift = numpy_helper.from_array(np.full((8, 1, 1), 0.5, np.float32), "t")
    return _conv_then([helper.make_node("Mul", ["c1", "t"], ["y"], domain="local", name="local_mul")], [shift],
                      opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)], functions=[fn])


@pytest.mark.parametrize("make", [_infinite_scale, _zero_variance_bn, _local_function_named_like_mul])
def test_a_model_onnxsims_optimizer_gets_wrong_is_written_with_the_passes_alone(tmp_path, make):
    """A non-finite per-channel scale after a Conv (a Mul by inf, a BN with zero variance and
    epsilon 0): folding it is not exact (the conv's sums become inf - inf = NaN), so the passes
    refuse it; onnxsim's optimizer folds it anyway, and so it does a local function named Mul. The
    check catches that, and the file is written without onnxsim's optimizer, verified."""
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(make(), str(src))
    res = optimize_file(src, out, verify=True, polish=True, fold_layernorm_affine=False)
    assert any(n.startswith("onnxsim's optimizer changed the outputs (output 'y': ") and
               n.endswith("): written without it, the passes alone") for n in res.notes), res.notes
    assert res.max_abs_diff == 0.0 and res.nodes_after == res.nodes_before
    if make is not _local_function_named_like_mul:
        assert any("NaN or an infinite value" in r for r in res.refusals), res.refusals
    x = np.random.default_rng(1).standard_normal((2, 4, 6, 6)).astype(np.float32)
    want = ReferenceEvaluator(str(src)).run(None, {"x": x})[0]
    got = ReferenceEvaluator(str(out)).run(None, {"x": x})[0]
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # with the optimizer off from the start: the same file, and nothing to note
    plain = optimize_file(src, tmp_path / "p.onnx", verify=True, polish=False, fold_layernorm_affine=False)
    assert not any("onnxsim" in n for n in plain.notes)
    assert (tmp_path / "p.onnx").read_bytes() == out.read_bytes()


def test_a_wrong_rewrite_without_the_optimizer_is_still_refused(tmp_path, monkeypatch):
    """The retry is only for onnxsim's optimizer: when the passes' own result fails the check,
    nothing is written (exit 4), polish or not."""
    import updp.exporter.optimize as optimize_module

    def broken(model, **kw):
        res = optimize_model(model, **kw)
        w = next(t for t in res.model.graph.initializer if len(t.dims) == 4)
        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 2, w.name))
        return res

    monkeypatch.setattr(optimize_module, "optimize_model", broken)
    onnx.save(_conv_bn_relu_conv(TensorProto.FLOAT), str(tmp_path / "m.onnx"))
    with pytest.raises(VerificationError, match="differs from the reference"):
        optimize_file(tmp_path / "m.onnx", tmp_path / "o.onnx", verify=True, polish=True, fold_layernorm_affine=False)
    assert not (tmp_path / "o.onnx").exists()


def test_initializers_that_are_also_inputs_become_constants_and_the_summary_says_so(tmp_path):
    """An initializer listed as a graph input may be fed instead of its stored value; merging folds
    it, so the output no longer takes it, and the summary names it rather than changing the
    interface silently."""
    model = _conv_bn_relu_conv(TensorProto.FLOAT)
    for name in ("w1", "b1"):
        t = next(t for t in model.graph.initializer if t.name == name)
        model.graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(t.dims)))
    onnx.save(model, str(tmp_path / "m.onnx"))
    res = optimize_file(tmp_path / "m.onnx", tmp_path / "o.onnx", verify=True, polish=True,
                        fold_layernorm_affine=False)
    assert [i.name for i in onnx.load(str(tmp_path / "o.onnx")).graph.input] == ["x"]
    assert any(n.startswith("2 initializer(s) were also graph inputs (overridable: w1, b1)") for n in res.notes)
    untouched = optimize_file(tmp_path / "o.onnx", tmp_path / "o2.onnx", verify=True, polish=True,
                              fold_layernorm_affine=False)
    assert not any("overridable" in n for n in untouched.notes)  # a file without such inputs: no note
