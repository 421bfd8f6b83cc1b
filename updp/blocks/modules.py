"""Building blocks of a block's *pruned training form*: λ-blended activations and norms.

A pruned block moves from its baseline function (λ = 0) to a linear, mergeable one (λ = 1):

* a removed activation becomes `LambdaAct`:  `(1-λ)·act(x) + λ·x`;
* an inserted end-of-block activation is `EndAct`:  `(1-λ)·x + λ·act(x)`;
* a norm that must become foldable is `BlendedNorm`:  `(1-λ)·base(x) + λ·target(x)`, where `base`
  is the original LayerNorm (or `nn.Identity` for an inserted BN) and `target` a `ChannelBatchNorm`.

Exactness. Each module takes a python branch at the end points, so that
λ == 0.0 computes only the baseline path (bit-for-bit the original ops) and λ == 1.0 computes only
the linear path: no `0·act(x)` or `0·LN(x)` term is traced, and the exported ONNX graph of a
λ = 1 block contains no activation or LayerNormalization. In training mode a `BlendedNorm` at
λ = 0 still feeds its input to the target BN (under `no_grad`, output discarded) so the BN's
running statistics are ready when λ leaves 0; this has no effect on the output.

What the LN → BN swap changes, and how it is handled:

* LayerNorm normalizes each token/pixel over its channels with statistics of *that* sample; BN
  normalizes each channel with statistics over the batch (and positions). In training BN uses the
  batch's statistics; at eval it uses running statistics and becomes a fixed per-channel affine
  map `x·s + t` with `s = w / sqrt(var + eps)`, `t = b - mean·s`. That map is linear, so it folds
  into the neighbouring conv/linear (the ONNX passes do this); LayerNorm cannot be folded because
  its statistics depend on the input.
* The BN affine (w, b) starts as a copy of the LN affine and its running statistics must be
  calibrated on data before training (`calibrate_bn`). Until then the running statistics are
  (0, 1) and the eval BN is just the LN affine.
* The blend `(1-λ)·LN(x) + λ·BN(x)` keeps λ = 0 exactly the baseline and moves smoothly.
  `swap_at_start=True` (an ablation) replaces LN by BN already at λ = 0: the block's function
  changes immediately, before any training.

`ChannelBatchNorm` is a `_BatchNorm` (so generic BN tooling recognizes it) that normalizes the
channel axis 1 (NCHW) or -1 (channels-last maps, tokens (B, N, D)). In eval mode it computes
`x * scale + shift` from the running statistics, which exports to one Mul and one Add whose inputs
are constants.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from updp.core.errors import InputError


def check_lam(lam: float) -> float:
    """λ as a float, refused outside [0, 1] (the blend is only defined there)."""
    lam = float(lam)
    if not 0.0 <= lam <= 1.0:
        raise InputError(f"lambda must be in [0, 1], got {lam}")
    return lam


class LambdaModule(nn.Module):
    """Base of modules with a python-float λ. The owning pruned block sets it via `set_lam`.

    Layer-Folding (`add_alpha`) gives the module a learnable blend weight α instead: while λ < 1
    the blend uses α (a 0-d parameter, clamped to [0, 1]) in place of λ; once the block is set to
    λ = 1 the python path takes over again, so a folded block exports exactly like any λ = 1 block.
    """

    def __init__(self) -> None:
        super().__init__()
        self.lam = 0.0
        self.alpha: nn.Parameter | None = None

    def set_lam(self, lam: float) -> None:
        self.lam = check_lam(lam)

    def add_alpha(self, like: torch.Tensor) -> nn.Parameter:
        """A learnable α starting at the current λ (with `like`'s dtype and device); returns it."""
        if self.alpha is None:
            self.alpha = nn.Parameter(torch.tensor(self.lam, dtype=like.dtype, device=like.device))
        return self.alpha

    @property
    def learning_alpha(self) -> bool:
        return self.alpha is not None and self.lam != 1.0

    def blend_weight(self) -> float | torch.Tensor:
        """What the blend uses: λ (a python float), or the learnable α while it is learning.

        α's value is clamped to [0, 1] with the gradient passed straight through: a plain clamp has
        a zero gradient at α = 0, where Layer-Folding starts, and α would never move.
        """
        if self.learning_alpha:
            a = self.alpha
            return a + (a.clamp(0.0, 1.0) - a).detach()
        return self.lam

    def extra_repr(self) -> str:
        return f"lam={self.lam}" + (", learnable alpha" if self.alpha is not None else "")


def _act_no_inplace(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # An in-place activation (ReLU(inplace=True), BatchNormAct's act) would overwrite x, which the
    # blend still needs.
    if getattr(act, "inplace", False):
        x = x.clone()
    return act(x)


class LambdaAct(LambdaModule):
    """A removed activation: `(1-λ)·act(x) + λ·x`. λ = 0 is `act`, λ = 1 is the identity."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = self.blend_weight()
        if isinstance(lam, float):
            if lam == 0.0:
                return self.act(x)
            if lam == 1.0:
                return x
        return (1.0 - lam) * _act_no_inplace(self.act, x) + lam * x


class EndAct(LambdaModule):
    """An inserted end-of-block activation: `(1-λ)·x + λ·act(x)`. λ = 0 is the identity."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = self.blend_weight()
        if isinstance(lam, float):
            if lam == 0.0:
                return x
            if lam == 1.0:
                return self.act(x)
        return (1.0 - lam) * x + lam * _act_no_inplace(self.act, x)


class ChannelBatchNorm(_BatchNorm):
    """BatchNorm over one channel axis of a tensor of any rank.

    Args:
        num_features: channels C.
        channel_dim: 1 for NCHW (or (B, C, L)); -1 for channels-last maps (B, H, W, C) and tokens
            (B, N, D).
        identity_init: marks a BN *inserted* by pruning (not replacing a norm). `calibrate_bn` can
            then set its affine so that its eval form is exactly the identity on the calibration
            data (`w = sqrt(var + eps)`, `b = mean`).

    Training mode: `F.batch_norm` on a (M, C) or NCHW view, statistics over every axis but C.
    Eval mode: `x * scale + shift` with `scale = w / sqrt(var + eps)`, `shift = b - mean·scale`
    (exports as Mul + Add of constants that the ONNX passes fold into the adjacent linear op).
    """

    def __init__(self, num_features: int, channel_dim: int = 1, eps: float = 1e-5,
                 momentum: float | None = 0.1, identity_init: bool = False) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=True, track_running_stats=True)
        if channel_dim not in (1, -1):
            raise ValueError(f"channel_dim must be 1 or -1, got {channel_dim}")
        self.channel_dim = channel_dim
        self.identity_init = identity_init

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if torch.jit.is_tracing():  # shapes are traced values there; the check would only warn
            return
        if input.dim() < 2 or input.shape[self.channel_dim] != self.num_features:
            raise ValueError(f"ChannelBatchNorm expected {self.num_features} channels on axis "
                             f"{self.channel_dim}, got shape {tuple(input.shape)}")

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval-mode per-channel affine `(s, t)` with `BN(x) = x·s + t`; both of shape (C,)."""
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return scale, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not self.training:
            scale, shift = self.scale_shift()
            if self.channel_dim != -1 and x.dim() > 2:
                shape = [1] * x.dim()
                shape[self.channel_dim] = self.num_features
                scale, shift = scale.reshape(shape), shift.reshape(shape)
            return x * scale + shift

        if self.momentum is None:
            factor = 0.0
        else:
            factor = self.momentum
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average (used by calibrate_bn)
                factor = 1.0 / float(self.num_batches_tracked)
        if self.channel_dim == -1:
            flat = x.reshape(-1, self.num_features)  # (M, C): statistics over all M positions
            y = F.batch_norm(flat, self.running_mean, self.running_var, self.weight, self.bias,
                             True, factor, self.eps)
            return y.reshape(x.shape)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            True, factor, self.eps)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", channel_dim={self.channel_dim}, identity_init={self.identity_init}"


class BlendedNorm(LambdaModule):
    """`(1-λ)·base(x) + λ·target(x)`: a LayerNorm (or Identity) turning into a BatchNorm.

    `base` and `target` are *not* registered as children: the owning block registers them under
    its own attribute names, so that checkpoint keys of the original modules stay unchanged and
    the parameters stay shared with the baseline block.

    Args:
        base: the baseline norm (the block's LayerNorm) or `nn.Identity()` for an inserted BN.
        target: the `ChannelBatchNorm` it becomes.
        swap_at_start: use `target` for every λ, including 0 (ablation; changes the function).
    """

    def __init__(self, base: nn.Module, target: nn.Module, swap_at_start: bool = False) -> None:
        super().__init__()
        self._parts = (base, target)  # a tuple: deliberately not registered, see the docstring
        self.swap_at_start = swap_at_start

    @property
    def base(self) -> nn.Module:
        return self._parts[0]

    @property
    def target(self) -> nn.Module:
        return self._parts[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base, target = self._parts
        lam = self.blend_weight()
        if self.swap_at_start or (isinstance(lam, float) and lam == 1.0):
            return target(x)
        if isinstance(lam, float) and lam == 0.0:
            if target.training:
                with torch.no_grad():  # running statistics only; the output is the baseline's
                    target(x)
            return base(x)
        return (1.0 - lam) * base(x) + lam * target(x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, swap_at_start={self.swap_at_start}"


def bn_from_layernorm(ln: nn.LayerNorm, channel_dim: int) -> ChannelBatchNorm:
    """A `ChannelBatchNorm` replacing `ln`: same eps, affine copied from the LN affine.

    Running statistics start at (mean 0, var 1) and must be calibrated (`calibrate_bn`).
    """
    (c,) = ln.normalized_shape
    ref = ln.weight if ln.weight is not None else ln.bias
    bn = ChannelBatchNorm(c, channel_dim=channel_dim, eps=ln.eps)
    if ref is not None:
        bn = bn.to(device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        if ln.weight is not None:
            bn.weight.copy_(ln.weight)
        if ln.bias is not None:
            bn.bias.copy_(ln.bias)
    return bn
