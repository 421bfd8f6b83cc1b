"""`updp optimize`: updp's passes on any ONNX file, verified before anything is written."""

from __future__ import annotations

from updp.core.io import check_outputs
from updp.exporter.optimize import OptimizedFile, optimize_file
from updp.workflows.config import OptimizeConfig


def optimize(cfg: OptimizeConfig) -> OptimizedFile:
    """Fold norms, merge linear chains, verify against the input, write `cfg.out` atomically."""
    check_outputs([cfg.out], [cfg.input, cfg.inputs])
    return optimize_file(cfg.input, cfg.out, verify=cfg.verify, polish=cfg.polish,
                         fold_layernorm_affine=cfg.fold_layernorm, inputs=cfg.inputs)


__all__ = ["optimize"]
