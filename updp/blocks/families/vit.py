"""ViT / DeiT encoder blocks: `x + Attn(LN1 x)`, then `x + FC2(GELU(FC1(LN2 x)))`.

Pruned training form:

    x = x + ls1(Attn(LN1 x))                                   # kept (optionally LN1 → BN)
    y = x + ls2(FC2(LambdaAct(GELU)(FC1(BlendLN2→BN(x)))))     # linear at λ = 1

* LN2 → BN over the channels of the tokens (B, N, D): statistics over batch and tokens (the class
  token included). At eval it is a per-channel affine that folds into FC1.
* GELU → identity; at λ = 1 the MLP and its residual are one affine map `I + γ·W2·W1` (+ bias).
* Attention is not linear and is kept; no end activation is inserted: the next block's attention
  (softmax) supplies the nonlinearity.
* `prune_norm1=True` (default False) also blends LN1 → BN (it folds into QKV at eval).
* `forward_linear(x)` is the MLP half only (its input is the post-attention residual stream);
  that is the part that is affine at λ = 1.
"""

from __future__ import annotations

import torch
from timm.layers.mlp import Mlp
from timm.models.vision_transformer import Block, LayerScale
from torch import nn
from torchvision.models.vision_transformer import EncoderBlock

from updp.blocks.modules import BlendedNorm, LambdaAct, bn_from_layernorm
from updp.blocks.registry import BlockHandler, PrunedBlock, register_block
from updp.core.errors import UnsupportedError


def _ln_reason(ln: nn.Module, name: str) -> str | None:
    if not isinstance(ln, nn.LayerNorm) or len(ln.normalized_shape) != 1 or not ln.elementwise_affine:
        return f"{name} ({type(ln).__name__}) is not an affine LayerNorm over channels"
    return None


class PrunedTimmViTBlock(PrunedBlock):
    family = "vit"

    def __init__(self, blk: Block, swap_at_start: bool = False, prune_norm1: bool = False) -> None:
        super().__init__(blk, {"swap_at_start": swap_at_start, "prune_norm1": prune_norm1})
        self.norm1 = blk.norm1
        self.attn = blk.attn
        self.ls1 = blk.ls1
        self.drop_path1 = blk.drop_path1
        self.norm2 = blk.norm2
        self.mlp = blk.mlp
        self.ls2 = blk.ls2
        self.drop_path2 = blk.drop_path2
        self.prune_norm1 = prune_norm1
        if prune_norm1:
            self.norm1_bn = bn_from_layernorm(blk.norm1, channel_dim=-1)
            self.norm1_blend = BlendedNorm(self.norm1, self.norm1_bn, swap_at_start=swap_at_start)
        self.norm2_bn = bn_from_layernorm(blk.norm2, channel_dim=-1)
        self.norm2_blend = BlendedNorm(self.norm2, self.norm2_bn, swap_at_start=swap_at_start)
        self.act = LambdaAct(blk.mlp.act)

    def forward_linear(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mlp
        y = self.norm2_blend(x)
        y = m.fc1(y)
        y = self.act(y)
        y = m.drop1(y)
        y = m.norm(y)
        y = m.fc2(y)
        y = m.drop2(y)
        return x + self.drop_path2(self.ls2(y))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        h = self.norm1_blend(x) if self.prune_norm1 else self.norm1(x)
        x = x + self.drop_path1(self.ls1(self.attn(h, attn_mask=attn_mask, is_causal=is_causal)))
        return self.forward_linear(x)


@register_block(Block, family="vit")
class TimmViTBlockHandler(BlockHandler):
    def check(self, module: nn.Module) -> str | None:
        if type(module.mlp) is not Mlp:
            return f"MLP type {type(module.mlp).__name__} is not supported (gated MLPs cannot become linear)"
        if not isinstance(module.mlp.norm, nn.Identity):
            return "a norm inside the MLP is not supported"
        if not isinstance(module.ls2, (nn.Identity, LayerScale)):
            return f"layer scale {type(module.ls2).__name__} is not supported"
        return _ln_reason(module.norm2, "norm2")

    def to_pruned(self, module: nn.Module, swap_at_start: bool = False, prune_norm1: bool = False,
                  **_: object) -> PrunedBlock:
        if prune_norm1:
            reason = _ln_reason(module.norm1, "norm1")
            if reason:
                raise UnsupportedError(f"prune_norm1: {reason}")
        return PrunedTimmViTBlock(module, swap_at_start=swap_at_start, prune_norm1=prune_norm1)


class PrunedTorchvisionEncoderBlock(PrunedBlock):
    family = "vit"

    def __init__(self, blk: EncoderBlock, swap_at_start: bool = False, prune_norm1: bool = False) -> None:
        super().__init__(blk, {"swap_at_start": swap_at_start, "prune_norm1": prune_norm1})
        self.num_heads = blk.num_heads
        self.ln_1 = blk.ln_1
        self.self_attention = blk.self_attention
        self.dropout = blk.dropout
        self.ln_2 = blk.ln_2
        self.mlp = blk.mlp  # MLPBlock: 0 Linear, 1 GELU, 2 Dropout, 3 Linear, 4 Dropout
        self.prune_norm1 = prune_norm1
        if prune_norm1:
            self.ln_1_bn = bn_from_layernorm(blk.ln_1, channel_dim=-1)
            self.ln_1_blend = BlendedNorm(self.ln_1, self.ln_1_bn, swap_at_start=swap_at_start)
        self.ln_2_bn = bn_from_layernorm(blk.ln_2, channel_dim=-1)
        self.ln_2_blend = BlendedNorm(self.ln_2, self.ln_2_bn, swap_at_start=swap_at_start)
        self.act = LambdaAct(blk.mlp[1])

    def forward_linear(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mlp
        y = self.ln_2_blend(x)
        y = m[0](y)
        y = self.act(y)
        y = m[2](y)
        y = m[3](y)
        y = m[4](y)
        return x + y

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        torch._assert(input.dim() == 3, f"Expected (batch_size, seq_length, hidden_dim) got {input.shape}")
        x = self.ln_1_blend(input) if self.prune_norm1 else self.ln_1(input)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = self.dropout(x)
        x = x + input
        return self.forward_linear(x)


@register_block(EncoderBlock, family="vit")
class TorchvisionEncoderBlockHandler(BlockHandler):
    def check(self, module: nn.Module) -> str | None:
        m = module.mlp
        if not (isinstance(m, nn.Sequential) and len(m) == 5 and isinstance(m[0], nn.Linear)
                and isinstance(m[3], nn.Linear)):
            return "unexpected MLP layout (expected Linear, act, Dropout, Linear, Dropout)"
        return _ln_reason(module.ln_2, "ln_2")

    def to_pruned(self, module: nn.Module, swap_at_start: bool = False, prune_norm1: bool = False,
                  **_: object) -> PrunedBlock:
        if prune_norm1:
            reason = _ln_reason(module.ln_1, "ln_1")
            if reason:
                raise UnsupportedError(f"prune_norm1: {reason}")
        return PrunedTorchvisionEncoderBlock(module, swap_at_start=swap_at_start, prune_norm1=prune_norm1)
