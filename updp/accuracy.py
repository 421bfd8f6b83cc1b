"""Top-1 accuracy and cross-entropy of a classifier on a data split: of a torch module, and of an
ONNX file in ONNX Runtime.

One definition of the metric for both (argmax of the logits against the label; mean
cross-entropy without label smoothing), so that the accuracy of a checkpoint and of its export
are the same number when the export is right, and a difference means something.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from updp.core.distributed import all_reduce_sums, group_info
from updp.core.errors import InputError
from updp.models.fast_compute import fast_compute
from updp.ort import load_onnx, make_session


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def module_accuracy(model: nn.Module, dataset_or_loader: Dataset | DataLoader, *, batch_size: int = 256,
                    device: str | torch.device | None = None) -> dict:
    """Top-1 accuracy and mean cross-entropy of `model` in eval mode.

    Under an initialized process group with a Dataset (not a loader), each rank evaluates a
    disjoint shard (rank::world) and the sums are all-reduced: every sample counts exactly once.

    Returns:
        {"acc": float in [0, 1], "loss": float, "n": int}
    """
    dev = torch.device(device) if device is not None else _model_device(model)
    if isinstance(dataset_or_loader, DataLoader):
        loader = dataset_or_loader
    else:
        ds = dataset_or_loader
        rank, world = group_info()
        if world > 1:
            ds = torch.utils.data.Subset(ds, list(range(rank, len(ds), world)))
        loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)
    was_training = model.training
    model.eval()
    correct = loss_sum = 0.0
    n = 0
    try:
        with fast_compute(model):
            for x, y in loader:
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                logits = model(x)
                if isinstance(logits, (tuple, list)):
                    logits = logits[0]
                loss_sum += float(nn.functional.cross_entropy(logits.float(), y, reduction="sum"))
                correct += float((logits.argmax(dim=1) == y).sum())
                n += int(y.numel())
    finally:
        model.train(was_training)
    if not isinstance(dataset_or_loader, DataLoader):
        correct, loss_sum, n_f = all_reduce_sums([correct, loss_sum, float(n)], dev)
        n = int(round(n_f))
    return {"acc": correct / n if n else 0.0, "loss": loss_sum / n if n else 0.0, "n": n}


def onnx_accuracy(model: str | onnx.ModelProto, dataset: Dataset, *, batch_size: int = 256,
                  num_classes: int | None = None, threads: int | None = None) -> dict:
    """Accuracy of an ONNX classifier with ONNX Runtime (CPU, all graph optimizations).

    The file takes the same normalized NCHW tensor the torch model does (the data pipeline of
    `updp.data` is applied before). A static batch axis of size B is served B images at a time,
    the last chunk zero-padded and its extra outputs discarded; a symbolic batch axis gets
    `batch_size` images per run.

    Returns:
        {"acc", "loss", "n", "provider", "batch"}

    Raises:
        InputError: unreadable file, an input size or class count that does not fit the data.
    """
    where = model if isinstance(model, str) else "the ONNX model"
    proto = load_onnx(model) if isinstance(model, str) else model
    sess = make_session(proto, opt_level="all", threads=threads)
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise InputError(f"{where} takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)}): accuracy is "
                         "measured on a classifier of one NCHW image input")
    inp = inputs[0]
    shape = list(inp.shape)
    if len(shape) != 4:
        raise InputError(f"{where}: expected one NCHW image input, got input {inp.name} of shape {shape}")
    x0, _ = dataset[0]
    if isinstance(shape[1], int) and shape[1] != x0.shape[0]:
        raise InputError(f"{where} takes {shape[1]}-channel images, the data is served with {x0.shape[0]} channels "
                         "(updp serves every dataset as RGB)")
    for axis, want in zip(shape[2:], x0.shape[1:]):
        if isinstance(axis, int) and axis != want:
            raise InputError(f"{where} takes inputs {shape[1:]}, the data is served at {list(x0.shape)} "
                             "(pass the matching --input-size)")
    output = sess.get_outputs()[0]
    out_shape = output.shape
    if len(out_shape) != 2:
        raise InputError(f"{where}: its first output {output.name} has shape {out_shape}; accuracy needs logits "
                         "[N, classes]")
    if num_classes is not None and isinstance(out_shape[-1], int) and out_shape[-1] != num_classes:
        raise InputError(f"{where} predicts {out_shape[-1]} classes, the data has {num_classes}")
    # A float16 file with float16 inputs (`updp export --fp16`) gets the images in its own dtype.
    in_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    static = isinstance(shape[0], int)
    chunk = int(shape[0]) if static else batch_size
    loader = DataLoader(dataset, batch_size=chunk, shuffle=False, num_workers=0)
    correct = loss_sum = 0.0
    n = 0
    for x, y in loader:
        b = len(y)
        xn = x.numpy().astype(in_dtype)
        if static and b < chunk:
            xn = np.concatenate([xn, np.zeros((chunk - b, *xn.shape[1:]), in_dtype)])
        logits = torch.from_numpy(np.asarray(sess.run(None, {inp.name: xn})[0])[:b]).float()
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += float((logits.argmax(1) == y).sum())
        n += b
    return {"acc": correct / n if n else 0.0, "loss": loss_sum / n if n else 0.0, "n": n,
            "provider": sess.get_providers()[0], "batch": chunk if static else f"dynamic ({chunk} per run)"}


__all__ = ["module_accuracy", "onnx_accuracy"]
