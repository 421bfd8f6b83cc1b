"""Where training runs, and the CPU setting it needs to run at the speed it should."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from updp.core.constants import DEFAULT_TORCH_DEVICE
from updp.core.denormals import denormals_flushed
from updp.core.errors import InputError


def resolve_device(device: str = DEFAULT_TORCH_DEVICE) -> torch.device:
    """'auto' → the local CUDA device when present (per LOCAL_RANK under torchrun), else CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available")
    return dev


@contextlib.contextmanager
def fast_cpu_math() -> Iterator[None]:
    """Flush denormal floats to zero while the block runs (a no-op where the CPU cannot), then
    restore the mode found on entry.

    Why flush: freshly initialized timm ConvNeXts (layer scale 1e-6) and freshly inserted BNs
    can produce denormal activations and gradients, on which x86 float math is ~10-50x slower: with
    an earlier version of the training code a 4-step pruning run on 2 cores took 47 s with
    denormals and 2 s without. The current code does not reproduce it (0 denormal values counted in
    module outputs and gradients of convnext_atto and DeiT pruning runs; a convnext_atto pruning
    epoch took 2.2 s with the flush and 2.6 s without, single runs), so the flush stays as
    insurance for models and data not tried here: it changes values below 1.2e-38 only.

    Why restore: the flush is a register of the calling thread, so it would also make numpy read
    float32 denormals as zero in whatever runs next in the process, such as the ONNX passes of
    `updp run` (`updp.core.denormals`). For the same reason only threads started inside the block
    (torch's OpenMP pool, on its first use) flush with it, and they keep the flush after it: they
    only ever run torch kernels. A pool started before it flushes on the calling thread only.
    """
    was = denormals_flushed()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was)


def native_bfloat16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 in hardware, so that bf16 autocast is worth it.

    Why: on a CPU without AVX512-BF16/AMX, oneDNN emulates bfloat16 and autocast makes training
    far slower, not faster: a DeiT-tiny step at 32×32 (batch 64, 2 cores) took 35 s in bf16 on an
    AVX2 CPU against 1.45 s in float32, while an AVX512-BF16 CPU ran it 1.45× faster than float32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def cpu_capability() -> str:
    """The widest vector ISA torch's CPU kernels use here ('AVX512', 'AVX2', 'DEFAULT', ...)."""
    return torch.backends.cpu.get_cpu_capability()
