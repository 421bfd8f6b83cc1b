"""The int8 and float16 files of a float32 ONNX model, each checked before anything is written.

Shared by `updp export`, `updp optimize` and the quantize stage of `updp run`: they hand over the
float model they verified and the `PrecisionOptions` the user set, and get back the derived
models with what was measured about them; writing (all files, or none) stays with the caller.

What is measured, and why it differs between the two formats:

* **float16** is a rounding of the same function: the file is *verified* against the float32
  model with float16's tolerance (`updp.verify`), and refused (exit 4) when it misses.
* **int8** changes the function: it is never called verified-equal. With `--data` its top-1
  accuracy on the val split (ONNX Runtime, CPU) is measured beside the float file's, and the file
  is refused (exit 4) when it drops more than `max_accuracy_drop` points; the output difference
  on the calibration inputs (max abs, mean relative, top-1 agreement) is reported either way.
  Calibrated on random inputs (`--calib random`), the file is a latency what-if: recorded as such
  in its metadata, and its accuracy, measured when data is given, is reported but not a reason
  to refuse it (a random calibration says nothing about the data).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

from updp.core.errors import VerificationError
from updp.exporter.fp16 import convert_fp16, verify_fp16
from updp.exporter.quantize import (
    RANDOM_CALIBRATION,
    QuantizeSettings,
    calibration_feeds_from_data,
    output_difference,
    quantize_int8,
)
from updp.exporter.torch_export import save_model
from updp.feeds import generate_feeds
from updp.workflows.config import PrecisionOptions

# Random calibration inputs for a latency what-if: enough runs for ranges that do not clip
# everything, few enough to stay quick on 224x224 models.
RANDOM_CALIBRATION_RUNS = 16


class AccuracyDropError(VerificationError):
    """An int8 file lost more val accuracy than allowed against its float file (exit 4)."""


def derived_path(out: str | Path, kind: str) -> Path:
    """`model.onnx` -> `model.int8.onnx` / `model.fp16.onnx` (the suffix goes before `.onnx`)."""
    p = Path(out)
    stem = p.name[:-len(".onnx")] if p.name.endswith(".onnx") else p.name
    return p.with_name(f"{stem}.{kind}.onnx")


def derived_paths(out: str | Path, opts: PrecisionOptions) -> list[Path]:
    """The files `opts` asks for beside `out`, in the order they are written."""
    return ([derived_path(out, "int8")] if opts.quantize else []) + ([derived_path(out, "fp16")] if opts.fp16 else [])


@dataclass
class DerivedFile:
    """One int8 or float16 file: what it is, and what was measured about it.

    Attributes:
        kind: 'int8' or 'fp16'.
        out: where it is (to be) written.
        verified: the fp16 file passed the float16-tolerance check; always False for int8.
        accuracy, float_accuracy: val top-1 of this file and of the float32 file (ORT), with --data.
        accuracy_drop: float_accuracy - accuracy, in points.
        difference: int8: `output_difference` on the calibration inputs; fp16: the equivalence
            report's max abs and relative difference.
        record: the settings written into the file's metadata.
    """

    kind: str
    out: str
    verified: bool
    accuracy: float | None = None
    float_accuracy: float | None = None
    accuracy_drop: float | None = None
    n: int | None = None
    difference: dict = field(default_factory=dict)
    record: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def format_summary(self) -> str:
        lines = [f"wrote {self.out}"]
        if self.kind == "fp16":
            d = self.difference
            lines.append(f"  float16 ({self.record.get('io')} inputs/outputs): verified against the float32 file "
                         f"with float16's tolerance, max abs diff {d['max_abs_diff']:.2e} (relative "
                         f"{d['rel_diff']:.2e})")
        else:
            r, d = self.record, self.difference
            source = ("random inputs (a latency what-if: the file's accuracy means nothing)"
                      if r["calibration"] == RANDOM_CALIBRATION else r["calibration"])
            lines.append(f"  int8 QDQ ({r['weights']}, {r['activations']} activations, {r['method']}), calibrated "
                         f"on {source}; kept in float: "
                         f"{', '.join(r['keep_float']) or 'nothing'} ({r['kept_float_nodes']} nodes)"
                         + (f", and {len(r['unrunnable_in_int8'])} node(s) ORT cannot run in int8"
                            if r["unrunnable_in_int8"] else ""))
            agree = d.get("top1_agreement")
            lines.append(f"  NOT an exact rewrite: on the calibration inputs the output moves by max abs "
                         f"{d['max_abs_diff']:.3g}, mean relative {d['mean_rel_diff']:.2%}"
                         + (f", top-1 agrees on {agree:.1%}" if agree is not None else ""))
        if self.accuracy is not None:
            lines.append(f"  val accuracy (ORT) {self.accuracy:.4f} vs {self.float_accuracy:.4f} float32 "
                         f"({100 * (self.accuracy - self.float_accuracy):+.2f} points, n = {self.n})")
        return "\n".join(lines)


def _calibration(model: onnx.ModelProto, opts: PrecisionOptions, data) -> tuple[list[dict], str]:
    """Calibration inputs and where they came from. From data: images of the train split as the
    model was trained on them (with its light augmentation: random crops), never the val split the
    accuracy is then measured on."""
    if opts.calib == "random" or data is None:
        return generate_feeds(model, trials=RANDOM_CALIBRATION_RUNS, seed=0), RANDOM_CALIBRATION
    feeds = calibration_feeds_from_data(model, data.train, images=opts.calib_images, seed=opts.calib_seed)
    n = sum(next(iter(f.values())).shape[0] for f in feeds)
    return feeds, f"{data.spec} train split, {n} images (split seed {opts.split_seed}, draw seed {opts.calib_seed})"


def derive_files(model: onnx.ModelProto, out: str | Path, opts: PrecisionOptions, *,
                 where: str = "the float model") -> list[tuple[DerivedFile, onnx.ModelProto]]:
    """The int8 and/or float16 files `opts` asks for, made from the (verified) float32 `model`,
    measured, and checked; nothing is written here.

    Raises:
        InputError: the data does not fit the model; UnsupportedError: the quantizer or converter
        fails on it; AccuracyDropError / VerificationError: a file fails its check (exit 4).
    """
    made: list[tuple[DerivedFile, onnx.ModelProto]] = []
    if not opts.writes_derived_files:
        return made
    data = float_acc = None
    if opts.data:
        from updp.accuracy import onnx_accuracy  # lazy: torch's data side, only with --data
        from updp.data import get_datasets  # lazy: as above
        from updp.workflows.evaluate import onnx_input_size  # lazy: as above
        from updp.workflows.resolve import recorded_class_names, refuse_other_classes  # lazy: as above

        data = get_datasets(opts.data, onnx_input_size(where, model), split_seed=opts.split_seed)
        refuse_other_classes(str(where), recorded_class_names(model), data)
        float_acc = onnx_accuracy(model, data.val, num_classes=data.num_classes)
    if opts.quantize == "int8":
        t0 = time.perf_counter()
        feeds, calibration = _calibration(model, opts, data)
        settings = QuantizeSettings(method=opts.calib_method, per_channel=opts.per_channel,
                                    keep_float=tuple(opts.keep_float))
        q = quantize_int8(model, feeds, settings, calibration=calibration)
        item = DerivedFile(kind="int8", out=str(derived_path(out, "int8")), verified=False, record=q.record(),
                           difference=output_difference(model, q.model, feeds))
        if data is not None:
            _measure_accuracy(item, q.model, data, float_acc)
            if opts.calib == "data" and item.accuracy_drop > opts.max_accuracy_drop:
                raise AccuracyDropError(
                    f"the int8 file loses {item.accuracy_drop:.2f} points of val accuracy ({float_acc['acc']:.4f} -> "
                    f"{item.accuracy:.4f}), more than --max-accuracy-drop {opts.max_accuracy_drop:g}; nothing was "
                    "written (try --calib-method entropy or percentile, more --calib-images, or --keep-float with "
                    "the operators that suffer)")
        item.seconds = time.perf_counter() - t0
        made.append((item, q.model))
    if opts.fp16:
        t0 = time.perf_counter()
        half = convert_fp16(model, keep_io_types=opts.fp16_keep_io)
        rep = verify_fp16(model, half)
        record = {"compute": "float16", "io": "float32" if opts.fp16_keep_io else "float16"}
        item = DerivedFile(kind="fp16", out=str(derived_path(out, "fp16")), verified=True, record=record,
                           difference={"max_abs_diff": rep.max_abs_diff, "rel_diff": rep.rel_diff,
                                       "tolerances": rep.tolerances})
        if data is not None:
            _measure_accuracy(item, half, data, float_acc)
        item.seconds = time.perf_counter() - t0
        made.append((item, half))
    return made


def write_derived(made: list[tuple[DerivedFile, onnx.ModelProto]]) -> list[DerivedFile]:
    """Write each file `derive_files` made (atomically, one by one) and return what was measured."""
    for item, model in made:
        save_model(model, item.out)
    return [item for item, _ in made]


def _measure_accuracy(item: DerivedFile, model: onnx.ModelProto, data, float_acc: dict) -> None:
    from updp.accuracy import onnx_accuracy  # lazy: torch's data side, only with --data

    acc = onnx_accuracy(model, data.val, num_classes=data.num_classes)
    item.accuracy, item.float_accuracy, item.n = acc["acc"], float_acc["acc"], acc["n"]
    # rounded: a drop of exactly the limit must not exceed it by a float rounding
    item.accuracy_drop = round(100.0 * (float_acc["acc"] - acc["acc"]), 9)


__all__ = ["AccuracyDropError", "DerivedFile", "RANDOM_CALIBRATION_RUNS", "derive_files", "derived_path",
           "derived_paths", "write_derived"]
