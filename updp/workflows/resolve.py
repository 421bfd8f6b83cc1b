"""From names and files to objects: the one place that turns a checkpoint path into a model, and a
`--data` spec into the dataset a model was trained for.

Every workflow that reads a checkpoint goes through `load_model`, so the rules are the same for
`updp search`, `updp prune`, `updp export`, `updp eval` and `updp run`:

* a checkpoint of updp records its model (`model_spec`): no name is needed, and a name that is
  given must be the same model;
* a plain state dict (timm/torchvision, `{'state_dict': ...}`, `.safetensors`, ...) needs the
  model name, and is built with the given class count, input size and constructor arguments;
* a pruned checkpoint carries its plan, which is applied (checked against the model first)
  before the weights are loaded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import onnx
from torch import nn

from updp.blocks.plan import PrunePlan
from updp.core.errors import InputError
from updp.data import DataBundle, class_mismatch, get_datasets
from updp.exporter.torch_export import get_metadata
from updp.models.checkpoint import Checkpoint, load_state, read_checkpoint
from updp.models.zoo import create_from_record, create_model, normalize_input_size, same_model
from updp.models.zoo import spec_record as make_spec_record


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint.

    Attributes:
        module: the model in eval mode, its plan (pruning or dropping) applied, weights loaded.
        spec: its spec record (the checkpoint's, or one made from the arguments for a plain state dict).
        plan: the `PrunePlan` it carried, or None.
        checkpoint: the checkpoint as read.
    """

    module: nn.Module
    spec: dict[str, Any]
    plan: PrunePlan | None
    checkpoint: Checkpoint


def load_model(path: str, *, model: str | None = None, input_size: tuple[int, int] | None = None,
               model_kwargs: dict[str, Any] | None = None, num_classes: int | None = None,
               name_hint: str = "give the model name (--model)", baseline_for: str | None = None,
               checkpoint: Checkpoint | None = None) -> LoadedModel:
    """Rebuild the model of a checkpoint (see the module docstring).

    Args:
        path: the checkpoint.
        model: the model name; required for a plain state dict, checked against a updp checkpoint.
        input_size, model_kwargs, num_classes: how to build the model of a plain state dict (the
            class count is checked against a updp checkpoint when given).
        name_hint: what the error says to do when a plain state dict comes without a model name.
        baseline_for: the step that needs the unpruned baseline (e.g. "pruning"): a pruned
            checkpoint is then refused, before anything is built.
        checkpoint: `path` already read (`read_checkpoint`), so that it is not read twice.

    Raises:
        InputError: unreadable file, another architecture, a missing model name, a plan that does
            not fit, weights that do not fit.
    """
    ck = checkpoint if checkpoint is not None else read_checkpoint(path)
    if baseline_for is not None and ck.plan is not None:
        blocks = ck.plan.get("blocks")
        raise InputError(f"{path} is a pruned checkpoint (it carries a prune plan for blocks {blocks}); "
                         f"{baseline_for} starts from the unpruned baseline")
    if ck.model_spec is not None:
        spec = ck.model_spec  # checked and canonical (read_checkpoint)
        if model is not None and not same_model(model, spec["model"]):
            raise InputError(f"checkpoint {path} holds a {spec['model']}, not {model}")
        if num_classes is not None and spec.get("num_classes") not in (None, num_classes):
            raise InputError(f"checkpoint {path} has {spec.get('num_classes')} classes, not {num_classes}")
        module = create_from_record(spec)
    else:
        if model is None:
            raise InputError(f"{path} carries no model_spec (it was not written by updp train/prune): {name_hint}")
        chw = normalize_input_size(input_size) if input_size is not None else None
        module, built = create_model(model, num_classes=num_classes, input_size=chw, **dict(model_kwargs or {}))
        spec = make_spec_record(built, chw or built.input_size)
    plan = None
    if ck.plan is not None:
        plan = PrunePlan.from_dict(ck.plan)
        plan.apply(module, model_name=spec["model"])
    load_state(module, ck.state_dict, path)
    return LoadedModel(module=module.eval(), spec=spec, plan=plan, checkpoint=ck)


def recorded_model(path: str) -> dict[str, Any] | None:
    """The model a checkpoint of updp records (its normalized spec record), without building it;
    None for a plain state dict, which records none.

    Why: `updp run --checkpoint` builds its config before any stage runs, and with a checkpoint of
    updp the model (name, input size, constructor arguments) need not be given again.
    """
    ck = read_checkpoint(path)
    return ck.model_spec  # checked and canonical (read_checkpoint), or None


IMPORT_HINT = ("import it first: `updp train MODEL --checkpoint F --epochs 0 --data D --out base.pt` "
               "writes it with its model_spec")


def load_baseline(path: str, *, model: str | None = None, what: str = "pruning") -> LoadedModel:
    """`load_model` for a step that starts from the unpruned baseline (search, prune): a pruned
    checkpoint is refused, and so is a plain state dict. Those steps train and score at the size
    and class count the baseline was trained for, which only a checkpoint of updp records; a
    guess (the model's defaults: 1000 classes, 224 px) would fail later or train at the wrong size.
    """
    ck = read_checkpoint(path)
    if ck.model_spec is None:
        raise InputError(f"{path} is a plain state dict (it records no model, input size or class count): "
                         f"{IMPORT_HINT}")
    return load_model(path, model=model, baseline_for=what, checkpoint=ck)


def data_for(spec: dict[str, Any], data: str, *, split_seed: int) -> DataBundle:
    """The dataset `data`, served at the input size the model was trained at, checked against its
    class count and the class names it records.

    Raises:
        InputError: an unknown or missing dataset, or one with another class count or other classes.
    """
    bundle = get_datasets(data, tuple(spec["input_size"][1:]), split_seed=split_seed)
    n = spec.get("num_classes")
    if n is not None and n != bundle.num_classes:
        raise InputError(f"the model has {n} classes, the data ({data}) has {bundle.num_classes}")
    refuse_other_classes(None, spec.get("class_names") or (), bundle)
    return bundle


def recorded_class_names(proto: onnx.ModelProto) -> list[str]:
    """The class names an exported model records (`updp.class_names` metadata); [] when it records none
    (a file updp did not export, or one exported from a checkpoint that records none)."""
    raw = get_metadata(proto).get("updp.class_names")
    try:
        names = json.loads(raw) if raw else []
    except json.JSONDecodeError:
        return []
    return [str(c) for c in names] if isinstance(names, list) else []


def refuse_other_classes(where: str | None, trained_on: Sequence[str], data: DataBundle) -> None:
    """A model is never scored, calibrated or pruned on data of other classes than it was trained on
    (`updp.data.class_mismatch`): its accuracy there would be of the wrong labels.

    Raises:
        InputError: the names differ (prefixed with `where`, the model's file, when given).
    """
    why = class_mismatch(trained_on, data)
    if why:
        raise InputError(f"{where}: {why}" if where else why)


__all__ = ["IMPORT_HINT", "LoadedModel", "data_for", "load_baseline", "load_model", "recorded_class_names",
           "refuse_other_classes"]
