"""The exporter: torch → ONNX with provenance, the export → merge → verify pipeline, optimizing a
file someone brings, the default block-selection rule, and the node-scope attribution that ties
ONNX nodes back to blocks.

    from updp.exporter import export_module, optimize_file
"""

from updp.exporter.export import ExportResult, export_module, op_counts, torch_parity
from updp.exporter.optimize import OptimizedFile, optimize_file
from updp.exporter.torch_export import (
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

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "ExportResult", "OptimizedFile", "export_module", "full_check",
           "get_metadata", "op_counts", "optimize_file", "save_model", "set_metadata", "simplify", "torch_parity",
           "torch_to_onnx", "versions"]
