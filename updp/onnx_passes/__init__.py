"""ONNX graph passes: fold norms and affines, merge linear chains by cost, fold residuals.

Pure onnx + numpy. The single entry point is `optimize_model`; `cost` exposes the estimates the
planner uses (`estimate_saving` for a whole model or one block scope); `infer_types` the static
types and shapes the passes see.
"""

from updp.onnx_passes._graph import infer_types
from updp.onnx_passes.cost import CostModel, estimate_model_cost, estimate_saving
from updp.onnx_passes.pipeline import OptimizeResult, optimize_model

__all__ = ["CostModel", "OptimizeResult", "estimate_model_cost", "estimate_saving", "infer_types", "optimize_model"]
