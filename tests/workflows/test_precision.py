"""int8 and float16 files from `updp export` / `updp optimize`: written beside the float32 file
with what was measured about them, and refused (nothing written at all) without calibration data
or when the int8 file loses more accuracy than allowed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from updp.accuracy import onnx_accuracy
from updp.core.errors import InputError
from updp.data import get_datasets
from updp.workflows.config import ExportConfig, OptimizeConfig
from updp.workflows.export import export
from updp.workflows.optimize import optimize
from updp.workflows.precision import AccuracyDropError, derived_path

ROOT = Path(__file__).resolve().parents[2]


def _meta(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "updp", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def _offset_linear_classifier(offset: float) -> onnx.ModelProto:
    """A least-squares linear classifier of sklearn's digits (3x8x8 as served) whose logits all carry
    `offset`: in float the offset changes no argmax, but int8 activations spread 256 levels over
    [0, offset + ...], so with a large offset every logit rounds to the same level and the int8 file
    predicts one class. A model that genuinely quantizes badly."""
    train = get_datasets("digits", (8, 8)).train
    train.augment = False  # fitted on the images as they are
    xs = np.stack([train[i][0].numpy().reshape(-1) for i in range(len(train))]).astype(np.float64)
    ys = np.array([train[i][1] for i in range(len(train))])
    feats = np.hstack([xs, np.ones((len(xs), 1))])
    w, *_ = np.linalg.lstsq(feats, np.eye(10)[ys], rcond=None)
    inits = [numpy_helper.from_array(w[:-1].astype(np.float32), "w"),
             numpy_helper.from_array((w[-1] + offset).astype(np.float32), "b"),
             numpy_helper.from_array(np.array([1, -1], np.int64), "flat_shape")]
    nodes = [helper.make_node("Reshape", ["x", "flat_shape"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "w"], ["m"], name="fc"),
             helper.make_node("Add", ["m", "b"], ["logits"], name="bias")]
    graph = helper.make_graph(nodes, "digits_linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                     [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


@pytest.fixture(scope="module")
def offset_classifier(tmp_path_factory):
    path = tmp_path_factory.mktemp("lin") / "linear.onnx"
    onnx.save(_offset_linear_classifier(1e4), str(path))
    return path


def test_export_writes_float_int8_and_fp16_files_with_their_measurements(tmp_path):
    out = tmp_path / "p2.onnx"
    # random weights: the accuracy is a mechanics check, so no accuracy floor is applied here
    res = export(ExportConfig(model="timm:convnext_atto", prune=2, num_classes=10, input_size=(32, 32),
                              out=str(out), quantize="int8", data="digits", calib_images=32,
                              max_accuracy_drop=100.0, fp16=True))
    int8, fp16 = tmp_path / "p2.int8.onnx", tmp_path / "p2.fp16.onnx"
    assert out.is_file() and int8.is_file() and fp16.is_file()
    kinds = {d.kind: d for d in res.derived}
    assert set(kinds) == {"int8", "fp16"} and kinds["int8"].out == str(int8)

    # the float file keeps its verified-merge record; the int8 file says whose record that was
    float_meta, int8_meta = _meta(out), _meta(int8)
    assert float(float_meta["updp.verified_max_abs_diff"]) == res.max_abs_diff
    assert "updp.verified_max_abs_diff" not in int8_meta
    assert float(int8_meta["updp.verified_max_abs_diff_of_float_model"]) == res.max_abs_diff
    record = json.loads(int8_meta["updp.quantization"])
    assert record["calibration"].startswith("digits train split, 32 images") and record["method"] == "minmax"
    assert kinds["int8"].verified is False and kinds["fp16"].verified is True
    fp16_meta = _meta(fp16)
    half_record = json.loads(fp16_meta["updp.precision"])
    assert half_record["io"] == "float16" and half_record["verified_max_abs_diff"] == kinds["fp16"].difference[
        "max_abs_diff"]
    assert "updp.verified_max_abs_diff" not in fp16_meta  # that record is the float merge's, handed down
    assert float(fp16_meta["updp.verified_max_abs_diff_of_float_model"]) == res.max_abs_diff

    # the accuracies reported are those of the files on disk, measured again here
    data = get_datasets("digits", (32, 32))
    float_acc = onnx_accuracy(str(out), data.val)["acc"]
    int8_acc = onnx_accuracy(str(int8), data.val)["acc"]
    assert kinds["int8"].float_accuracy == float_acc and kinds["int8"].accuracy == int8_acc
    assert kinds["int8"].accuracy_drop == pytest.approx(100 * (float_acc - int8_acc), abs=1e-9)
    assert kinds["fp16"].accuracy == onnx_accuracy(str(fp16), data.val)["acc"]
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    summary = res.format_summary()
    assert "NOT an exact rewrite" in summary and "float16's tolerance" in summary
    assert [d["kind"] for d in res.to_dict()["derived"]] == ["int8", "fp16"]


def test_int8_file_that_loses_accuracy_is_refused_and_nothing_is_written(tmp_path, offset_classifier):
    out = tmp_path / "o.onnx"
    proc = _cli("optimize", str(offset_classifier), "--out", str(out), "--quantize", "int8", "--data", "digits",
                "--calib-images", "64")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 4, proc.stderr
    assert len(lines) == 1 and "points of val accuracy" in lines[0] and "--max-accuracy-drop 1" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []

    # the same file with a limit it meets is written: the refusal came from the accuracy drop
    res = optimize(OptimizeConfig(input=str(offset_classifier), out=str(out), quantize="int8", data="digits",
                                  calib_images=64, max_accuracy_drop=100.0))
    item = res.derived[0]
    assert item.float_accuracy > 0.8 and item.accuracy_drop > 50
    assert derived_path(out, "int8").is_file()


def test_the_same_classifier_without_the_offset_quantizes_within_the_limit(tmp_path):
    src = tmp_path / "lin.onnx"
    onnx.save(_offset_linear_classifier(0.0), str(src))
    res = optimize(OptimizeConfig(input=str(src), out=str(tmp_path / "o.onnx"), quantize="int8", data="digits",
                                  calib_images=64))
    item = res.derived[0]
    assert item.accuracy_drop <= 1.0 and item.difference["top1_agreement"] >= 0.9


def test_quantize_without_calibration_data_is_refused_before_any_work(tmp_path):
    out = tmp_path / "x.onnx"
    proc = _cli("export", "timm:convnext_atto", "--input-size", "32", "--quantize", "int8", "--out", str(out))
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert "\n" not in line and "--data" in line and "--calib random" in line
    assert list(tmp_path.iterdir()) == []


def test_random_calibration_is_recorded_and_needs_no_data(tmp_path, offset_classifier):
    out = tmp_path / "r.onnx"
    res = optimize(OptimizeConfig(input=str(offset_classifier), out=str(out), quantize="int8", calib="random"))
    item = res.derived[0]
    assert item.accuracy is None  # nothing to measure against
    assert json.loads(_meta(derived_path(out, "int8"))["updp.quantization"])["calibration"] == "random"


def test_fp16_file_can_keep_float32_inputs_and_outputs(tmp_path, offset_classifier):
    out = tmp_path / "h.onnx"
    optimize(OptimizeConfig(input=str(offset_classifier), out=str(out), fp16=True, fp16_keep_io=True))
    half = onnx.load(str(derived_path(out, "fp16")))
    assert half.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert any(t.data_type == TensorProto.FLOAT16 for t in half.graph.initializer)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"fp16_keep_io": True}, "--fp16-keep-io applies to --fp16"),
    ({"calib": "random"}, "--calib applies to --quantize"),
    ({"per_channel": False}, "--per-tensor applies to --quantize"),
    ({"data": "digits"}, "updp eval FILE --data SPEC"),
    ({"quantize": "int8", "calib_method": "kl"}, "--calib-method must be one of"),
    ({"quantize": "int8", "data": "digits", "keep_float": "Soft-max"}, "--keep-float expects ONNX operator types"),
    ({"quantize": "int8", "data": "digits", "max_accuracy_drop": -1}, "--max-accuracy-drop must be >= 0"),
])
def test_precision_options_are_checked(kwargs, message):
    with pytest.raises(InputError, match=message):
        OptimizeConfig(input="m.onnx", out="o.onnx", **kwargs)


def test_keep_float_takes_commas_lists_or_none():
    def kept(value):
        cfg = OptimizeConfig(input="m.onnx", out="o.onnx", quantize="int8", calib="random", keep_float=value)
        return cfg.keep_float

    assert kept("Softmax, LayerNormalization,Softmax") == ("Softmax", "LayerNormalization")
    assert kept(["Gelu"]) == ("Gelu",) and kept("none") == ()


def test_derived_paths_put_the_kind_before_the_suffix():
    assert derived_path("a/model.onnx", "int8") == Path("a/model.int8.onnx")
    assert derived_path("model", "fp16") == Path("model.fp16.onnx")
    assert issubclass(AccuracyDropError, Exception) and AccuracyDropError.exit_code == 4


def test_fp16_file_that_misses_float16_tolerance_is_refused_and_nothing_is_written(tmp_path):
    """A bias of 1e6 does not fit float16 (largest finite 65504): the converter clips it, the check
    against the float32 file fails, and neither file is written."""
    src = tmp_path / "src" / "big.onnx"
    src.parent.mkdir()
    onnx.save(_offset_linear_classifier(1e6), str(src))
    out = tmp_path / "out" / "o.onnx"
    out.parent.mkdir()
    proc = _cli("optimize", str(src), "--out", str(out), "--fp16")
    assert proc.returncode == 4, proc.stderr
    assert "float16" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert list(out.parent.iterdir()) == []
