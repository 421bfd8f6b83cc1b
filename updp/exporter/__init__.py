"""torch → ONNX export with provenance, and the export → merge → verify pipeline."""

from updp.exporter.torch_export import (
    DEFAULT_OPSET,
    INPUT_NAME,
    OUTPUT_NAME,
    full_check,
    get_metadata,
    save_model,
    set_metadata,
    simplify,
    torch_to_onnx,
    versions,
)

__all__ = ["DEFAULT_OPSET", "INPUT_NAME", "OUTPUT_NAME", "full_check", "get_metadata", "save_model",
           "set_metadata", "simplify", "torch_to_onnx", "versions"]
