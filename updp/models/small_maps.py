"""Faster forms of two convolutions that are slow on small maps, for training and evaluation.

At 32×32 inputs a ConvNeXt's last stages run on 4×4, 2×2 and 1×1 maps, where oneDNN's CPU
kernels are far from their speed on large maps. Profiled on an AVX2 CPU (2 cores, timm
`convnext_atto`, batch 128): the backward of the 7×7 depthwise convolutions on the 2×2 and 1×1
maps alone took 250 of a 360 ms training step, although almost all of their taps only ever read
zero padding. Inside `small_map_convolutions` two rewrites apply, each the same linear map:

* a **depthwise** convolution on a map of at most `SMALL_MAP_POSITIONS` positions becomes one small
  matrix per channel, gathered from the kernel (`updp.identities.conv_tap_index`), and a
  broadcast multiply-sum; the gather is differentiable, so taps that read only padding get zero
  gradient, as they do in the convolution;
* a **1×1** convolution (stride 1, no padding, one group) becomes a `linear` on the channels axis.

Measured on that CPU, forward + backward of one 7×7 depthwise convolution (batch 128): 1×1 map
58 → 0.5 ms, 2×2 33 → 3.4 ms, 4×4 22 → 8 ms; an 8×8 map stays a convolution (5.8 ms; its dense
64×64 matrices took 11 ms). A whole training step (A/B in one process) 0.43 → 0.20 s. In float64 the
outputs agree to rounding (1e-16) and so do the gradients; in float32 the values are the same up
to rounding (other summation orders), like channels-last.

The rewrite is a `TorchFunctionMode`, not a change to the modules: nothing is stored on the model,
so copies, checkpoints and exports never see it, and it ends with the block.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from updp.identities import conv_tap_index

# Depthwise convolutions on maps of at most this many positions take the matrix form (4×4 and
# smaller): measured faster there, slower at 8×8 (64 positions).
SMALL_MAP_POSITIONS = 16

_CONV2D_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV2D_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
_ACTIVE = threading.local()


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[-1]))


@functools.lru_cache(maxsize=256)
def _tap_index(kernel_hw: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
               in_hw: tuple[int, int], device: torch.device) -> torch.Tensor:
    """`conv_tap_index` as a tensor on `device`, once per shape and device (not a copy per call)."""
    return torch.from_numpy(conv_tap_index(kernel_hw, stride, padding, in_hw)).to(device)


def depthwise_as_matrices(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """`conv2d(x, weight, bias, stride, padding, groups=C)` as one (Ho·Wo, H·W) matrix per channel."""
    n, c, h, w = x.shape
    kh, kw = weight.shape[-2:]
    index = _tap_index((kh, kw), stride, padding, (h, w), x.device)
    taps = torch.cat([weight.reshape(c, kh * kw), weight.new_zeros(c, 1)], dim=1)
    matrices = taps[:, index]  # (C, Ho·Wo, H·W)
    if h * w <= 4:  # a broadcast multiply-sum: on 2×2 and 1×1 maps 3x faster than a batched matmul
        y = (x.reshape(n, c, 1, h * w) * matrices).sum(-1)
    else:  # a batched matmul: on 4×4 maps 2.3x faster than the multiply-sum
        y = torch.einsum("bcn,cmn->bcm", x.reshape(n, c, h * w), matrices)
    if bias is not None:
        y = y + bias[None, :, None]
    ho = (h + 2 * padding[0] - kh) // stride[0] + 1
    wo = (w + 2 * padding[1] - kw) // stride[1] + 1
    return y.reshape(n, c, ho, wo)


def pointwise_as_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A 1×1 convolution (stride 1, no padding, one group) as `linear` on the channels axis."""
    return F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias).permute(0, 3, 1, 2)


def _faster_conv2d(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The rewritten call, or None when neither form applies (the convolution runs as it is)."""
    call = dict(_CONV2D_DEFAULTS, **dict(zip(_CONV2D_ARGS, args)), **kwargs)
    x, weight, padding = call["input"], call["weight"], call["padding"]
    if x.dim() != 4 or isinstance(padding, str) or _pair(call["dilation"]) != (1, 1):
        return None
    stride, padding = _pair(call["stride"]), _pair(padding)
    c = x.shape[1]
    if (call["groups"] == c and weight.shape[:2] == (c, 1)
            and x.shape[2] * x.shape[3] <= SMALL_MAP_POSITIONS):
        return depthwise_as_matrices(x, weight, call["bias"], stride, padding)
    if call["groups"] == 1 and weight.shape[-2:] == (1, 1) and stride == (1, 1) and padding == (0, 0):
        return pointwise_as_linear(x, weight, call["bias"])
    return None


class _SmallMapMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.conv2d:
            y = _faster_conv2d(args, kwargs)
            if y is not None:
                return y
        return func(*args, **kwargs)


def _rewritable(m: nn.Module) -> bool:
    if not isinstance(m, nn.Conv2d) or m.dilation != (1, 1):
        return False
    depthwise = m.groups == m.in_channels == m.out_channels
    pointwise = m.groups == 1 and m.kernel_size == (1, 1) and m.stride == (1, 1) and m.padding in ((0, 0), "valid")
    return depthwise or pointwise


def has_rewritable_convolutions(model: nn.Module) -> bool:
    """True when the model has a depthwise or a 1×1 stride-1 `Conv2d` (the only ones the mode rewrites)."""
    return any(_rewritable(m) for m in model.modules())


@contextmanager
def small_map_convolutions(*models: nn.Module | None) -> Iterator[None]:
    """Run the block with the faster forms of depthwise convolutions on small maps and 1×1 ones.

    Entered only when one of `models` (None: skipped) has such a convolution: every torch call in
    the block passes through the mode's Python handler, which costs a transformer for nothing.
    Blocks nest (an inner block inside an active one does nothing).
    """
    if getattr(_ACTIVE, "on", False) or not any(m is not None and has_rewritable_convolutions(m) for m in models):
        yield
        return
    _ACTIVE.on = True
    try:
        with _SmallMapMode():
            yield
    finally:
        _ACTIVE.on = False


__all__ = ["SMALL_MAP_POSITIONS", "depthwise_as_matrices", "has_rewritable_convolutions", "pointwise_as_linear",
           "small_map_convolutions"]
