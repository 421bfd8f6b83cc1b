"""`updp eval`: accuracy of an ONNX file (ONNX Runtime) or of a checkpoint (torch) on a data split.

The input size comes from the checkpoint's `model_spec`, or from the ONNX input shape (or its
`updp.input_shape` metadata), unless given. Both paths measure the same metric
(`updp.accuracy`), so an export and its checkpoint can be compared number for number.
"""

from __future__ import annotations

import json
import time

from updp.accuracy import module_accuracy, onnx_accuracy
from updp.core.errors import InputError
from updp.data import get_datasets
from updp.exporter.torch_export import get_metadata
from updp.models.checkpoint import read_checkpoint
from updp.ort import load_onnx
from updp.training.device import fast_cpu_math
from updp.workflows.config import EvalConfig
from updp.workflows.resolve import load_model, recorded_class_names, refuse_other_classes


def onnx_input_size(path: str, proto) -> tuple[int, int]:
    """(H, W) of an ONNX image model: its static input shape, else its `updp.input_shape` metadata."""
    first = proto.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in first.type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise InputError(f"{path}: expected one NCHW image input, got input {first.name!r} with {len(dims)} dims")
    if dims[2] and dims[3]:
        return dims[2], dims[3]
    meta = get_metadata(proto)
    if "updp.input_shape" in meta:
        return tuple(json.loads(meta["updp.input_shape"])[-2:])
    raise InputError(f"{path}: cannot tell the input size (symbolic H/W): pass --input-size")


def _evaluate_onnx(cfg: EvalConfig) -> tuple[dict, tuple[int, int]]:
    proto = load_onnx(cfg.file)
    size = cfg.input_size or onnx_input_size(cfg.file, proto)
    data = get_datasets(cfg.data, size, split_seed=cfg.split_seed)
    refuse_other_classes(cfg.file, recorded_class_names(proto), data)
    res = onnx_accuracy(proto, _split(data, cfg), batch_size=cfg.batch_size, num_classes=data.num_classes)
    return res, size


def _split(data, cfg: EvalConfig):
    """The split to evaluate on; an empty one (a small image folder's holdout) has no accuracy."""
    split = getattr(data, cfg.split)
    if len(split) == 0:
        raise InputError(f"the {cfg.split} split of {cfg.data} is empty: nothing to measure (choose another --split, "
                         "or give the dataset more images)")
    return split


@fast_cpu_math()  # an ONNX file is evaluated as ONNX Runtime computes it by default
def _evaluate_checkpoint(cfg: EvalConfig) -> tuple[dict, tuple[int, int]]:
    spec = read_checkpoint(cfg.file).model_spec
    size = cfg.input_size or (tuple(spec["input_size"][1:]) if spec else (32, 32))
    data = get_datasets(cfg.data, size, split_seed=cfg.split_seed)
    # A plain state dict (no model_spec) takes its class count from the data.
    loaded = load_model(cfg.file, model=cfg.model, input_size=size, num_classes=None if spec else data.num_classes)
    n_cls = loaded.spec.get("num_classes")
    if n_cls is not None and n_cls != data.num_classes:
        raise InputError(f"{cfg.file} has {n_cls} classes, the data ({cfg.data}) has {data.num_classes}")
    refuse_other_classes(cfg.file, loaded.spec.get("class_names") or [], data)
    res = module_accuracy(loaded.module, _split(data, cfg), batch_size=cfg.batch_size)
    res["provider"] = "torch (cpu)"
    if loaded.plan is not None:
        res["pruned_blocks"] = list(loaded.plan.blocks)
    return res, size


def evaluate(cfg: EvalConfig) -> dict:
    """Accuracy of `cfg.file` on `cfg.split` of `cfg.data`.

    Returns:
        {"file", "kind", "data", "split", "input_size", "acc", "loss", "n", "provider", "seconds", ...}

    Raises:
        InputError: unreadable file, unknown data, a class count or input size that does not fit.
    """
    t0 = time.perf_counter()
    is_onnx = str(cfg.file).lower().endswith(".onnx")
    res, size = _evaluate_onnx(cfg) if is_onnx else _evaluate_checkpoint(cfg)
    return {"file": str(cfg.file), "kind": "onnx" if is_onnx else "checkpoint", "data": cfg.data,
            "split": cfg.split, "input_size": list(size), **res, "seconds": time.perf_counter() - t0}


def format_accuracy(res: dict) -> str:
    """One line: file, split, accuracy (count), loss, provider, time."""
    return (f"{res['file']}: {res['split']} accuracy {res['acc']:.4f} ({round(res['acc'] * res['n'])}/{res['n']}), "
            f"loss {res['loss']:.4f}, {res['provider']}, {res['seconds']:.1f} s")


__all__ = ["evaluate", "format_accuracy", "onnx_input_size"]
