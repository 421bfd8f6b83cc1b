"""Fixtures shared by every test folder."""

from __future__ import annotations

import io
import warnings

import onnx
import pytest
import torch
from torch import nn

from updp.training.trainer import TrainerConfig

# A training recipe for tests: the workflows own the real defaults (updp.workflows.config).
TEST_RECIPE = {"batch_size": 32, "lr": 2e-3, "weight_decay": 0.05, "warmup_epochs": 0.0, "label_smoothing": 0.1}


@pytest.fixture
def trainer_config():
    """`trainer_config(epochs=2, ...)`: a `TrainerConfig` with a small test recipe filled in."""

    def make(**kw) -> TrainerConfig:
        return TrainerConfig(**{"epochs": 1, "progress": False, **TEST_RECIPE, **kw})

    return make


def _torchscript_export(model: nn.Module, size: int) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), torch.randn(1, 3, size, size), buf, dynamo=False, opset_version=18)
    return onnx.load_from_string(buf.getvalue())


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(self.act(self.conv1(x)))


class TinyNet(nn.Module):
    """stem, blocks.0-2 (Sequential), nested layer.0.0 (Sequential of Sequential), head."""

    def __init__(self, c=16):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.Sequential(*(Block(c) for _ in range(3)))
        self.layer = nn.Sequential(nn.Sequential(Block(c)))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))

    def forward(self, x):
        return self.head(self.layer(self.blocks(self.stem(x))))


TINY_BLOCKS = ["blocks.0", "blocks.1", "blocks.2", "layer.0.0"]


@pytest.fixture(scope="session")
def torchscript_export():
    """`torchscript_export(module, size)`: the TorchScript ONNX export at (1, 3, size, size), whose
    node names carry the module scopes."""
    return _torchscript_export


@pytest.fixture(scope="session")
def tiny_scoped():
    """(ONNX model, block module paths) of a tiny net with flat and nested blocks."""
    torch.manual_seed(0)
    return _torchscript_export(TinyNet(), 16), TINY_BLOCKS


@pytest.fixture
def denormal_flush():
    """For tests of the denormal mode: skipped where the CPU cannot flush denormals; the mode is
    exact when the test starts and when it ends, whatever it asserts."""
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush denormals")
    yield
    torch.set_flush_denormal(False)
