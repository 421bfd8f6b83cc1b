"""Fixtures shared by every test folder."""

from __future__ import annotations

import pytest

from updp.training.trainer import TrainerConfig

# A training recipe for tests: the workflows own the real defaults (updp.workflows.config).
TEST_RECIPE = {"batch_size": 32, "lr": 2e-3, "weight_decay": 0.05, "warmup_epochs": 0.0, "label_smoothing": 0.1}


@pytest.fixture
def trainer_config():
    """`trainer_config(epochs=2, ...)`: a `TrainerConfig` with a small test recipe filled in."""

    def make(**kw) -> TrainerConfig:
        return TrainerConfig(**{"epochs": 1, "progress": False, **TEST_RECIPE, **kw})

    return make
