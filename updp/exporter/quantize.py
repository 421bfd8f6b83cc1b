"""INT8 files of a (merged) ONNX model: ONNX Runtime's static quantization, with its calibration
recorded in the file and its effect on the outputs measured.

    feeds = calibration_feeds_from_data(model, data.train, images=256)
    q = quantize_int8(model, feeds, QuantizeSettings(method="minmax"), calibration="mnist5k train, 256 images")
    save_model(q.model, "pruned.int8.onnx")

What it does, and why:

* ORT's `quant_pre_process` first (symbolic shape inference and ORT's basic graph optimizations,
  which its quantizer expects), then `quantize_static` in the QDQ format: int8 weights per output
  channel (symmetric, what ORT's CPU kernels run fastest) and uint8 activations, their ranges from
  the calibration inputs by MinMax, Entropy or Percentile.
* Operators that lose most in int8 are kept in float: by default LayerNormalization (a ViT's
  and ConvNeXt's normalization divides by a per-token deviation that 8 bits represent badly) and
  Softmax (attention probabilities span many orders of magnitude). `QuantizeSettings.keep_float`
  changes the list.
* Some of ORT's int8 kernels refuse scales the calibration produced (QLinearGlobalAveragePool's
  "parameter out of computation range"): the file is run once as deployed, and a node ORT refuses
  is kept in float and the model quantized again (recorded as `unrunnable_in_int8`).
* Quantization is not exact: the result is never called verified-equal. `output_difference`
  reports how far its outputs move from the float model's on the calibration inputs, and the
  accuracy check of the caller (on a val split) decides whether the file is kept.
* The settings and where the calibration came from (`calibration`: a data split, or "random" for
  latency what-ifs whose accuracy means nothing) are written into the file's `metadata_props`
  under `updp.quantization`.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from updp.core.errors import InputError, UnsupportedError, first_line
from updp.core.io import scratch_dir
from updp.exporter.torch_export import hand_down_verification
from updp.feeds import graph_inputs
from updp.ort import make_session, model_file

# How activation ranges are chosen from the calibration inputs (ORT's CalibrationMethod members).
CALIBRATION_METHODS: dict[str, str] = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
DEFAULT_KEEP_FLOAT: tuple[str, ...] = ("LayerNormalization", "Softmax")
METADATA_KEY = "updp.quantization"
RANDOM_CALIBRATION = "random"
ENTROPY_HISTOGRAM_BINS = 2048  # histogram bins of the Entropy calibration (see `_entropy_histogram_bins`)
MAX_UNRUNNABLE = 8  # nodes re-kept in float because ORT's int8 kernel refused them, before giving up


@dataclass(frozen=True)
class QuantizeSettings:
    """How a model is quantized.

    Attributes:
        method: 'minmax', 'entropy' or 'percentile' (activation ranges from the calibration inputs).
        per_channel: int8 weights per output channel (True) or per tensor.
        keep_float: operator types left in float.
    """

    method: str = "minmax"
    per_channel: bool = True
    keep_float: tuple[str, ...] = DEFAULT_KEEP_FLOAT

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise InputError(f"--calib-method must be one of {', '.join(CALIBRATION_METHODS)}, got {self.method!r}")


@dataclass
class QuantizeResult:
    """The int8 model, what it was made with, and how far its outputs are from the float model's."""

    model: onnx.ModelProto
    settings: QuantizeSettings
    calibration: str
    calibration_inputs: int
    kept_float: list[str] = field(default_factory=list)  # names of the nodes left in float
    unrunnable_in_int8: list[str] = field(default_factory=list)  # of those, the ones ORT could not run in int8
    quantized_nodes: int = 0  # QuantizeLinear/DequantizeLinear pairs' consumers, i.e. int8 ops
    difference: dict | None = None

    def record(self) -> dict:
        """What goes into the file's metadata and into results."""
        return {"format": "QDQ", "weights": "int8, per channel" if self.settings.per_channel else "int8, per tensor",
                "activations": "uint8", **asdict(self.settings), "keep_float": list(self.settings.keep_float),
                "calibration": self.calibration, "calibration_inputs": self.calibration_inputs,
                "kept_float_nodes": len(self.kept_float), "unrunnable_in_int8": list(self.unrunnable_in_int8)}


class _FeedReader:
    """ORT's CalibrationDataReader protocol over a list of input dicts."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self._feeds = list(feeds)
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


def _float_inputs_only(model: onnx.ModelProto) -> None:
    for slot in graph_inputs(model):
        if slot.kind != "tensor" or slot.elem_type != onnx.TensorProto.FLOAT:
            what = onnx.TensorProto.DataType.Name(slot.elem_type) if slot.kind == "tensor" else f"a {slot.kind}"
            raise UnsupportedError(f"int8 quantization needs float32 inputs; input {slot.name!r} is {what}")


def quantize_int8(model: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]], settings: QuantizeSettings, *,
                  calibration: str) -> QuantizeResult:
    """Static QDQ quantization of a float32 model (see the module docstring).

    Args:
        model: the float model (e.g. updp's merged export).
        feeds: calibration inputs, one dict per run, shaped for the model.
        settings: method, per-channel, float-kept operator types.
        calibration: where `feeds` came from, for the metadata ('mnist5k train, 256 images', or
            `RANDOM_CALIBRATION`).

    Raises:
        InputError: no calibration inputs.
        UnsupportedError: the model has non-float inputs, or ORT's quantizer fails on it.
    """
    if not feeds:
        raise InputError("int8 quantization needs calibration inputs: give --data (its train split is used) "
                         "or --calib random for a latency what-if")
    _float_inputs_only(model)
    with scratch_dir("quantize") as tmp, model_file(model) as src:
        pre = tmp / "pre.onnx"
        try:
            quant_pre_process(src, str(pre))
        except Exception as e:  # ORT's shape inference raises whatever it hits
            raise UnsupportedError(f"ONNX Runtime's quantization pre-processing failed: {first_line(e)}") from None
        prepared = onnx.load(str(pre))
        exclude = [n.name for n in prepared.graph.node if n.op_type in settings.keep_float]
        unrunnable: list[str] = []
        for _ in range(MAX_UNRUNNABLE):
            qmodel = _quantize_static(pre, tmp / "int8.onnx", feeds, settings, exclude + unrunnable)
            failed = _node_ort_cannot_run(qmodel, feeds[0])
            if failed is None:
                break
            if failed in unrunnable or failed not in {n.name for n in prepared.graph.node}:
                raise UnsupportedError(f"ONNX Runtime cannot run the int8 model (node {failed!r} fails even "
                                       "kept in float)")
            unrunnable.append(failed)
        else:
            raise UnsupportedError(f"ONNX Runtime cannot run the int8 model: {MAX_UNRUNNABLE} nodes failed "
                                   f"({', '.join(unrunnable)})")
    quantized = sum(n.op_type == "DequantizeLinear" for n in qmodel.graph.node)
    if quantized == 0:
        raise UnsupportedError("ONNX Runtime's quantizer quantized nothing in this model (no Conv, MatMul or "
                               "Gemm outside the operators kept in float?)")
    result = QuantizeResult(model=qmodel, settings=settings, calibration=calibration, calibration_inputs=len(feeds),
                            kept_float=exclude + unrunnable, unrunnable_in_int8=unrunnable,
                            quantized_nodes=quantized)
    hand_down_verification(qmodel)
    entry = qmodel.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(result.record(), sort_keys=True)
    return result


@contextlib.contextmanager
def _entropy_histogram_bins(bins: int = ENTROPY_HISTOGRAM_BINS) -> Iterator[None]:
    """`quantize_static` builds its calibrator without a histogram size, and ORT's Entropy calibrator
    then defaults to as many histogram bins (128) as quantized bins (128): its KL search has a single
    candidate, the full range, and Entropy returns exactly MinMax's ranges. Inject the bin count the
    method needs (2048, PyTorch's and TensorRT's) for the duration of one call."""
    # the module, not the `quantize` function the package exports under the same name
    ort_quantize = importlib.import_module("onnxruntime.quantization.quantize")
    original = ort_quantize.create_calibrator

    def calibrator(*args, **kwargs):
        if kwargs.get("calibrate_method") == CalibrationMethod.Entropy:
            kwargs["extra_options"] = {"num_bins": bins, **(kwargs.get("extra_options") or {})}
        return original(*args, **kwargs)

    ort_quantize.create_calibrator = calibrator
    try:
        yield
    finally:
        ort_quantize.create_calibrator = original


def _quantize_static(pre: Path, out: Path, feeds: Sequence[dict[str, np.ndarray]], settings: QuantizeSettings,
                     exclude: list[str]) -> onnx.ModelProto:
    try:
        # ORT's histogram calibrators print their progress on stdout, where the CLI's output goes
        with _entropy_histogram_bins(), contextlib.redirect_stdout(io.StringIO()):
                quantize_static(str(pre), str(out), _FeedReader(feeds), quant_format=QuantFormat.QDQ,
                            per_channel=settings.per_channel, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                            calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[settings.method]),
                            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    except Exception as e:  # ORT's quantizer raises whatever its passes hit
        raise UnsupportedError(f"ONNX Runtime's quantizer failed: {first_line(e)}") from None
    return onnx.load(str(out))


def _node_ort_cannot_run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> str | None:
    """The name of the node ORT's int8 kernels refuse on this model (all optimizations on, as it is
    deployed), or None when it runs. Some QLinear kernels (QLinearGlobalAveragePool, QLinearAdd)
    accept only limited ratios of input to output scale, which calibration can exceed."""
    try:
        make_session(model).run(None, feed)
    except Exception as e:
        m = re.search(r"Name:'([^']+)'", str(e))
        if m is None:
            raise UnsupportedError(f"ONNX Runtime cannot run the int8 model: {first_line(e)}") from None
        # ORT names a fused node after the original one it replaced
        return m.group(1)
    return None


def output_difference(reference: onnx.ModelProto, quantized: onnx.ModelProto,
                      feeds: Sequence[dict[str, np.ndarray]]) -> dict:
    """How far the quantized model's first output is from the float model's, on `feeds` (ORT, CPU):
    max abs diff, the mean abs diff relative to the float output's mean magnitude, and for
    classifier-shaped outputs (N, classes) how often the top-1 class agrees."""
    ref_s, q_s = make_session(reference), make_session(quantized)
    name = ref_s.get_outputs()[0].name
    abs_max = rel_sum = mag_sum = 0.0
    agree = total = 0
    for feed in feeds:
        a = np.asarray(ref_s.run([name], feed)[0], np.float64)
        b = np.asarray(q_s.run([name], feed)[0], np.float64)
        abs_max = max(abs_max, float(np.abs(a - b).max()) if a.size else 0.0)
        rel_sum += float(np.abs(a - b).sum())
        mag_sum += float(np.abs(a).sum())
        if a.ndim == 2 and a.shape[1] > 1:
            agree += int((a.argmax(1) == b.argmax(1)).sum())
            total += a.shape[0]
    return {"output": name, "inputs": len(feeds), "max_abs_diff": abs_max,
            "mean_rel_diff": rel_sum / mag_sum if mag_sum else 0.0,
            "top1_agreement": agree / total if total else None}


def calibration_feeds_from_data(model: onnx.ModelProto, dataset, *, images: int = 256, seed: int = 0
                                ) -> list[dict[str, np.ndarray]]:
    """Calibration inputs from a data split (`updp.data`): `images` of them, drawn once with `seed`,
    in batches of the model's static batch (or 1 for a symbolic one)."""
    import torch  # lazy: the data splits are torch datasets; random feeds need no torch

    inputs = graph_inputs(model)
    if len(inputs) != 1:
        raise UnsupportedError(f"calibration from --data needs a model with one image input; it has {len(inputs)}")
    dim0 = inputs[0].shape[0] if inputs[0].shape else None
    batch = dim0 if isinstance(dim0, int) and dim0 > 0 else 1
    n = min(images, len(dataset))
    if n < batch:
        raise InputError(f"calibration needs at least one batch of {batch} images; the split has {len(dataset)}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n - n % batch].tolist()
    feeds = []
    for k in range(0, len(order), batch):
        x = torch.stack([dataset[i][0] for i in order[k:k + batch]])
        feeds.append({inputs[0].name: x.numpy().astype(np.float32)})
    return feeds


__all__ = ["CALIBRATION_METHODS", "DEFAULT_KEEP_FLOAT", "METADATA_KEY", "RANDOM_CALIBRATION", "QuantizeResult",
           "QuantizeSettings", "calibration_feeds_from_data", "output_difference", "quantize_int8"]
