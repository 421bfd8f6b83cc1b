"""The denormal mode: probed on this thread, flushed only around updp's torch compute, and off
while the ONNX passes fold constants."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
import torch

from updp.core.denormals import denormals_flushed, exact_denormals
from updp.training.device import fast_cpu_math

pytestmark = pytest.mark.usefixtures("denormal_flush")


def test_probe_reads_the_mode_torch_sets():
    assert not denormals_flushed()
    torch.set_flush_denormal(True)
    assert denormals_flushed()
    assert np.full(1, 1e-39, np.float32)[0] == 0  # what the probe stands for: numpy sees zeros
    torch.set_flush_denormal(False)
    assert not denormals_flushed()


@pytest.mark.parametrize("flushed_before", [False, True])
def test_fast_cpu_math_flushes_inside_and_restores_what_it_found(flushed_before):
    torch.set_flush_denormal(flushed_before)
    with fast_cpu_math():
        assert denormals_flushed()
        with fast_cpu_math():
            assert denormals_flushed()
        assert denormals_flushed(), "a nested block turned the flush off for the outer one"
    assert denormals_flushed() is flushed_before


def test_fast_cpu_math_restores_after_an_exception_and_as_a_decorator():
    @fast_cpu_math()
    def fails():
        assert denormals_flushed()
        raise ValueError("boom")

    with pytest.raises(ValueError):
        fails()
    assert not denormals_flushed()
    with pytest.raises(ValueError), fast_cpu_math():
        raise ValueError("boom")
    assert not denormals_flushed()


@pytest.mark.parametrize("flushed_before", [False, True])
def test_exact_denormals_is_exact_inside_and_restores_what_it_found(flushed_before):
    torch.set_flush_denormal(flushed_before)
    with exact_denormals():
        assert not denormals_flushed()
        assert np.full(1, 1e-39, np.float32)[0] > 0
    assert denormals_flushed() is flushed_before


def test_exact_denormals_without_torch_warns_and_runs_as_it_is(monkeypatch, caplog):
    """A flush set by a native library cannot be cleared without torch: said once, not hidden."""
    torch.set_flush_denormal(True)
    monkeypatch.setitem(sys.modules, "torch", None)
    with caplog.at_level(logging.WARNING, logger="updp.core.denormals"), exact_denormals():
        assert denormals_flushed()
    assert any("flushed to zero" in r.getMessage() for r in caplog.records)
