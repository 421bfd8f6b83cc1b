"""Data-parallel training under torchrun on CPU (gloo): 2 processes, identical weights at the end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_process_cpu_training_keeps_replicas_identical(tmp_path):
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [*_torchrun(), "--standalone", "--nproc_per_node=2", "-m", "updp", "-v", "train", "timm:convnext_atto",
           "--model-kwarg", "dims=[16,32,48,64]",
           "--data", "digits", "--epochs", "1", "--batch-size", "16", "--max-steps-per-epoch", "3",
           "--out", str(out), "--no-progress", "--device", "cpu", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The Trainer all-gathers a sha256 of every rank's state dict and fails on a difference.
    assert "weights identical on 2 ranks" in proc.stderr
    assert "gloo" in proc.stderr
    ck = torch.load(out, weights_only=True)
    assert ck["world_size"] == 2 and ck["step"] == 3
    assert ck["metrics"]["val_n"] == 359  # sharded evaluation counts every val sample once
    shutil.rmtree(tmp_path, ignore_errors=True)
