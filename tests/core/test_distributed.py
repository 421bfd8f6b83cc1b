"""The two views of "which rank am I": the launcher's environment, and the process group."""

from __future__ import annotations

import torch
import torch.distributed as dist

from updp.core.distributed import (
    all_reduce_sums,
    broadcast_from_main,
    group_info,
    init_process_group,
    is_main_process,
    launch_info,
    shutdown_process_group,
)


def test_outside_torchrun_everything_is_rank_zero_of_one(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert launch_info() == (0, 1, 0) and group_info() == (0, 1) and is_main_process()
    assert init_process_group(torch.device("cpu")) is False
    assert all_reduce_sums([1.0, 2.0], torch.device("cpu")) == [1.0, 2.0]
    assert broadcast_from_main({"a": 1}) == {"a": 1}


def test_the_launcher_view_reads_torchrun_env_before_the_group_exists(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launch_info() == (1, 2, 1) and not is_main_process()
    assert group_info() == (0, 1)  # no group: nothing may be sharded


def test_a_group_updp_initialized_is_destroyed_at_exit(monkeypatch):
    """Left to the interpreter, gloo's threads can abort a rank after its work is done."""
    registered = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: None)
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr("atexit.register", registered.append)
    assert init_process_group(torch.device("cpu")) is True
    assert registered == [shutdown_process_group]


def test_shutdown_destroys_a_real_group_and_is_idempotent():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    assert group_info() == (0, 1) and dist.is_initialized()
    shutdown_process_group()
    assert not dist.is_initialized()
    shutdown_process_group()
