"""`updp export`: a zoo model (random weights, or a checkpoint's) to a merged, verified ONNX file.

Resolves the model and the blocks, then hands over to `updp.exporter.export_module`:

* with a checkpoint that records its model (`updp train` / `updp prune`), MODEL may be left out; a
  MODEL that is given must be the same model, and the class count, input size and constructor
  arguments default to the checkpoint's (explicit ones must agree);
* the blocks come from the checkpoint's plan (a pruned checkpoint), from `blocks`, from `prune`
  (N blocks by the default rule of `updp.exporter.selection`), or none (the unpruned baseline);
* without a checkpoint the weights are random and the pruned blocks get random norm statistics:
  a latency what-if before any training.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from updp.blocks.discover import find_blocks
from updp.core.errors import InputError
from updp.core.io import check_outputs
from updp.data import refuse_outputs_in_data
from updp.exporter.export import ExportResult, export_module
from updp.exporter.selection import select_blocks
from updp.exporter.torch_export import save_model
from updp.models.checkpoint import read_checkpoint
from updp.models.zoo import check_input_size, create_model, same_model
from updp.workflows.config import ExportConfig
from updp.workflows.precision import derive_files, derived_paths, write_derived
from updp.workflows.resolve import load_model


def with_checkpoint_spec(cfg: ExportConfig) -> ExportConfig:
    """`cfg` with the model, class count, input size and kwargs of its checkpoint's spec record
    filled in; explicit values must agree with the record."""
    if not cfg.checkpoint:
        return cfg
    ck = read_checkpoint(cfg.checkpoint)
    if ck.model_spec is None:
        if cfg.model is None:
            raise InputError(f"{cfg.checkpoint} carries no model_spec: give MODEL")
        return cfg
    spec = ck.model_spec  # checked and canonical (read_checkpoint)
    if cfg.model is not None and not same_model(cfg.model, spec["model"]):
        raise InputError(f"checkpoint {cfg.checkpoint} holds a {spec['model']}, not {cfg.model}")
    n = spec.get("num_classes")
    if cfg.num_classes is not None and n is not None and cfg.num_classes != n:
        raise InputError(f"checkpoint {cfg.checkpoint} has {n} classes, not --num-classes {cfg.num_classes}")
    kwargs = dict(spec["kwargs"])
    for k, v in cfg.model_kwargs.items():
        if k in kwargs and kwargs[k] != v:
            raise InputError(f"checkpoint {cfg.checkpoint} was built with {k}={kwargs[k]!r}, not {v!r}")
    kwargs.update(cfg.model_kwargs)
    size = tuple(spec["input_size"][1:])
    return dataclasses.replace(cfg, model=cfg.model or spec["model"],
                               num_classes=n if cfg.num_classes is None else cfg.num_classes,
                               input_size=size if cfg.input_size is None else cfg.input_size, model_kwargs=kwargs)


def _model(cfg: ExportConfig):
    """(module, plan or None, (C, H, W), the class names its checkpoint records or None) for the export."""
    spec, class_names = None, None
    if cfg.checkpoint:
        loaded = load_model(cfg.checkpoint, model=cfg.model, input_size=cfg.input_size,
                            model_kwargs=cfg.model_kwargs, num_classes=cfg.num_classes)
        module, plan, spec_chw = loaded.module, loaded.plan, tuple(loaded.spec["input_size"])
        class_names = loaded.spec.get("class_names")
    else:
        module, spec = create_model(cfg.model, num_classes=cfg.num_classes, input_size=cfg.input_size,
                                    **cfg.model_kwargs)
        plan, spec_chw = None, tuple(spec.input_size)
    chw = spec_chw if cfg.input_size is None else (spec_chw[0], *cfg.input_size)
    check_input_size(module, spec, chw)
    return module.eval(), plan, chw, class_names


def export(cfg: ExportConfig) -> ExportResult:
    """Export (and merge, verify, write) the model `cfg` describes (see the module docstring).

    With `cfg.quantize` / `cfg.fp16` the int8 / float16 files are made from the verified float
    file and checked (`updp.workflows.precision`) before any of the files is written.

    Raises:
        InputError, UnsupportedError, VerificationError: nothing is written in any of these cases
            (an int8 file that loses too much accuracy raises `AccuracyDropError`, exit 4).
    """
    t0 = time.perf_counter()
    check_outputs([cfg.out, *derived_paths(cfg.out, cfg)], [cfg.checkpoint])
    refuse_outputs_in_data([cfg.out, *derived_paths(cfg.out, cfg)], cfg.data)
    torch.manual_seed(cfg.seed)
    cfg = with_checkpoint_spec(cfg)
    module, plan, chw, class_names = _model(cfg)
    input_shape = (cfg.batch, *chw)
    if plan is not None:
        if cfg.blocks or cfg.prune:
            raise InputError("the checkpoint already carries a prune plan; drop --blocks/--prune")
        if plan.is_drop:  # the blocks are gone: nothing left to merge
            chosen, rule = [], f"dropped blocks {plan.blocks} ({plan.selection_rule})"
        else:
            chosen, rule = list(plan.blocks), plan.selection_rule
    elif cfg.blocks:
        chosen, rule = list(cfg.blocks), "manual"
    elif cfg.prune:
        chosen, rule = select_blocks(module, find_blocks(module, input_shape), cfg.prune, input_shape)
    else:
        chosen, rule = [], "none"
    weights = f"checkpoint {cfg.checkpoint}" if cfg.checkpoint else f"random (seed {cfg.seed})"
    result = export_module(module, input_shape, chosen, out=None, optimize=cfg.optimize, verify=cfg.verify,
                           polish=cfg.polish, opset=cfg.opset, dynamic_batch=cfg.dynamic_batch, weights=weights,
                           randomize_norms=None if cfg.checkpoint else cfg.seed, already_pruned=plan is not None,
                           selection_rule=rule, model_label=cfg.model, model_kwargs=cfg.model_kwargs,
                           exporter=cfg.exporter, class_names=class_names)
    made = derive_files(result.onnx_model, cfg.out, cfg, where=cfg.out)
    save_model(result.onnx_model, cfg.out)
    result.out = str(cfg.out)
    result.derived = write_derived(made)
    result.seconds = time.perf_counter() - t0
    return result


__all__ = ["export", "with_checkpoint_spec"]
