"""The exporter: torch → ONNX with provenance, the export → merge → verify pipeline, optimizing a
file someone brings, the default block-selection rule, and the node-scope attribution that ties
ONNX nodes back to blocks.

    from updp.exporter import export_module, optimize_file

The names below are imported on first use (PEP 562): the ONNX-only half of the package (optimizing
or re-batching a file someone brings) does not need torch, and a command such as `updp optimize
model.onnx` should not spend the seconds importing torch, torchvision and timm take.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    "ExportResult": "export", "export_module": "export", "torch_parity": "export",
    "OptimizedFile": "optimize", "op_counts": "optimize", "optimize_file": "optimize",
    "INPUT_NAME": "torch_export", "OUTPUT_NAME": "torch_export", "full_check": "torch_export",
    "get_metadata": "torch_export", "save_model": "torch_export", "set_metadata": "torch_export",
    "simplify": "torch_export", "torch_to_onnx": "torch_export", "versions": "torch_export",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])


__all__ = sorted(_HOME)
