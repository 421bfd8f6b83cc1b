"""The two views of "which rank am I": the launcher's environment, and the process group."""

from __future__ import annotations

import torch

from updp.core.distributed import (
    all_reduce_sums,
    broadcast_from_main,
    group_info,
    init_process_group,
    is_main_process,
    launch_info,
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
