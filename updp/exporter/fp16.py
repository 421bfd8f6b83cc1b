"""FP16 files of a (merged) ONNX model: onnxconverter-common's float16 conversion, verified against
the float32 model with float16's tolerance.

    half = convert_fp16(model, keep_io_types=True)   # float32 inputs and outputs, float16 inside

Why these choices:

* `keep_io_types=True` keeps the graph's inputs and outputs float32 (Cast nodes at the edges), so
  the deployment code that feeds float32 images keeps working; False makes them float16 too.
* Weights below float16's smallest normal are flushed and those above its largest finite value
  clipped by the converter; the verification catches a model where that matters.
* Unlike int8, a float16 file is verified: every output within float16's tolerance
  (`updp.verify.TOLERANCES["float16"]`: rtol 1e-2, atol 1e-4 of the largest output) on generated
  or given inputs, or the file is refused.
"""

from __future__ import annotations

import json
import warnings

import onnx
from onnxconverter_common import float16

from updp.core.errors import UnsupportedError, first_line
from updp.exporter.torch_export import get_metadata, hand_down_verification, set_metadata
from updp.verify import EquivalenceReport, check_equivalence

METADATA_KEY = "updp.precision"


def convert_fp16(model: onnx.ModelProto, *, keep_io_types: bool = True) -> onnx.ModelProto:
    """The float16 conversion of a float32 model, with `metadata_props["updp.precision"]` recorded.

    Raises:
        UnsupportedError: the converter fails on the model.
    """
    try:
        with warnings.catch_warnings():  # one warning per flushed weight: reported by the verification instead
            warnings.simplefilter("ignore", UserWarning)
            half = float16.convert_float_to_float16(model, keep_io_types=keep_io_types)
    except Exception as e:  # the converter raises whatever it hits
        raise UnsupportedError(f"float16 conversion failed: {first_line(e)}") from None
    hand_down_verification(half)
    set_metadata(half, {METADATA_KEY: {"compute": "float16", "io": "float32" if keep_io_types else "float16",
                                       "converter": "onnxconverter-common"}})
    return half


def verify_fp16(reference: onnx.ModelProto, half: onnx.ModelProto, *, feeds: list[dict] | None = None
                ) -> EquivalenceReport:
    """Check the float16 file against its float32 source with float16's tolerance (raises
    `VerificationError` naming the output that is off), and record the result in its
    `updp.precision` metadata."""
    rep = check_equivalence(reference, half, feeds=feeds, precision="float16", what="the float16 model")
    record = json.loads(get_metadata(half).get(METADATA_KEY, "{}"))
    set_metadata(half, {METADATA_KEY: {**record, "verified_max_abs_diff": rep.max_abs_diff,
                                       "verified_rel_diff": rep.rel_diff, "tolerance": "float16"}})
    return rep


__all__ = ["METADATA_KEY", "convert_fp16", "verify_fp16"]
