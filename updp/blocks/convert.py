"""Convert chosen blocks to their pruned training form, set λ, calibrate the new BatchNorms.

`apply_pruning` replaces each chosen block *in place*, at the same attribute of its parent, by a
`PrunedBlock` that shares the original's parameters. Module paths therefore stay the same, and
so do the ONNX node scopes of an exported model (e.g. `/stages/stages.0/blocks/blocks.3/...`)
and the checkpoint keys of the original parameters; the new BatchNorms add keys under the block.

Order of use: create → load baseline weights → `apply_pruning` → `calibrate_bn` → train / export.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from updp.blocks.discover import BlockInfo, recognized_blocks
from updp.blocks.modules import ChannelBatchNorm, LambdaModule, check_lam
from updp.blocks.registry import PrunedBlock, get_handler
from updp.core.errors import InputError, UnsupportedError
from updp.models.fast_compute import fast_compute

logger = logging.getLogger(__name__)


def set_submodule(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, new)


def apply_pruning(model: nn.Module, indices: Iterable[int], lam: float = 1.0,
                  **options: Any) -> list[BlockInfo]:
    """Convert the blocks at `indices` (see `find_blocks`) to their pruned training form, in place.

    Args:
        model: the model; modified in place.
        indices: block indices from `find_blocks(model)`.
        lam: λ of the converted blocks (1.0: the linear, mergeable form; 0.0: the baseline function).
        **options: family options: `swap_at_start` (convnext, vit), `prune_norm1` (vit).

    Returns:
        The `BlockInfo`s of the converted blocks (after conversion). Blocks already converted are
        left as they are, with λ set.

    Raises:
        InputError: an index out of range or repeated.
        UnsupportedError: a chosen block is not prunable (the message names it and says why).
    """
    lam = check_lam(lam)
    indices = list(indices)
    found = recognized_blocks(model)
    if len(set(indices)) != len(indices):
        raise InputError(f"block indices repeat: {indices}")
    for i in indices:
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(found):
            raise InputError(f"block index {i!r} out of range: the model has {len(found)} recognized "
                             f"blocks (0..{len(found) - 1})")
    for i in indices:
        info = found[i][0]
        if info.name == "":
            raise UnsupportedError("the model itself is a block: wrap it in a container to prune it")
        if not info.prunable:
            raise UnsupportedError(f"block {i} ({info.name}, {info.family}) is not prunable: {info.reason}")
    for i in indices:
        info, module = found[i]
        if isinstance(module, PrunedBlock):
            module.set_lam(lam)
            continue
        handler = get_handler(module)
        pruned = handler.convert(module, **options)
        pruned.options["shortcut"] = handler.shortcut(module)
        pruned.train(module.training)
        pruned.set_lam(lam)
        set_submodule(model, info.name, pruned)
        logger.info("block %d (%s, %s) converted, lambda=%s", i, info.name, info.family, lam)
    after = recognized_blocks(model)
    return [after[i][0] for i in indices]


def drop_blocks(model: nn.Module, indices: list[int]) -> list[str]:
    """Replace each block at `indices` (see `find_blocks`) by `nn.Identity`, in place.

    Only exact for the *structure*: a block `y = x + f(x)` becomes `y = x`. Blocks whose shortcut is
    not the identity (projection, or no residual) cannot be dropped: their output has another shape
    or meaning.

    Returns:
        The module paths of the dropped blocks.

    Raises:
        InputError: index out of range or repeated.
        UnsupportedError: a block without an identity shortcut.
    """
    found = recognized_blocks(model)
    if len(set(indices)) != len(indices):
        raise InputError(f"block indices repeat: {indices}")
    for i in indices:
        if not 0 <= i < len(found):
            raise InputError(f"block index {i} out of range: the model has {len(found)} recognized blocks "
                             f"(0..{len(found) - 1})")
        info = found[i][0]
        if info.shortcut != "identity":
            raise UnsupportedError(f"block {i} ({info.name}) has a {info.shortcut} shortcut, not an identity: "
                                   "it cannot be dropped (--drop removes a block by keeping only its skip)")
    names = [found[i][0].name for i in indices]
    for name in names:
        set_submodule(model, name, nn.Identity())
        logger.info("dropped block %s", name)
    return names


def set_lam(model: nn.Module, lam: float) -> int:
    """Set λ of every pruned block of `model`; returns how many blocks were set."""
    lam = check_lam(lam)
    blocks = pruned_blocks(model)
    for _, blk in blocks:
        blk.set_lam(lam)
    return len(blocks)


def add_alphas(model: nn.Module) -> list[nn.Parameter]:
    """Layer-Folding: give every λ-module of the pruned blocks a learnable α (see `LambdaModule`).

    α starts at the block's λ and replaces it in the blends until the block is set to λ = 1
    (`fold_alphas`). Returns the new parameters, in module order.
    """
    alphas = []
    for _, blk in pruned_blocks(model):
        like = next(blk.parameters())
        alphas += [m.add_alpha(like) for m in blk.modules() if isinstance(m, LambdaModule)]
    return alphas


@torch.no_grad()
def fold_alphas(model: nn.Module) -> int:
    """Force every learnable α to 1 and set the blocks to λ = 1: the linear, mergeable form.

    From here the blends take the python λ = 1 path, so the α's no longer enter the forward (they
    stay in the state dict, at 1, so that a checkpoint loads into a model rebuilt by its plan).
    Returns how many α's were folded.
    """
    n = 0
    for _, blk in pruned_blocks(model):
        for m in blk.modules():
            if isinstance(m, LambdaModule) and m.alpha is not None:
                m.alpha.fill_(1.0)
                n += 1
        blk.set_lam(1.0)
    return n


def pruned_blocks(model: nn.Module) -> list[tuple[str, PrunedBlock]]:
    """(module path, block) for every block in its pruned training form, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PrunedBlock)]


@torch.no_grad()
def randomize_norm_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every norm random statistics and affines, and every layer scale random values.

    BatchNorm-type modules (all `_BatchNorm`, including `ChannelBatchNorm` and timm
    `BatchNormAct2d`): running mean ~ N(0, 0.5²), running var ~ U(0.5, 2), weight ~ U(0.5, 1.5),
    bias ~ N(0, 0.2²). LayerNorm/GroupNorm affines: weight ~ U(0.5, 1.5), bias ~ N(0, 0.2²).
    Layer scales (timm ConvNeXt `gamma`, timm `LayerScale.gamma`, torchvision `layer_scale`):
    U(0.5, 1.5), since their 1e-6 init would make a residual branch invisible. The purpose is
    tests: with default statistics many equivalences hold trivially. Deterministic for a seed.
    """
    g = torch.Generator().manual_seed(seed)

    def rand(t: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return (torch.rand(t.shape, generator=g, dtype=torch.float64) * (hi - lo) + lo).to(t)

    def randn(t: torch.Tensor, std: float) -> torch.Tensor:
        return (torch.randn(t.shape, generator=g, dtype=torch.float64) * std).to(t)

    seen: set[int] = set()
    for _, m in model.named_modules():
        if isinstance(m, _BatchNorm):
            if m.running_mean is not None:
                m.running_mean.copy_(randn(m.running_mean, 0.5))
                m.running_var.copy_(rand(m.running_var, 0.5, 2.0))
        if isinstance(m, (_BatchNorm, nn.LayerNorm, nn.GroupNorm)):
            if getattr(m, "weight", None) is not None and id(m.weight) not in seen:
                seen.add(id(m.weight))
                m.weight.copy_(rand(m.weight, 0.5, 1.5))
            if getattr(m, "bias", None) is not None and id(m.bias) not in seen:
                seen.add(id(m.bias))
                m.bias.copy_(randn(m.bias, 0.2))
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("gamma", "layer_scale") and id(p) not in seen:
            seen.add(id(p))
            p.copy_(rand(p, 0.5, 1.5))
    return model


def target_batchnorms(model: nn.Module, which: str) -> list[_BatchNorm]:
    if which == "all":
        return [m for m in model.modules() if isinstance(m, _BatchNorm)]
    if which == "pruned":
        return [m for m in model.modules() if isinstance(m, ChannelBatchNorm)]
    raise InputError(f"calibrate_bn: which must be 'pruned' or 'all', got {which!r}")


@torch.no_grad()
def calibrate_bn(model: nn.Module, batches: Iterable[Any], *, which: str = "pruned",
                 identity_init_inserted: bool = True, max_batches: int | None = None) -> int:
    """Recompute BatchNorm running statistics on data (cumulative average over the batches).

    The model runs in eval mode except the target BNs, which run in train mode with
    `momentum=None` (exact average over the batches); their statistics are reset first. A
    `BlendedNorm` at λ = 0 still feeds its BN in train mode, so this works before training.

    Args:
        model: the model; modes and momenta are restored afterwards.
        batches: tensors, or tuples/lists whose first element is the input tensor.
        which: 'pruned' (the `ChannelBatchNorm`s added by pruning) or 'all' BN-type modules.
        identity_init_inserted: for BNs inserted by pruning (`identity_init`), then set the affine
            to `w = sqrt(var + eps)`, `b = mean`, so the eval BN is exactly the identity and the
            training BN is near it on data like the calibration data.
        max_batches: stop after this many batches.

    Returns:
        The number of batches used.
    """
    bns = target_batchnorms(model, which)
    if not bns:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = {bn: bn.momentum for bn in bns}
    n = 0
    try:
        model.eval()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        p = next(model.parameters())
        with fast_compute(model):
            for batch in batches:
                if max_batches is not None and n >= max_batches:
                    break
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                model(x.to(device=p.device, dtype=p.dtype))
                n += 1
    finally:
        for m, t in modes.items():
            m.training = t
        for bn, mom in momenta.items():
            bn.momentum = mom
    if n == 0:
        raise InputError("calibrate_bn: no batches")
    if identity_init_inserted:
        for bn in bns:
            if isinstance(bn, ChannelBatchNorm) and bn.identity_init:
                bn.weight.copy_(torch.sqrt(bn.running_var + bn.eps))
                bn.bias.copy_(bn.running_mean)
    logger.info("calibrated %d BatchNorm modules on %d batches", len(bns), n)
    return n


def pruned_state(model: nn.Module) -> dict[str, float]:
    """{module path: λ} of the pruned blocks (for logs and plans)."""
    return {n: b.lam for n, b in pruned_blocks(model)}


def indices_of(model: nn.Module, names: Sequence[str]) -> list[int]:
    """Block indices for module paths; `InputError` naming an unknown path."""
    by_name = {info.name: info.index for info, _ in recognized_blocks(model)}
    out = []
    for n in names:
        if n not in by_name:
            raise InputError(f"no recognized block at {n!r}")
        out.append(by_name[n])
    return out
