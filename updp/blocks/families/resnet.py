"""ResNet basic and bottleneck blocks: `act(x + BN(conv(act(BN(conv x)))…))`.

Pruned training form: the inner ReLU(s) become `LambdaAct`; the end ReLU after the residual add
is kept (it is the block's end-of-block nonlinearity). `forward_linear` is the block up to the
residual add; at λ = 1 it is affine in the input.

Blocks with a projection shortcut (`downsample` = 1×1 conv + BN) are prunable: the shortcut is
linear too; its `shortcut` kind is 'projection' so callers can exclude them.

torchvision blocks reuse one `relu` module for the inner and end activations, so their forward is
re-implemented here with separate λ-modules wrapping that same `relu`.

Not prunable: an attention / squeeze-excitation module (`se`, a data-dependent gate), an
anti-aliasing layer. DropBlock and drop-path are identities at eval and are kept as they are.
"""

from __future__ import annotations

import torch
import torchvision.models.resnet as tvr
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

from updp.blocks.modules import LambdaAct
from updp.blocks.registry import (
    SHORTCUT_IDENTITY,
    SHORTCUT_PROJECTION,
    BlockHandler,
    PrunedBlock,
    register_block,
)

_TIMM_BASIC = ("conv1", "bn1", "drop_block", "aa", "conv2", "bn2", "se", "act2", "downsample",
               "drop_path")
_TIMM_BOTTLENECK = ("conv1", "bn1", "conv2", "bn2", "drop_block", "aa", "conv3", "bn3", "se", "act3",
                    "downsample", "drop_path")


class _PrunedResNetBase(PrunedBlock):
    family = "resnet"

    def _copy(self, blk: nn.Module, names: tuple[str, ...]) -> None:
        self.stride = blk.stride
        for name in names:
            setattr(self, name, getattr(blk, name, None))


class PrunedTimmBasicBlock(_PrunedResNetBase):
    def __init__(self, blk: BasicBlock) -> None:
        super().__init__(blk)
        self._copy(blk, _TIMM_BASIC)
        self.dilation = blk.dilation
        self.act1 = LambdaAct(blk.act1)

    def forward_linear(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.drop_block(x)
        x = self.act1(x)
        x = self.aa(x)
        x = self.conv2(x)
        x = self.bn2(x)
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.forward_linear(x))


class PrunedTimmBottleneck(_PrunedResNetBase):
    def __init__(self, blk: Bottleneck) -> None:
        super().__init__(blk)
        self._copy(blk, _TIMM_BOTTLENECK)
        self.dilation = blk.dilation
        self.act1 = LambdaAct(blk.act1)
        self.act2 = LambdaAct(blk.act2)

    def forward_linear(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.act1(x)
        x = self.conv2(x)
        x = self.bn2(x)
        x = self.drop_block(x)
        x = self.act2(x)
        x = self.aa(x)
        x = self.conv3(x)
        x = self.bn3(x)
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act3(self.forward_linear(x))


class _TimmResNetHandler(BlockHandler):
    def check(self, module: nn.Module) -> str | None:
        se = getattr(module, "se", None)
        if se is not None and not isinstance(se, nn.Identity):
            return (f"attention / squeeze-excitation module ({type(se).__name__}) is a data-dependent gate: "
                    "the block cannot become linear")
        aa = getattr(module, "aa", None)
        if aa is not None and not isinstance(aa, nn.Identity):
            return f"anti-aliasing layer ({type(aa).__name__}) not supported"
        return None

    def shortcut(self, module: nn.Module) -> str:
        return SHORTCUT_IDENTITY if module.downsample is None else SHORTCUT_PROJECTION


@register_block(BasicBlock, family="resnet")
class TimmBasicBlockHandler(_TimmResNetHandler):
    def to_pruned(self, module: nn.Module, **_: object) -> PrunedBlock:
        return PrunedTimmBasicBlock(module)


@register_block(Bottleneck, family="resnet")
class TimmBottleneckHandler(_TimmResNetHandler):
    def to_pruned(self, module: nn.Module, **_: object) -> PrunedBlock:
        return PrunedTimmBottleneck(module)


class PrunedTorchvisionBasicBlock(_PrunedResNetBase):
    def __init__(self, blk: tvr.BasicBlock) -> None:
        super().__init__(blk)
        self._copy(blk, ("conv1", "bn1", "relu", "conv2", "bn2", "downsample"))
        self.act1 = LambdaAct(blk.relu)

    def forward_linear(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.act1(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.forward_linear(x))


class PrunedTorchvisionBottleneck(_PrunedResNetBase):
    def __init__(self, blk: tvr.Bottleneck) -> None:
        super().__init__(blk)
        self._copy(blk, ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "relu", "downsample"))
        self.act1 = LambdaAct(blk.relu)
        self.act2 = LambdaAct(blk.relu)

    def forward_linear(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.act1(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = self.act2(out)
        out = self.conv3(out)
        out = self.bn3(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.forward_linear(x))


class _TvResNetHandler(BlockHandler):
    def shortcut(self, module: nn.Module) -> str:
        return SHORTCUT_IDENTITY if module.downsample is None else SHORTCUT_PROJECTION


@register_block(tvr.BasicBlock, family="resnet")
class TorchvisionBasicBlockHandler(_TvResNetHandler):
    def to_pruned(self, module: nn.Module, **_: object) -> PrunedBlock:
        return PrunedTorchvisionBasicBlock(module)


@register_block(tvr.Bottleneck, family="resnet")
class TorchvisionBottleneckHandler(_TvResNetHandler):
    def to_pruned(self, module: nn.Module, **_: object) -> PrunedBlock:
        return PrunedTorchvisionBottleneck(module)
