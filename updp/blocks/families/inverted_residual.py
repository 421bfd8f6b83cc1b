"""Inverted residual (MobileNetV2): `PW expand → BN → act → DW → BN → act → PW project → BN (+x)`.

Pruned training form: every activation inside the block becomes `LambdaAct` (ReLU6 → identity at
λ = 1). Nothing is inserted: the block has no end activation (linear bottleneck), so at λ = 1 the
whole block is affine in its input and the next block's first activation supplies the
nonlinearity. `forward_linear` is the whole block.

Covered: timm `InvertedResidual` and `DepthwiseSeparableConv` (MobileNetV2's expansion-1 first
block, `DW → BN → act → PW → BN`), whose norms are `BatchNormAct2d` (BN with the activation
inside, `.act`); torchvision `InvertedResidual` (`conv` = Conv2dNormActivation(s) + conv + BN).

Blocks without a skip (stride 2 or a channel change) are prunable too; their `shortcut` is
'none' (the whole block becomes one linear map that merges with its neighbours).

Not prunable: squeeze-excitation (a data-dependent gate), anti-aliasing, space-to-depth stems.
"""

from __future__ import annotations

import torch
from timm.layers.norm_act import BatchNormAct2d
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual as TvInvertedResidual
from torchvision.ops.misc import Conv2dNormActivation

from updp.blocks.modules import LambdaAct
from updp.blocks.registry import (
    SHORTCUT_IDENTITY,
    SHORTCUT_NONE,
    BlockHandler,
    PrunedBlock,
    register_block,
)


def _bn_act(block: PrunedBlock, bn: BatchNormAct2d, act: LambdaAct, x: torch.Tensor) -> torch.Tensor:
    """`BatchNormAct2d` with its activation replaced by the λ-blended one."""
    if block.lam == 0.0 and not act.learning_alpha:
        return bn(x)  # the original module: bit-for-bit the baseline
    x = nn.BatchNorm2d.forward(bn, x)  # the BN part of BatchNormAct2d.forward, unchanged
    x = bn.drop(x)
    return act(x)


def _timm_reason(module: nn.Module, norms: tuple[str, ...]) -> str | None:
    if not isinstance(module.se, nn.Identity):
        return (f"squeeze-excitation ({type(module.se).__name__}) is a data-dependent gate: "
                "the block cannot become linear")
    if not isinstance(module.aa, nn.Identity):
        return f"anti-aliasing layer ({type(module.aa).__name__}) not supported"
    if getattr(module, "conv_s2d", None) is not None:
        return "space-to-depth convolution not supported"
    for name in norms:
        if type(getattr(module, name)) is not BatchNormAct2d:
            return f"{name} ({type(getattr(module, name)).__name__}) is not a BatchNormAct2d"
    return None


class PrunedTimmInvertedResidual(PrunedBlock):
    family = "inverted_residual"

    def __init__(self, blk: InvertedResidual) -> None:
        super().__init__(blk)
        self.has_skip = blk.has_skip
        for name in ("conv_pw", "bn1", "conv_dw", "bn2", "aa", "se", "conv_pwl", "bn3", "drop_path"):
            setattr(self, name, getattr(blk, name))
        self.act1 = LambdaAct(blk.bn1.act)
        self.act2 = LambdaAct(blk.bn2.act)
        self.act3 = LambdaAct(blk.bn3.act)  # Identity in MobileNetV2 (linear bottleneck)

    def forward_linear(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_pw(x)
        x = _bn_act(self, self.bn1, self.act1, x)
        x = self.conv_dw(x)
        x = _bn_act(self, self.bn2, self.act2, x)
        x = self.aa(x)
        x = self.se(x)
        x = self.conv_pwl(x)
        x = _bn_act(self, self.bn3, self.act3, x)
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_linear(x)


class PrunedTimmDepthwiseSeparable(PrunedBlock):
    family = "inverted_residual"

    def __init__(self, blk: DepthwiseSeparableConv) -> None:
        super().__init__(blk)
        self.has_skip = blk.has_skip
        for name in ("conv_dw", "bn1", "aa", "se", "conv_pw", "bn2", "drop_path"):
            setattr(self, name, getattr(blk, name))
        self.act1 = LambdaAct(blk.bn1.act)
        self.act2 = LambdaAct(blk.bn2.act)  # Identity unless pw_act

    def forward_linear(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_dw(x)
        x = _bn_act(self, self.bn1, self.act1, x)
        x = self.aa(x)
        x = self.se(x)
        x = self.conv_pw(x)
        x = _bn_act(self, self.bn2, self.act2, x)
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_linear(x)


@register_block(InvertedResidual, family="inverted_residual")
class TimmInvertedResidualHandler(BlockHandler):
    def check(self, module: nn.Module) -> str | None:
        return _timm_reason(module, ("bn1", "bn2", "bn3"))

    def shortcut(self, module: nn.Module) -> str:
        return SHORTCUT_IDENTITY if module.has_skip else SHORTCUT_NONE

    def to_pruned(self, module: nn.Module, **_: object) -> PrunedBlock:
        return PrunedTimmInvertedResidual(module)


@register_block(DepthwiseSeparableConv, family="inverted_residual")
class TimmDepthwiseSeparableHandler(TimmInvertedResidualHandler):
    def check(self, module: nn.Module) -> str | None:
        return _timm_reason(module, ("bn1", "bn2"))

    def to_pruned(self, module: nn.Module, **_: object) -> PrunedBlock:
        return PrunedTimmDepthwiseSeparable(module)


class PrunedTorchvisionInvertedResidual(PrunedBlock):
    family = "inverted_residual"

    def __init__(self, blk: TvInvertedResidual) -> None:
        super().__init__(blk)
        self.stride = blk.stride
        self.use_res_connect = blk.use_res_connect
        self.out_channels = blk.out_channels
        self._is_cn = blk._is_cn
        self.conv = blk.conv  # [Conv2dNormActivation(conv, BN, ReLU6)]×(1|2), Conv2d, BN
        self.acts = nn.ModuleList(LambdaAct(cna[2]) for cna in blk.conv[:-2])

    def forward_linear(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for cna, act in zip(self.conv[:-2], self.acts, strict=True):
            y = cna[0](y)
            y = cna[1](y)
            y = act(y)
        y = self.conv[-2](y)
        y = self.conv[-1](y)
        if self.use_res_connect:
            return x + y
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_linear(x)


@register_block(TvInvertedResidual, family="inverted_residual")
class TorchvisionInvertedResidualHandler(BlockHandler):
    def check(self, module: nn.Module) -> str | None:
        c = module.conv
        if len(c) < 3 or not isinstance(c[-2], nn.Conv2d) or not isinstance(c[-1], nn.BatchNorm2d):
            return "unexpected InvertedResidual layout"
        for cna in c[:-2]:
            if not (isinstance(cna, Conv2dNormActivation) and len(cna) == 3):
                return "unexpected InvertedResidual layout (expected Conv2dNormActivation with an activation)"
        return None

    def shortcut(self, module: nn.Module) -> str:
        return SHORTCUT_IDENTITY if module.use_res_connect else SHORTCUT_NONE

    def to_pruned(self, module: nn.Module, **_: object) -> PrunedBlock:
        return PrunedTorchvisionInvertedResidual(module)
