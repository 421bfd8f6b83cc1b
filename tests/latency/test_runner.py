"""Latency runner: recorded setup, interleaving, statistics structure, JSON, input checks."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from updp.core.errors import InputError
from updp.latency import runner
from updp.latency.runner import BenchReport, LatencySetup, benchmark


def matmul_chain(n: int, width: int = 128, rows: int = 32, name: str = "chain") -> onnx.ModelProto:
    """x: (rows, width) -> n x (MatMul with a (width, width) weight, Relu)."""
    rng = np.random.default_rng(n)
    nodes, inits, prev = [], [], "x"
    for i in range(n):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"], name=f"/l{i}/MatMul"))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"r{i}"], name=f"/l{i}/Relu"))
        prev = f"r{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"], name="/out/Identity"))
    graph = helper.make_graph(nodes, name,
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


FAST = dict(warmup=1, repeats=5, threads=1)


def test_setup_records_fields():
    s = LatencySetup(threads=1, opt_level="disable", warmup=3, repeats=7, batch=2)
    d = s.to_dict()
    assert d["providers"] == ["CPUExecutionProvider"]
    assert (d["device"], d["threads"], d["opt_level"], d["warmup"], d["repeats"], d["batch"]) == (
        "cpu", 1, "disable", 3, 7, 2)
    assert d["onnxruntime_version"] == ort.__version__
    assert d["onnx_version"] == onnx.__version__
    assert d["numpy_version"] == np.__version__
    assert d["cpu_count"] == os.cpu_count()
    assert d["python"] and d["platform"] and d["cpu_model"]
    assert LatencySetup.from_dict(json.loads(json.dumps(d))) == s


@pytest.mark.parametrize("kwargs", [dict(opt_level="max"), dict(device="tpu"), dict(repeats=0),
                                    dict(warmup=-1), dict(threads=0), dict(batch=0)])
def test_setup_rejects_bad_values(kwargs):
    with pytest.raises(InputError):
        LatencySetup(**kwargs)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is present")
def test_cuda_unavailable_is_a_clean_input_error():
    with pytest.raises(InputError, match="CUDA"):
        LatencySetup(device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                    reason="needs onnxruntime-gpu with CUDAExecutionProvider")
def test_cuda_benchmark():
    setup = LatencySetup(device="cuda", **FAST)
    assert setup.providers[0] == "CUDAExecutionProvider"
    rep = benchmark([("a", matmul_chain(2)), ("b", matmul_chain(4))], setup)
    assert [r.model for r in rep.results] == ["a", "b"]


class _Input:
    def __init__(self, name, shape):
        self.name, self.shape, self.type = name, shape, "tensor(float)"


class FakeSession:
    """Records every run in a shared log; optionally sleeps to simulate work."""

    def __init__(self, tag, log, shape=(1, 4), sleep=0.0):
        self.tag, self.log, self.shape, self.sleep = tag, log, shape, sleep

    def get_inputs(self):
        return [_Input("x", list(self.shape))]

    def run(self, _outputs, feeds):
        assert feeds["x"].shape == tuple(self.shape)
        if self.sleep:
            time.sleep(self.sleep)
        self.log.append(self.tag)


def _fake_factory(log, sleep=0.0):
    def make_session(model, *, opt_level, threads, providers, profile_prefix=None, spinning=None):
        return FakeSession((model.graph.name, opt_level), log, sleep=sleep)
    return make_session


def test_timed_runs_interleave_and_rotate(monkeypatch):
    log = []
    monkeypatch.setattr(runner, "make_session", _fake_factory(log))
    models = [(n, matmul_chain(1, name=n)) for n in "abc"]
    rep = benchmark(models, LatencySetup(warmup=2, repeats=3), opt_levels=["disable", "all"])
    for level, chunk in (("disable", log[:15]), ("all", log[15:])):
        names = [tag for tag, lvl in chunk]
        assert all(lvl == level for _, lvl in chunk)
        assert names[:6] == ["a", "a", "b", "b", "c", "c"]  # warm-up, untimed
        assert names[6:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # one run each, rotating start
    assert len(log) == 30
    assert [(r.model, r.opt_level, r.n) for r in rep.results] == [
        (m, lvl, 3) for lvl in ("disable", "all") for m in "abc"]


def test_time_budget_caps_repeats(monkeypatch):
    log = []
    monkeypatch.setattr(runner, "make_session", _fake_factory(log, sleep=0.005))
    models = [(n, matmul_chain(1, name=n)) for n in "ab"]
    rep = benchmark(models, LatencySetup(warmup=0, repeats=10_000), max_seconds=0.1)
    n = {r.model: r.n for r in rep.results}
    assert 1 <= n["a"] < 100 and n["a"] == n["b"]
    assert rep.max_seconds == 0.1


def test_heavier_model_is_slower_and_self_speedup_is_near_one():
    light, heavy = matmul_chain(2), matmul_chain(20)
    setup = LatencySetup(warmup=2, repeats=15, threads=1)
    rep = benchmark([("light", light), ("light-again", light), ("heavy", heavy)], setup,
                    opt_levels=["disable", "all"])
    assert rep.opt_levels == ["disable", "all"] and rep.models == ["light", "light-again", "heavy"]
    for level in rep.opt_levels:
        lt, again, hv = (rep.get(m, level) for m in rep.models)
        for r in (lt, again, hv):
            assert r.n == 15 and r.min_ms <= r.median_ms <= r.p90_ms and r.min_ms <= r.mean_ms
        assert lt.speedup == 1.0 and lt.p90_speedup == 1.0
        assert 1 / 3 < again.speedup < 3  # same model: ~1, loose because the machine is shared
        assert hv.median_ms > lt.median_ms and hv.speedup < 1


def test_report_json_round_trip_and_table(tmp_path):
    rep = benchmark([("a", matmul_chain(1)), ("b", matmul_chain(3))], LatencySetup(**FAST),
                    opt_levels=["disable", "all"])
    path = tmp_path / "lat.json"
    text = rep.to_json(path)
    d = json.loads(path.read_text())
    assert json.loads(text) == d
    assert BenchReport.from_dict(d) == rep
    assert {"median_ms", "p90_ms", "speedup", "model", "opt_level"} <= set(d["results"][0])
    table = rep.format_table()
    header = table.splitlines()[0]
    for item in ("providers=CPUExecutionProvider", "threads=1", "opt_levels=disable,all", "warmup=1",
                 "repeats=5", "batch=1", f"ort={ort.__version__}"):
        assert item in header
    assert "ORT_DISABLE_ALL" in table and "ORT_ENABLE_ALL" in table and "speedup vs a" in table
    assert len(table.splitlines()) == 2 + 2 + 4  # header, columns, rule, 2 models x 2 levels


def test_mismatched_input_shapes_raise():
    with pytest.raises(InputError, match="differ"):
        benchmark([("a", matmul_chain(1, width=8)), ("b", matmul_chain(1, width=16))],
                  LatencySetup(**FAST))


def _cast_io(model: onnx.ModelProto, elem_type: int) -> onnx.ModelProto:
    """`model` behind a Cast of its input from `elem_type` and a Cast of its output back to it."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    g.node.insert(0, helper.make_node("Cast", ["x_in"], ["x"], to=TensorProto.FLOAT, name="/in/Cast"))
    g.node[-1].output[0] = "y_float"
    g.node.append(helper.make_node("Cast", ["y_float"], ["y"], to=elem_type, name="/out/Cast"))
    dims = [d.dim_value for d in g.input[0].type.tensor_type.shape.dim]
    del g.input[:], g.output[:]
    g.input.append(helper.make_tensor_value_info("x_in", elem_type, dims))
    g.output.append(helper.make_tensor_value_info("y", elem_type, dims))
    onnx.checker.check_model(m)
    return m


def _record_feeds(monkeypatch) -> list[tuple[str, np.ndarray]]:
    """(model name, its first input) of every feed the runner builds from now on, in order."""
    fed: list[tuple[str, np.ndarray]] = []
    real = runner._shared_feeds

    def recording(names, sessions, batch, seed, dims=None):
        feeds = real(names, sessions, batch, seed, dims)
        fed.extend((n, next(iter(f.values()))) for n, f in zip(names, feeds, strict=True))
        return feeds

    monkeypatch.setattr(runner, "_shared_feeds", recording)
    return fed


def test_float_widths_may_differ_and_share_one_draw(monkeypatch):
    """A float16-input file (`updp export --fp16`) is timed beside its float32 model: every model
    gets the same draw, rounded to its float type; an integer input beside a float one is refused."""
    fed = _record_feeds(monkeypatch)
    base = matmul_chain(1, width=8)
    rep = benchmark([("fp32", base), ("fp16", _cast_io(base, TensorProto.FLOAT16)),
                     ("fp64", _cast_io(base, TensorProto.DOUBLE))], LatencySetup(**FAST))
    seen = dict(fed)
    assert [r.model for r in rep.results] == ["fp32", "fp16", "fp64"]
    assert (seen["fp32"].dtype, seen["fp16"].dtype, seen["fp64"].dtype) == (np.float32, np.float16, np.float64)
    np.testing.assert_array_equal(seen["fp16"], seen["fp64"].astype(np.float16))
    np.testing.assert_array_equal(seen["fp32"], seen["fp64"].astype(np.float32))
    assert np.abs(seen["fp64"] - seen["fp32"]).max() > 0  # drawn wider than float32, then rounded
    with pytest.raises(InputError, match="int64"):
        benchmark([("fp32", base), ("int", _cast_io(base, TensorProto.INT64))], LatencySetup(**FAST))


def test_bad_model_lists_raise(tmp_path):
    m = matmul_chain(1)
    with pytest.raises(InputError):
        benchmark([], LatencySetup(**FAST))
    with pytest.raises(InputError, match="unique"):
        benchmark([("a", m), ("a", m)], LatencySetup(**FAST))
    with pytest.raises(InputError, match="not found"):
        benchmark([("a", m), ("b", tmp_path / "missing.onnx")], LatencySetup(**FAST))
    with pytest.raises(InputError, match="optimization level"):
        benchmark([("a", m)], LatencySetup(**FAST), opt_levels=["fast"])


def test_models_from_paths(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(matmul_chain(2), str(p))
    rep = benchmark([("file", p), ("proto", matmul_chain(2))], LatencySetup(**FAST))
    assert rep.get("file").n == rep.get("proto").n == 5


def _dynamic_image_model() -> onnx.ModelProto:
    """x: (n, 3, h, w) -> Relu -> ReduceMean over h, w: a file exported with a dynamic image size."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="/relu/Relu"),
             helper.make_node("ReduceMean", ["r", "axes"], ["y"], name="/pool/ReduceMean", keepdims=0)]
    graph = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
                              [numpy_helper.from_array(np.array([2, 3], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def test_symbolic_image_dims_are_given_by_name_and_recorded(monkeypatch):
    model = _dynamic_image_model()
    with pytest.raises(InputError, match="symbolic dimension 'h' at axis 2; give its value"):
        benchmark([("a", model)], LatencySetup(**FAST))
    fed = _record_feeds(monkeypatch)
    rep = benchmark([("a", model), ("b", model)], LatencySetup(**FAST, batch=2, dims={"h": 5, "w": 7}))
    assert [(name, x.shape) for name, x in fed] == [("a", (2, 3, 5, 7)), ("b", (2, 3, 5, 7))]
    assert rep.setup.dims == {"h": 5, "w": 7} and "batch=2 h=5 w=7 " in rep.format_table().splitlines()[0]
    assert BenchReport.from_dict(json.loads(rep.to_json())).setup.dims == {"h": 5, "w": 7}
    with pytest.raises(InputError, match="named 'hh'.*h, n, w"):  # a misspelt name is not ignored
        benchmark([("a", model)], LatencySetup(**FAST, dims={"h": 5, "w": 7, "hh": 3}))
    with pytest.raises(InputError, match="n is the batch axis"):
        benchmark([("a", model)], LatencySetup(**FAST, dims={"n": 4, "h": 5, "w": 7}))
    for bad in ({"h": 0}, {"h": 2.5}, {"h": True}):
        with pytest.raises(InputError, match="positive integers"):
            LatencySetup(dims=bad)
