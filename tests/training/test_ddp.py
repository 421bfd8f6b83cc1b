"""Data-parallel training under torchrun on CPU (gloo): 2 processes, identical weights at the end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from updp.cli import main


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


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_process_search_shards_scoring_and_agrees_with_one_process(tmp_path):
    """`updp search` under torchrun: DDP supernet, scoring sharded over the ranks (BN calibration
    pooled, holdout counts summed), latency by rank 0 alone. Re-scoring the same supernet in one
    process must pick the same blocks with the same holdout accuracies."""
    import json

    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    # A briefly trained baseline: at chance level, BN statistics would not move a single prediction
    # and the comparison below could not see a wrong pooling.
    # (In this process: only the search below needs torchrun, and a subprocess costs seconds of imports.)
    assert main(["-q", "train", "timm:convnext_atto", "--model-kwarg", "depths=[1,1,2,1]", "--model-kwarg",
                 "dims=[16,32,48,64]", "--data", "mnist5k", "--epochs", "1", "--max-steps-per-epoch", "25",
                 "--batch-size", "64", "--out", str(tmp_path / "base.pt"), "--device", "cpu", "--no-progress"]) == 0
    # mnist5k: its 400-image holdout is two batches of 256, so each rank scores a different one; tiny
    # calibration batches (3 of 4 images, split 2 + 1 over the ranks) make an unpooled calibration visible.
    common = ["search", str(tmp_path / "base.pt"), "--data", "mnist5k", "--target-blocks", "2",
              "--calib-batches", "3", "--batch-size", "4", "--random-picks", "2", "--device", "cpu", "--json"]
    cmd = [*_torchrun(), "--standalone", "--nproc_per_node=2", "-m", "updp", "-v", *common,
           "--epochs", "1", "--max-steps-per-epoch", "2", "--bench-repeats", "5", "--out", str(tmp_path / "p.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "scoring sharded over 2 ranks" in proc.stderr and "weights identical on 2 ranks" in proc.stderr
    dist_res = json.loads(proc.stdout)
    assert dist_res["measured_speedup"] > 0  # measured by rank 0, broadcast

    one = subprocess.run(
        [sys.executable, "-m", "updp", *common, "--epochs", "1", "--reuse-supernet", "--supernet",
         str(tmp_path / "p.supernet.pt"), "--lut", str(tmp_path / "p.lut.json"), "--no-measure",
         "--out", str(tmp_path / "p1.json")], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    one_res = json.loads(one.stdout)
    assert one_res["blocks"] == dist_res["blocks"]
    assert one_res["holdout_acc"] == dist_res["holdout_acc"]
    assert one_res["baseline_holdout_acc"] == dist_res["baseline_holdout_acc"]
    assert [p["acc"] for p in one_res["random_picks"]] == [p["acc"] for p in dist_res["random_picks"]]
    assert [c["acc"] for c in one_res["top"]] == [c["acc"] for c in dist_res["top"]]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_process_layerfold_folds_on_every_rank_together(tmp_path):
    """Layer-Folding under DDP: the α's are parameters like any other until they are forced to 1,
    then leave the forward (DDP must not wait for their gradients); the ranks stay identical."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    common = ["--data", "digits", "--batch-size", "16", "--no-progress", "--device", "cpu"]
    assert main(["-q", "train", "timm:convnext_atto", "--model-kwarg", "dims=[16,32,48,64]", "--epochs", "1",
                 "--max-steps-per-epoch", "3", "--out", str(tmp_path / "base.pt"), *common]) == 0
    cmd = [*_torchrun(), "--standalone", "--nproc_per_node=2", "-m", "updp", "-v", "prune", "--checkpoint",
           str(tmp_path / "base.pt"), "--blocks", "1,3", "--method", "layerfold", "--epochs", "2",
           "--max-steps-per-epoch", "4", "--out", str(tmp_path / "lf.pt"), *common]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("8 alphas forced to 1 at step 4") == 2  # each rank, at the same step
    assert "weights identical on 2 ranks" in proc.stderr
    ck = torch.load(tmp_path / "lf.pt", weights_only=True)
    assert ck["world_size"] == 2 and all(v.item() == 1.0 for k, v in ck["model"].items() if k.endswith(".alpha"))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
@pytest.mark.parametrize("method", ["updp", "abrupt", "drop"])
def test_two_process_prune_of_every_method(tmp_path, method):
    """`updp prune` under torchrun with each method that Layer-Folding's test does not cover. The
    blends skip a branch at λ = 0 (the new BatchNorms) and at λ = 1 (the LayerNorms), a dropped
    block leaves the forward, and DDP must not wait for gradients that never come (it raised
    "Expected to have finished reduction in the prior iteration" at the second step)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    common = ["--data", "digits", "--batch-size", "16", "--no-progress", "--device", "cpu"]
    assert main(["-q", "train", "timm:convnext_atto", "--model-kwarg", "dims=[16,32,48,64]", "--epochs", "1",
                 "--max-steps-per-epoch", "3", "--out", str(tmp_path / "base.pt"), *common]) == 0
    cmd = [*_torchrun(), "--standalone", "--nproc_per_node=2", "-m", "updp", "-v", "prune", "--checkpoint",
           str(tmp_path / "base.pt"), "--blocks", "1,3", "--method", method, "--epochs", "1",
           "--max-steps-per-epoch", "4", "--out", str(tmp_path / "p.pt"), *common]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "weights identical on 2 ranks" in proc.stderr
    ck = torch.load(tmp_path / "p.pt", weights_only=True)
    assert ck["world_size"] == 2 and ck["step"] == 4 and ck["plan"]["blocks"] == [1, 3]
