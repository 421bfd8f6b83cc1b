"""ConvNeXt V1 blocks: `DW7x7 → LN → PW C→4C → GELU → PW 4C→C → γ → (+x)`.

Pruned training form (λ-blended, see `updp.blocks.modules`):

    x → DW → BlendLN→BN → PW1 → LambdaAct(GELU) → PW2 → γ → Blend(Id→BN_end) → (+x) → EndAct(GELU)

* LN → BN: channels-last BN (axis -1) for the Linear-MLP variants (timm default, torchvision),
  NCHW BN (axis 1) for timm `conv_mlp=True`. BN affine starts from the LN affine.
* GELU → identity.
* Inserted end-of-block BN + activation, so that each merged block keeps one nonlinearity
  (otherwise two consecutive pruned blocks would merge into one linear map and the network would
  lose depth *and* nonlinearity). Where they go, and why:
  - the BN sits at the end of the residual branch, after the layer scale γ and before the add:
    there it is a per-channel affine on the branch output and folds into the merged pointwise
    conv `γ·W2·W1` at zero cost, while the skip stays an exact identity;
  - the activation (a copy of the block's GELU) sits after the residual add, i.e. where ResNet
    has its end ReLU: `y = act(x + branch(x))`.
  Both are blended: at λ = 0 the BN blend is the identity and `EndAct` is the identity, so the
  block is exactly the baseline. The inserted BN is marked `identity_init`; `calibrate_bn` can
  set its affine so that its eval form is the identity on the calibration data.
* `forward_linear` is the block up to (excluding) the end activation; affine at λ = 1.

Not prunable: ConvNeXt V2 GRN (a data-dependent gate), a non-identity shortcut (timm `Downsample`,
used when the block changes channels or stride), a norm inside the MLP, a non-LayerNorm norm.
"""

from __future__ import annotations

import copy

import torch
from timm.layers.mlp import GlobalResponseNormMlp, Mlp
from timm.models.convnext import ConvNeXtBlock
from torch import nn
from torchvision.models.convnext import CNBlock

from updp.blocks.modules import BlendedNorm, ChannelBatchNorm, EndAct, LambdaAct, bn_from_layernorm
from updp.blocks.registry import BlockHandler, PrunedBlock, register_block


def _end_parts(channels: int, act: nn.Module, ref: torch.Tensor) -> tuple[ChannelBatchNorm, EndAct]:
    end_bn = ChannelBatchNorm(channels, channel_dim=1, identity_init=True)
    end_bn = end_bn.to(device=ref.device, dtype=ref.dtype)
    return end_bn, EndAct(copy.deepcopy(act))


class PrunedTimmConvNeXtBlock(PrunedBlock):
    family = "convnext"

    def __init__(self, blk: ConvNeXtBlock, swap_at_start: bool = False) -> None:
        super().__init__(blk, {"swap_at_start": swap_at_start})
        self.use_conv_mlp = blk.use_conv_mlp
        self.conv_dw = blk.conv_dw
        self.norm = blk.norm
        self.mlp = blk.mlp
        self.register_parameter("gamma", blk.gamma)
        self.shortcut = blk.shortcut
        self.drop_path = blk.drop_path
        channel_dim = 1 if blk.use_conv_mlp else -1
        self.norm_bn = bn_from_layernorm(blk.norm, channel_dim)
        self.norm_blend = BlendedNorm(self.norm, self.norm_bn, swap_at_start=swap_at_start)
        self.act = LambdaAct(blk.mlp.act)
        self.end_bn, self.end_act = _end_parts(blk.conv_dw.out_channels, blk.mlp.act, blk.conv_dw.weight)
        self.end_bn_blend = BlendedNorm(nn.Identity(), self.end_bn)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mlp
        x = m.fc1(x)
        x = self.act(x)
        x = m.drop1(x)
        x = m.norm(x)
        x = m.fc2(x)
        x = m.drop2(x)
        return x

    def forward_linear(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_dw(x)
        if self.use_conv_mlp:
            x = self.norm_blend(x)
            x = self._mlp(x)
        else:
            x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
            x = self.norm_blend(x)
            x = self._mlp(x)
            x = x.permute(0, 3, 1, 2)
        if self.gamma is not None:
            x = x.mul(self.gamma.reshape(1, -1, 1, 1))
        x = self.end_bn_blend(x)
        x = self.drop_path(x) + self.shortcut(shortcut)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.end_act(self.forward_linear(x))


@register_block(ConvNeXtBlock, family="convnext")
class TimmConvNeXtHandler(BlockHandler):
    def check(self, module: nn.Module) -> str | None:
        if isinstance(module.mlp, GlobalResponseNormMlp):
            return "GlobalResponseNorm (ConvNeXt V2) is a data-dependent gate: the block cannot become linear"
        if type(module.mlp) is not Mlp:
            return f"MLP type {type(module.mlp).__name__} is not supported (expected timm Mlp)"
        if not isinstance(module.mlp.norm, nn.Identity):
            return "a norm inside the MLP is not supported"
        if not isinstance(module.shortcut, nn.Identity):
            return "projection shortcut (Downsample): the residual is not an identity"
        if not isinstance(module.norm, nn.LayerNorm) or len(module.norm.normalized_shape) != 1:
            return f"norm {type(module.norm).__name__} is not a LayerNorm over channels"
        if not module.norm.elementwise_affine:
            return "LayerNorm without affine is not supported"
        return None

    def to_pruned(self, module: nn.Module, swap_at_start: bool = False, **_: object) -> PrunedBlock:
        return PrunedTimmConvNeXtBlock(module, swap_at_start=swap_at_start)


class PrunedTorchvisionCNBlock(PrunedBlock):
    family = "convnext"

    def __init__(self, blk: CNBlock, swap_at_start: bool = False) -> None:
        super().__init__(blk, {"swap_at_start": swap_at_start})
        # block: 0 DW conv, 1 Permute→NHWC, 2 LayerNorm, 3 Linear C→4C, 4 GELU, 5 Linear 4C→C, 6 Permute→NCHW
        self.block = blk.block
        self.layer_scale = blk.layer_scale  # (C, 1, 1)
        self.stochastic_depth = blk.stochastic_depth
        self.norm_bn = bn_from_layernorm(blk.block[2], channel_dim=-1)
        self.norm_blend = BlendedNorm(blk.block[2], self.norm_bn, swap_at_start=swap_at_start)
        self.act = LambdaAct(blk.block[4])
        self.end_bn, self.end_act = _end_parts(blk.block[0].out_channels, blk.block[4], blk.block[0].weight)
        self.end_bn_blend = BlendedNorm(nn.Identity(), self.end_bn)

    def forward_linear(self, input: torch.Tensor) -> torch.Tensor:
        b = self.block
        x = b[0](input)
        x = b[1](x)
        x = self.norm_blend(x)
        x = b[3](x)
        x = self.act(x)
        x = b[5](x)
        x = b[6](x)
        result = self.layer_scale * x
        result = self.end_bn_blend(result)
        result = self.stochastic_depth(result)
        result += input
        return result

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.end_act(self.forward_linear(input))


@register_block(CNBlock, family="convnext")
class TorchvisionCNBlockHandler(BlockHandler):
    def check(self, module: nn.Module) -> str | None:
        b = module.block
        if not (isinstance(b, nn.Sequential) and len(b) == 7 and isinstance(b[0], nn.Conv2d)
                and isinstance(b[2], nn.LayerNorm) and isinstance(b[3], nn.Linear)
                and isinstance(b[5], nn.Linear)):
            return ("unexpected CNBlock layout "
                    "(expected DW conv, permute, LayerNorm, Linear, act, Linear, permute)")
        if len(b[2].normalized_shape) != 1 or not b[2].elementwise_affine:
            return "LayerNorm must be over channels with affine"
        return None

    def to_pruned(self, module: nn.Module, swap_at_start: bool = False, **_: object) -> PrunedBlock:
        return PrunedTorchvisionCNBlock(module, swap_at_start=swap_at_start)
