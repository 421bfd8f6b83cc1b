"""`updp optimize`: updp's passes on any ONNX file, verified before anything is written."""

from __future__ import annotations

from functools import partial

from updp.core.io import check_outputs
from updp.exporter.optimize import OptimizedFile, optimize_file
from updp.ort import refuse_overwriting_data
from updp.workflows.config import OptimizeConfig
from updp.workflows.precision import derive_files, derived_paths


def optimize(cfg: OptimizeConfig) -> OptimizedFile:
    """Fold norms, merge linear chains, verify against the input, write `cfg.out` atomically (and
    the int8 / float16 files of the result that `cfg` asks for, checked before anything is written)."""
    outputs = [cfg.out, *derived_paths(cfg.out, cfg)]
    check_outputs(outputs, [cfg.input, cfg.inputs])
    refuse_overwriting_data(outputs, [cfg.input])
    derive = partial(derive_files, out=cfg.out, opts=cfg, where=cfg.out) if cfg.writes_derived_files else None
    return optimize_file(cfg.input, cfg.out, verify=cfg.verify, polish=cfg.polish,
                         fold_layernorm_affine=cfg.fold_layernorm, inputs=cfg.inputs, derive=derive)


__all__ = ["optimize"]
