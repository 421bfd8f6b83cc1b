"""The one checkpoint schema: what updp writes, and every layout of weights it reads.

What updp writes (`write_checkpoint`, the only writer) is a dict that loads with
`torch.load(weights_only=True)`: no code runs when it is read.

    format       CHECKPOINT_FORMAT
    model        the state dict
    model_spec   how to rebuild the model (`updp.models.zoo.spec_record`): model name, kwargs,
                 class count, the (C, H, W) it was trained at, and (`class_names`, written by
                 `updp train` since it checks them) the names of the classes it was trained on
    plan         the `PrunePlan` dict of a pruned checkpoint, None for a baseline
    ...          whatever the writer adds: training state (optimizer, scheduler, epoch, step, rng,
                 config, metrics, history, world size), the data it saw, a supernet record

What updp reads (`read_checkpoint`, the only reader), so that users can bring their own weights:

* a checkpoint of updp (above);
* a plain state dict, as timm and torchvision `model.state_dict()` save it;
* a dict holding the state dict under `state_dict`, `model` or `model_state_dict` (the layouts of
  common training scripts and of Lightning);
* a `.safetensors` file (a flat state dict).

Keys saved from `DataParallel` / `DistributedDataParallel` (all prefixed `module.`) are unwrapped.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from updp.core.errors import InputError, first_line
from updp.core.io import atomic_path
from updp.models.zoo import normalize_record

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict")


@dataclass
class Checkpoint:
    """A checkpoint as read, whatever its layout.

    Attributes:
        path: where it was read from.
        state_dict: the weights (string keys, `module.` prefixes removed).
        model_spec: the spec record of a updp checkpoint, checked and in its canonical form
            (`updp.models.zoo.normalize_record`), else None.
        plan: the prune plan dict of a pruned updp checkpoint, else None.
        payload: the whole object as loaded (the training state of a updp checkpoint; `{}` for a
            safetensors file).
    """

    path: str
    state_dict: dict[str, torch.Tensor]
    model_spec: dict[str, Any] | None = None
    plan: dict[str, Any] | None = None
    payload: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def written_by_updp(self) -> bool:
        return self.payload.get("format") is not None or self.model_spec is not None


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format
_PICKLE_PROTOCOL = 0x80  # torch's legacy format: a pickle stream


def _load_object(path: str) -> Any:
    if path.endswith(".safetensors"):
        try:
            return load_file(path, device="cpu")
        except Exception as e:  # safetensors raises its own error types for a bad header
            raise InputError(f"cannot read checkpoint {path}: {first_line(e)}") from None
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith(_ZIP_MAGIC) and (not head or head[0] != _PICKLE_PROTOCOL):
        raise InputError(f"{path}: not a PyTorch checkpoint (neither torch.save's zip format nor a pickle; "
                         "a safetensors file needs the .safetensors suffix)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise InputError(_refusal(path, e)) from None
    except Exception as e:  # torch raises several unrelated types for a truncated or corrupt file
        reason = first_line(e).split(". ")[0]
        raise InputError(f"cannot read checkpoint {path} (truncated or corrupt?): {reason}") from None


def _refusal(path: str, e: Exception) -> str:
    """updp's words for torch's weights-only refusal (whose text suggests turning the protection off)."""
    found = re.search(r"GLOBAL ([\w.]+)", str(e))
    what = f" ({found.group(1)})" if found else ""
    return (f"{path}: refused: it holds Python objects{what}, not only tensors, and loading them could run "
            "code; save `model.state_dict()` or a .safetensors file instead")


def _check_finite(state: dict[str, Any], path: str) -> None:
    """NaN or Inf in the weights (a diverged run, a broken conversion) would pass through every step
    and only show as a failed comparison at the end: refuse them here, naming the tensor."""
    for name, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            raise InputError(f"{path}: tensor {name!r} holds {nan} NaN and {inf} Inf values: the weights are "
                             "broken (a diverged training run?)")


def _state_dict_of(obj: Any, path: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in STATE_DICT_KEYS:
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise InputError(f"{path}: not a state dict (expected a dict of tensors, or a dict with key "
                         "'model' or 'state_dict')")
    if any(not isinstance(k, str) for k in obj):
        raise InputError(f"{path}: not a state dict (non-string keys)")
    wrong = next((k for k, v in obj.items() if not isinstance(v, torch.Tensor)), None)
    if wrong is not None:
        raise InputError(f"{path}: not a state dict: {wrong!r} holds a {type(obj[wrong]).__name__}, not a tensor")
    if all(k.startswith("module.") for k in obj):  # saved from DataParallel / DDP
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint of any supported layout (see the module docstring).

    Raises:
        InputError: one line for a missing file, a directory, an unreadable file, or an object
            that holds no state dict.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        raise InputError(f"checkpoint is a directory: {path}")
    obj = _load_object(path)
    state = _state_dict_of(obj, path)
    _check_finite(state, path)
    payload = obj if isinstance(obj, dict) and state is not obj else {}
    fmt = payload.get("format")
    if isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > CHECKPOINT_FORMAT:
        raise InputError(f"{path}: checkpoint format {fmt}, written by a newer updp (this one reads format "
                         f"{CHECKPOINT_FORMAT}): upgrade updp")
    spec = payload.get("model_spec") if isinstance(payload.get("model_spec"), dict) else None
    if spec is not None:  # checked once here, for every command that rebuilds the model from it
        spec = normalize_record(spec, path)
    plan = payload.get("plan") if isinstance(payload.get("plan"), dict) else None
    return Checkpoint(path=path, state_dict=state, model_spec=spec, plan=plan, payload=payload)


def write_checkpoint(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], *,
                     model_spec: dict[str, Any] | None, plan: dict[str, Any] | None = None,
                     **extra: Any) -> Path:
    """Write a updp checkpoint atomically (see the module docstring for the keys).

    Args:
        path: destination.
        state_dict: the weights.
        model_spec: the spec record (None only for checkpoints that are not models of the zoo).
        plan: the prune plan dict, for a pruned model.
        **extra: more weights_only-loadable entries (tensors, str, numbers, lists, dicts, None).
    """
    payload = {"format": CHECKPOINT_FORMAT, **extra, "model": state_dict, "model_spec": model_spec, "plan": plan}
    with atomic_path(path) as tmp:
        try:
            torch.save(payload, tmp)
        except RuntimeError as e:  # torch's writer reports a failed write (a full disk) as "unexpected pos"
            free = shutil.disk_usage(tmp.parent).free
            raise InputError(f"cannot write {path}: torch.save failed ({first_line(e)}); {free / 2**20:.1f} MiB "
                             f"free in {tmp.parent}") from None
    return Path(path)


def _num_classes(model: nn.Module) -> int | None:
    n = getattr(model, "num_classes", None)
    if isinstance(n, int):
        return n
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else None


def load_state(model: nn.Module, state_dict: dict[str, torch.Tensor], path: str = "<checkpoint>") -> nn.Module:
    """Load weights into `model` strictly (same keys, same shapes), in place.

    Raises:
        InputError: one line naming the missing/unexpected keys, the shape mismatches, or a
            different class count (with the `num_classes` to build the model with).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) (e.g. {', '.join(unexpected[:3])})")
        raise InputError(f"checkpoint {path} does not match the model architecture: {'; '.join(parts)}")
    mismatched = [k for k in own if isinstance(state_dict[k], torch.Tensor) and isinstance(own[k], torch.Tensor)
                  and state_dict[k].shape != own[k].shape]
    if mismatched:
        n = _num_classes(model)
        for k in mismatched:
            a, b = state_dict[k].shape, own[k].shape
            if n is not None and len(a) == len(b) >= 1 and b[0] == n and a[0] != n and a[1:] == b[1:]:
                raise InputError(f"checkpoint {path} has {a[0]} classes, the model has {n} "
                                 f"(key {k}): build the model with num_classes={a[0]}")
        k = mismatched[0]
        raise InputError(f"checkpoint {path} does not match the model architecture: {len(mismatched)} shape "
                         f"mismatch(es), e.g. {k}: checkpoint {tuple(state_dict[k].shape)} "
                         f"vs model {tuple(own[k].shape)}")
    model.load_state_dict(state_dict, strict=True)
    logger.info("loaded %d tensors from %s", len(state_dict), path)
    return model


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Read a checkpoint of any layout and load its weights into `model` strictly (no plan applied)."""
    ck = read_checkpoint(path)
    return load_state(model, ck.state_dict, ck.path)


__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "load_state", "load_weights", "read_checkpoint", "write_checkpoint"]
