"""The process-group helpers of PyTorch DDP under `torchrun`, in one place.

Two views of "which rank am I", because they answer different questions:

* `launch_info()` reads the launcher: the initialized process group if there is one, else the
  environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK). Code that runs before the group is
  initialized (choosing a device, counting steps per rank) needs this view.
* `group_info()` is the initialized process group only, (0, 1) without one. Code that
  communicates (sharded scoring, all-reduces) needs this view: it must never shard work across
  ranks that cannot exchange the results.
"""

from __future__ import annotations

import atexit
import logging
import os
from typing import Any

import torch
import torch.distributed as dist

from updp.core.errors import InputError

logger = logging.getLogger(__name__)


def _group_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def launch_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) as launched; (0, 1, 0) outside torchrun."""
    local = int(os.environ.get("LOCAL_RANK", 0))
    if _group_ready():
        return dist.get_rank(), dist.get_world_size(), local
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), local


def group_info() -> tuple[int, int]:
    """(rank, world size) of the initialized process group; (0, 1) without one."""
    if _group_ready():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Rank 0 (or no process group): the one process that writes files and measures latency."""
    return launch_info()[0] == 0


def init_process_group(device: torch.device) -> bool:
    """Initialize the process group when launched by torchrun with WORLD_SIZE > 1.

    The backend follows the device: nccl for CUDA, gloo for the CPU.

    Returns:
        Whether the run is distributed.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_available():
        raise InputError("WORLD_SIZE > 1 but torch.distributed is not available")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        # Left to the interpreter's exit, gloo's threads can be destroyed while still joinable and
        # a rank aborts ("terminate called without an active exception") after its work is done.
        atexit.register(shutdown_process_group)
        logger.info("process group: %s, rank %d of %d", backend, dist.get_rank(), dist.get_world_size())
    return True


def shutdown_process_group() -> None:
    """Destroy the process group this process initialized (a no-op without one)."""
    if _group_ready():
        dist.destroy_process_group()


def all_reduce_sums(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums over the ranks (float64); the values themselves without a process group."""
    if not _group_ready():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's picklable `obj`, on every rank (itself without a process group)."""
    if not _group_ready():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank (a no-op without a process group)."""
    if _group_ready():
        dist.barrier()
