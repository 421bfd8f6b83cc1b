"""INT8 quantization of merged files: QDQ ops appear, float-kept types stay float, the calibration
is recorded, refusals are clear, and the outputs stay close to the float model's."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from updp.core.errors import InputError, UnsupportedError
from updp.data import get_datasets
from updp.exporter.quantize import (
    METADATA_KEY,
    RANDOM_CALIBRATION,
    QuantizeSettings,
    calibration_feeds_from_data,
    output_difference,
    quantize_int8,
)
from updp.feeds import generate_feeds


def _conv_classifier(batch: int = 1, elem=TensorProto.FLOAT) -> onnx.ModelProto:
    """Conv → Relu → Conv → LayerNormalization over W → GlobalAveragePool → Flatten → Gemm: 10 classes."""
    rng = np.random.default_rng(0)

    def init(name, *shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [init("w1", 8, 3, 3, 3), init("b1", 8), init("w2", 8, 8, 3, 3), init("b2", 8),
             numpy_helper.from_array(np.ones(8, np.float32), "g"), init("wc", 10, 8), init("bc", 10)]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("LayerNormalization", ["c2", "g"], ["n"], name="ln", axis=-1),
             helper.make_node("GlobalAveragePool", ["n"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "wc", "bc"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", elem, [batch, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    model.metadata_props.add(key="updp.verified_max_abs_diff", value="1e-07")
    return model


def test_int8_file_has_qdq_ops_keeps_layernorm_float_and_records_its_calibration():
    model = _conv_classifier()
    feeds = generate_feeds(model, trials=16)
    res = quantize_int8(model, feeds, QuantizeSettings(), calibration=RANDOM_CALIBRATION)
    q = res.model
    onnx.checker.check_model(q)
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("QuantizeLinear") > 0 and res.quantized_nodes > 0
    # the LayerNormalization is left out of the quantization: its scale stays a float initializer
    # (quantized, it reads an int8 copy through a DequantizeLinear)
    def ln_scale(m):
        return next(n for n in m.graph.node if n.op_type == "LayerNormalization").input[1]

    assert res.kept_float[0] == "ln" and ln_scale(q) == "g"
    # ORT's QLinearGlobalAveragePool refuses the scales this calibration gives ("parameter out of
    # computation range"): the pooling was kept in float and the model quantized again
    assert res.unrunnable_in_int8 == ["gap"] and res.kept_float == ["ln", "gap"]
    everything = quantize_int8(model, feeds, QuantizeSettings(keep_float=()), calibration="t").model
    assert ln_scale(everything) != "g"
    meta = {p.key: p.value for p in q.metadata_props}
    record = json.loads(meta[METADATA_KEY])
    assert record["calibration"] == "random" and record["calibration_inputs"] == 16 and record["per_channel"]
    assert record["unrunnable_in_int8"] == ["gap"]
    # the float model's "verified" record is not the int8 file's
    assert "updp.verified_max_abs_diff" not in meta and meta["updp.verified_max_abs_diff_of_float_model"] == "1e-07"
    diff = output_difference(model, q, feeds)
    assert diff["inputs"] == 16 and 0 < diff["max_abs_diff"] and diff["mean_rel_diff"] < 0.1
    assert diff["top1_agreement"] >= 0.75


# Entropy's run is the test below (its KL search over 2048 bins takes seconds).
@pytest.mark.parametrize("method", ["percentile"])
def test_every_calibration_method_runs(method):
    model = _conv_classifier()
    res = quantize_int8(model, generate_feeds(model, trials=8), QuantizeSettings(method=method), calibration="t")
    assert json.loads({p.key: p.value for p in res.model.metadata_props}[METADATA_KEY])["method"] == method


def test_refusals_are_clear():
    model = _conv_classifier()
    with pytest.raises(InputError, match="needs calibration inputs"):
        quantize_int8(model, [], QuantizeSettings(), calibration="none")
    with pytest.raises(InputError, match="--calib-method"):
        QuantizeSettings(method="kl")
    with pytest.raises(UnsupportedError, match="float32 inputs"):
        quantize_int8(_conv_classifier(elem=TensorProto.FLOAT16), [{"x": np.zeros((1, 3, 8, 8), np.float16)}],
                      QuantizeSettings(), calibration="t")


def test_calibration_feeds_come_from_the_train_split_in_the_models_batch():
    data = get_datasets("digits", 8)
    feeds = calibration_feeds_from_data(_conv_classifier(batch=4), data.train, images=30, seed=1)
    assert len(feeds) == 7 and all(f["x"].shape == (4, 3, 8, 8) and f["x"].dtype == np.float32 for f in feeds)
    again = calibration_feeds_from_data(_conv_classifier(batch=4), data.train, images=30, seed=1)
    assert all(np.array_equal(a["x"], b["x"]) for a, b in zip(feeds, again))
    with pytest.raises(InputError, match="at least one batch"):
        calibration_feeds_from_data(_conv_classifier(batch=4), data.train, images=3)


def _activation_scales(model: onnx.ModelProto) -> dict[str, float]:
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {n.input[1]: float(inits[n.input[1]]) for n in model.graph.node
            if n.op_type == "QuantizeLinear" and inits[n.input[1]].size == 1}


def test_entropy_calibration_chooses_its_own_ranges_and_prints_nothing(capsys):
    """ORT's quantize_static gives its Entropy calibrator as many histogram bins as quantized bins,
    which leaves the KL search one candidate (MinMax's range); with the bins updp injects, the
    ranges differ, and ORT's progress prints do not reach stdout."""
    model = _conv_classifier()
    feeds = generate_feeds(model, trials=16)
    quantized = {m: quantize_int8(model, feeds, QuantizeSettings(method=m), calibration=RANDOM_CALIBRATION).model
                 for m in ("minmax", "entropy")}
    record = {p.key: p.value for p in quantized["entropy"].metadata_props}[METADATA_KEY]
    assert json.loads(record)["method"] == "entropy"
    scales = {m: _activation_scales(q) for m, q in quantized.items()}
    assert scales["minmax"].keys() == scales["entropy"].keys()
    assert any(abs(scales["minmax"][k] - scales["entropy"][k]) > 1e-3 * scales["minmax"][k] for k in scales["minmax"])
    assert capsys.readouterr().out == ""
