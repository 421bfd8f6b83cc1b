"""List a model's recognized residual blocks, prunable or not, with their size and cost.

Blocks are found structurally (module types in the registry, plus blocks already converted to
their pruned form), in `named_modules()` order; a recognized block's submodules are not searched.
The index counts prunable and non-prunable blocks alike, so indices are stable: converting a
block does not renumber the others, and a plan's indices refer to this list.

MACs (multiply-accumulates) are counted for one forward at the given input size (batch included)
by forward hooks:
* `nn.Conv2d`: `output elements × (C_in / groups) × kH × kW`;
* `nn.Linear`: `output elements × in_features`;
* attention matmuls: `QKᵀ` and `AV` are `2 · B · N² · D` for timm `Attention` and
  `nn.MultiheadAttention`, plus, for `nn.MultiheadAttention` (whose projections are not called
  as modules), `4 · B · N · D²` for the in/out projections.
Norms, activations, additions and softmax are not counted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from timm.layers.attention import Attention
from torch import nn

import updp.blocks.families  # noqa: F401  (registers the built-in families)
from updp.blocks.registry import SHORTCUT_IDENTITY, PrunedBlock, get_handler
from updp.core.errors import InputError

logger = logging.getLogger(__name__)


@dataclass
class BlockInfo:
    """One recognized residual block.

    Attributes:
        index: position among recognized blocks (stable, see the module docstring).
        name: module path, e.g. `stages.0.blocks.3`.
        family: 'convnext', 'vit', 'inverted_residual', 'resnet' or a user family.
        prunable: whether it can be converted (True for blocks already converted).
        reason: one line saying why not, when not prunable.
        params: parameters of the block (shared ones once).
        macs: MACs for one forward at `input_size` (0 when no input size was given).
        input_shape / output_shape: tensor shapes at that forward (None without an input size).
        block_type: qualified name of the (original) block class.
        shortcut: 'identity', 'projection' or 'none'.
        pruned: already in its pruned training form.
    """

    index: int
    name: str
    family: str
    prunable: bool
    reason: str | None
    params: int
    macs: int
    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None
    block_type: str = ""
    shortcut: str = SHORTCUT_IDENTITY
    pruned: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def _qualname(m: nn.Module) -> str:
    return f"{type(m).__module__}.{type(m).__qualname__}"


def recognized_blocks(model: nn.Module, identity_shortcut_only: bool = False) -> list[tuple[BlockInfo, nn.Module]]:
    found: list[tuple[BlockInfo, nn.Module]] = []
    inside: str | None = None
    for name, module in model.named_modules():
        if inside is not None and (name == inside or name.startswith(inside + ".")):
            continue
        if isinstance(module, PrunedBlock):
            family, reason, shortcut, pruned, btype = module.family, None, module.options.get(
                "shortcut", SHORTCUT_IDENTITY), True, module.base_type
        else:
            handler = get_handler(module)
            if handler is None:
                continue
            family, reason, shortcut, pruned, btype = (handler.family, handler.check(module),
                                                       handler.shortcut(module), False, _qualname(module))
            if reason is None and identity_shortcut_only and shortcut != SHORTCUT_IDENTITY:
                reason = ("projection shortcut" if shortcut != "none" else "no residual connection") + \
                    " (identity_shortcut_only)"
        inside = name
        params = sum(p.numel() for p in module.parameters())
        info = BlockInfo(index=len(found), name=name, family=family, prunable=reason is None, reason=reason,
                         params=params, macs=0, input_shape=None, output_shape=None, block_type=btype,
                         shortcut=shortcut, pruned=pruned)
        found.append((info, module))
    return found


def _normalize_input_size(input_size: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(input_size, int):
        return (1, 3, input_size, input_size)
    size = tuple(int(s) for s in input_size)
    if len(size) == 2:
        return (1, 3, *size)
    if len(size) == 3:
        return (1, *size)
    if len(size) == 4:
        return size
    raise InputError(f"input size must be H, (H, W), (C, H, W) or (B, C, H, W), got {input_size}")


def count_macs(model: nn.Module, input_size: int | Sequence[int]) -> dict[str, int]:
    """MACs per counted module path for one forward at `input_size` (see the module docstring)."""
    size = _normalize_input_size(input_size)
    macs: dict[str, int] = {}
    hooks = []

    def hook_for(name: str):
        def hook(mod, inputs, output):
            if isinstance(mod, nn.Conv2d):
                k = mod.kernel_size[0] * mod.kernel_size[1]
                n = output.numel() * (mod.in_channels // mod.groups) * k
            elif isinstance(mod, nn.Linear):
                n = output.numel() * mod.in_features
            elif isinstance(mod, Attention):
                b, t, d = inputs[0].shape
                n = 2 * b * t * t * mod.attn_dim if hasattr(mod, "attn_dim") else 2 * b * t * t * d
            elif isinstance(mod, nn.MultiheadAttention):
                q = inputs[0]
                b, t, d = q.shape if mod.batch_first else (q.shape[1], q.shape[0], q.shape[2])
                n = 2 * b * t * t * d + 4 * b * t * d * d
            else:
                return
            macs[name] = macs.get(name, 0) + int(n)
        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear, Attention, nn.MultiheadAttention)):
            hooks.append(mod.register_forward_hook(hook_for(name)))
    was_training = model.training
    try:
        p = next(model.parameters(), None)
        x = torch.randn(size, dtype=p.dtype if p is not None else torch.float32,
                        device=p.device if p is not None else "cpu")
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return macs


def prunable_candidates(blocks: Sequence[BlockInfo], candidates: Sequence[int] | None = None, *,
                        what: str = "blocks", model: str = "the model") -> list[int]:
    """The block indices to prune among: every prunable block, or `candidates` checked against them.

    Args:
        blocks: `find_blocks(model)`.
        candidates: requested indices (None: every prunable block).
        what: how the caller names the request, for the error (e.g. `--candidates`).
        model: the model's name, for the error.

    Returns:
        Sorted, distinct indices; never empty.

    Raises:
        InputError: a requested index that is not a prunable block, or no prunable block at all.
    """
    prunable = [b.index for b in blocks if b.prunable]
    if candidates is None:
        cand = prunable
    else:
        cand = sorted({int(i) for i in candidates})
        bad = [i for i in cand if i not in prunable]
        if bad:
            raise InputError(f"{what} {bad}: not prunable blocks of {model} (prunable: {prunable}; "
                             "see `updp blocks`)")
    if not cand:
        raise InputError(f"{what}: {model} has no prunable block")
    return cand


def find_blocks(model: nn.Module, input_size: int | Sequence[int] | None = None, *,
                identity_shortcut_only: bool = False) -> list[BlockInfo]:
    """Recognized residual blocks of `model` in module order.

    Args:
        model: any nn.Module.
        input_size: H, (H, W), (C, H, W) or (B, C, H, W); when given, one forward (eval mode,
            no_grad) fills `macs`, `input_shape` and `output_shape`.
        identity_shortcut_only: mark blocks whose skip is not an identity (projection shortcut,
            or no residual at all) as not prunable.

    Returns:
        A `BlockInfo` per block; non-prunable ones carry the reason.
    """
    found = recognized_blocks(model, identity_shortcut_only)
    if input_size is None or not found:
        return [info for info, _ in found]
    shapes: dict[str, tuple] = {}
    hooks = []
    for info, mod in found:
        def hook(m, inputs, output, _name=info.name):
            shapes[_name] = (tuple(inputs[0].shape), tuple(output.shape))
        hooks.append(mod.register_forward_hook(hook))
    try:
        macs = count_macs(model, input_size)
    finally:
        for h in hooks:
            h.remove()
    for info, _ in found:
        info.macs = sum(v for k, v in macs.items() if k.startswith(info.name + "."))
        if info.name in shapes:
            info.input_shape, info.output_shape = shapes[info.name]
    return [info for info, _ in found]
