"""Create zoo models by name, describe how they were built, check input sizes.

Model specs are `timm:NAME`, `torchvision:NAME`, or a bare `NAME` (meaning timm). Models are
always built with random weights (`pretrained=False` / `weights=None`): updp never downloads, and
trained weights come from a checkpoint file (`updp.models.checkpoint`).

A checkpoint records how its model was built as a *spec record* (`spec_record`): the model name,
constructor kwargs, class count and the (C, H, W) it was trained at, enough to rebuild it with
`create_from_record` and no other argument.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import timm
import torch
import torchvision
from torch import nn

from updp.core.errors import InputError, first_line

logger = logging.getLogger(__name__)

SOURCES = ("timm", "torchvision")

# Default input sizes of torchvision models that are not 224 (the others take 224).
_TORCHVISION_INPUT_SIZE = {"inception_v3": 299}


@dataclass
class ModelSpec:
    """How a model was built, enough to rebuild it.

    Attributes:
        source: 'timm' or 'torchvision'.
        name: the model name in that source.
        kwargs: constructor kwargs (including `img_size`/`image_size` when set from an input size).
        num_classes: classifier size given by the user, None for the model's default.
        input_size: default input (C, H, W) of the model as built.
    """

    source: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    input_size: tuple[int, int, int] = (3, 224, 224)

    @property
    def spec(self) -> str:
        return f"{self.source}:{self.name}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d


def parse_spec(spec: str) -> tuple[str, str]:
    """`'timm:resnet18'` → ('timm', 'resnet18'); a bare name means timm."""
    spec = spec.strip()
    if ":" in spec:
        source, name = spec.split(":", 1)
        source = source.strip().lower()
        if source not in SOURCES:
            raise InputError(f"unknown model source {source!r} in {spec!r} "
                             "(use timm:NAME or torchvision:NAME)")
        return source, name.strip()
    return "timm", spec


def normalize_input_size(size: int | Sequence[int]) -> tuple[int, int, int]:
    """H, (H, W) or (C, H, W) → (C, H, W), channels defaulting to 3."""
    if isinstance(size, int):
        out = (3, size, size)
    else:
        s = tuple(int(v) for v in size)
        if len(s) == 1:
            out = (3, s[0], s[0])
        elif len(s) == 2:
            out = (3, *s)
        elif len(s) == 3:
            out = s
        else:
            raise InputError(f"input size must be H, (H, W) or (C, H, W), got {tuple(size)}")
    if any(v <= 0 for v in out):
        raise InputError(f"input size must be positive, got {out}")
    return out  # type: ignore[return-value]


def _unknown(source: str, name: str, names: list[str]) -> InputError:
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(f'{source}:{c}' for c in close)}?" if close else ""
    return InputError(f"unknown {source} model {name!r}{hint}")


def _build(source: str, name: str, kwargs: dict[str, Any]) -> nn.Module:
    if source == "timm":
        return timm.create_model(name, pretrained=False, **kwargs)
    return torchvision.models.get_model(name, weights=None, **kwargs)


def create_model(spec: str, *, num_classes: int | None = None,
                 input_size: int | Sequence[int] | None = None, **kwargs: Any) -> tuple[nn.Module, ModelSpec]:
    """Build a model with random weights (no download is possible or attempted).

    Args:
        spec: `timm:NAME`, `torchvision:NAME` or a bare timm NAME.
        num_classes: classifier size; None keeps the model's default (1000 for ImageNet models).
        input_size: if given, models whose constructor fixes the image size (timm ViTs:
            `img_size`; torchvision ViTs: `image_size`) are built for it, unless the kwarg is set.
        **kwargs: passed to the constructor, e.g. `img_size=32, patch_size=4` for a timm ViT.

    Returns:
        (model in eval mode, its `ModelSpec`).

    Raises:
        InputError: unknown name (with close matches) or kwargs the constructor rejects.
    """
    source, name = parse_spec(spec)
    if source == "timm":
        if not timm.is_model(name):
            raise _unknown(source, name, timm.list_models())
    else:
        names = torchvision.models.list_models()
        if name not in names:
            raise _unknown(source, name, names)
    kwargs = dict(kwargs)
    if num_classes is not None:
        if num_classes <= 0:
            raise InputError(f"num_classes must be positive, got {num_classes}")
        kwargs["num_classes"] = int(num_classes)
    size = normalize_input_size(input_size) if input_size is not None else None
    size_kw = "img_size" if source == "timm" else "image_size"
    model = None
    if size is not None and size_kw not in kwargs:
        # Only models whose constructor takes the image size accept this kwarg.
        try:
            model = _build(source, name, {**kwargs, size_kw: size[1] if size[1] == size[2] else size[1:]})
            kwargs[size_kw] = size[1] if size[1] == size[2] else list(size[1:])
        except TypeError as e:
            if size_kw not in str(e):
                raise InputError(f"cannot build {source}:{name}: {first_line(e)}") from None
            model = None
        except (ValueError, AssertionError, RuntimeError) as e:
            raise InputError(f"cannot build {source}:{name} for input size {size}: "
                             f"{first_line(e)}") from None
    if model is None:
        try:
            model = _build(source, name, kwargs)
        except (TypeError, ValueError, AssertionError, RuntimeError) as e:
            raise InputError(f"cannot build {source}:{name} with {kwargs}: {first_line(e)}") from None
    model.eval()
    spec_out = ModelSpec(source=source, name=name, kwargs=kwargs, num_classes=num_classes,
                         input_size=_default_input_size(source, name, model, kwargs))
    return model, spec_out


def _default_input_size(source: str, name: str, model: nn.Module,
                        kwargs: dict[str, Any]) -> tuple[int, int, int]:
    key = "img_size" if source == "timm" else "image_size"
    if key in kwargs:
        v = kwargs[key]
        h, w = (v, v) if isinstance(v, int) else tuple(v)
        return (int(kwargs.get("in_chans", 3)), int(h), int(w))
    if source == "timm":
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        size = cfg.get("input_size")
        if size:
            return tuple(int(s) for s in size)  # type: ignore[return-value]
        return (3, 224, 224)
    s = _TORCHVISION_INPUT_SIZE.get(name, 224)
    return (3, s, s)


def check_input_size(model: nn.Module, spec: ModelSpec | None, size: int | Sequence[int]) -> tuple[int, ...]:
    """Check that `model` takes inputs of `size` with one trial forward (batch 1, eval, no_grad).

    Returns:
        The output shape.

    Raises:
        InputError: one line saying why, with a hint for timm/torchvision ViTs whose image size is
            fixed when they are built (pass the input size to `create_model`).
    """
    c, h, w = normalize_input_size(size)
    p = next(model.parameters(), None)
    x = torch.zeros(1, c, h, w, dtype=p.dtype if p is not None else torch.float32,
                    device=p.device if p is not None else "cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:  # any failure of the trial forward means the size is not accepted
        who = spec.spec if spec is not None else type(model).__name__
        hint = ""
        if spec is not None and ("img_size" in spec.kwargs or "image_size" in spec.kwargs
                                 or hasattr(model, "patch_embed") or hasattr(model, "conv_proj")):
            hint = " (this model fixes its image size when built: give the input size at creation)"
        raise InputError(f"{who} cannot take input size {c}x{h}x{w}: {first_line(e)}{hint}") from None
    finally:
        model.train(was_training)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return tuple(out.shape)


def same_model(a: str, b: str) -> bool:
    """'convnext_atto' and 'timm:convnext_atto' name the same model."""
    return parse_spec(a) == parse_spec(b)


def spec_record(spec: ModelSpec, input_chw: Sequence[int]) -> dict[str, Any]:
    """The `model_spec` entry of a checkpoint: enough to rebuild the model without arguments.

    Args:
        spec: the `ModelSpec` the model was built with.
        input_chw: the (C, H, W) the model is trained at (not necessarily the model's default).
    """
    kwargs = {k: v for k, v in spec.kwargs.items() if k != "num_classes"}  # recorded on its own
    return {"model": spec.spec, "source": spec.source, "name": spec.name, "kwargs": kwargs,
            "num_classes": spec.num_classes, "input_size": [int(v) for v in input_chw]}


def normalize_record(record: dict[str, Any], where: str) -> dict[str, Any]:
    """A spec record in its canonical form; the `ModelSpec.to_dict` form (`source`/`name`) is accepted.

    Raises:
        InputError: the record names no model or has no (C, H, W) input size.
    """
    name = record.get("model") or (f"{record.get('source')}:{record.get('name')}" if "source" in record else None)
    if not name:
        raise InputError(f"{where}: model_spec names no model")
    if not isinstance(name, str):
        raise InputError(f"{where}: model_spec's model is {name!r}, not a model name")
    size = record.get("input_size")
    if not size or not isinstance(size, (list, tuple)) or len(size) != 3:
        raise InputError(f"{where}: model_spec has no input_size [C, H, W]")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        raise InputError(f"{where}: model_spec's input_size {list(size)} is not three positive integers [C, H, W]")
    kwargs = record.get("kwargs") or {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise InputError(f"{where}: model_spec's kwargs {kwargs!r} are not a table of constructor arguments")
    classes = record.get("num_classes")
    if classes is not None and (not isinstance(classes, int) or isinstance(classes, bool) or classes < 1):
        raise InputError(f"{where}: model_spec's num_classes {classes!r} is not a positive integer")
    names = record.get("class_names")
    if names is not None and (not isinstance(names, (list, tuple)) or not all(isinstance(c, str) for c in names)
                              or (classes is not None and len(names) != classes)):
        raise InputError(f"{where}: model_spec's class_names are not {classes or 'its'} class names (strings)")
    source, bare = parse_spec(name)
    out = {"model": f"{source}:{bare}", "source": source, "name": bare,
           "kwargs": {k: v for k, v in kwargs.items() if k != "num_classes"}, "num_classes": classes,
           "input_size": [int(v) for v in size]}
    if names is not None:  # recorded since class names are checked; older checkpoints have none
        out["class_names"] = list(names)
    return out


def create_from_record(record: dict[str, Any]) -> nn.Module:
    """Build (random weights, eval mode) the model a spec record describes."""
    module, _ = create_model(record["model"], num_classes=record.get("num_classes"), **dict(record.get("kwargs") or {}))
    return module


def create_for_data(model: str, *, num_classes: int, input_chw: Sequence[int],
                    model_kwargs: dict[str, Any] | None = None, seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """Create `model` for a dataset's class count and input size, with seeded initial weights.

    The initial weights are drawn from `seed` (without touching the caller's RNG state), so two
    runs with the same seed start from the same weights: timm/torchvision initialize from the
    global torch RNG, which is otherwise seeded differently in every process.

    Returns:
        (module in eval mode, its spec record at `input_chw`).
    """
    chw = normalize_input_size(input_chw)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module, spec = create_model(model, num_classes=num_classes, input_size=chw, **dict(model_kwargs or {}))
    check_input_size(module, spec, chw)
    return module, spec_record(spec, chw)
