"""Every bad input a user can hand updp, in one table: the exit code, a one-line message naming the
problem, nothing partial or replaced left behind, and nothing hostile run.

Each row builds its files in a fresh folder and calls the CLI in-process. After the call:

* the exit code is the documented one (2 bad input, 3 unsupported, 4 verification failed);
* stderr is one line, `updp <command>: error: ...`, holding the row's fragment;
* the folder holds exactly the files it held before, each with the same bytes (no partial output,
  no temporary file, no replaced input), except what the row says it may create;
* a hostile file's payload never ran (it would create a marker file).
"""

from __future__ import annotations

import ast
import hashlib
import os
import pickle
import signal
import stat
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from updp.cli import main

ROOT = Path(__file__).resolve().parents[1]
MARKER = "PWNED"  # what a hostile payload would create in the row's folder


# ---------------------------------------------------------------- files the rows use

def tiny_model(batch: int | str = 1) -> onnx.ModelProto:
    """Conv -> BatchNormalization on a 1x3x8x8 input (batch symbolic when `batch` is a name)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")] + [
        numpy_helper.from_array(v.astype(np.float32), n) for n, v in
        [("g", rng.uniform(0.5, 2, 4)), ("b", rng.standard_normal(4)), ("m", rng.standard_normal(4)),
         ("v", rng.uniform(0.5, 2, 4))]]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], name="bn")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def write_model(d: Path, name: str = "m.onnx", **kw) -> Path:
    onnx.save(tiny_model(**kw), str(d / name))
    return d / name


def batch_baked_in_model(d: Path) -> Path:
    """A (1, 1, 4) token concatenated to a batch-1 input: its batch cannot be made symbolic, and it is
    not updp's export, so there is nothing to export again."""
    token = numpy_helper.from_array(np.ones((1, 1, 4), np.float32), "token")
    graph = helper.make_graph([helper.make_node("Concat", ["token", "x"], ["y"], axis=1)], "tok",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4])], [token])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(d / "tok.onnx"))
    return d / "tok.onnx"


def external_model(d: Path, location: str) -> Path:
    """The tiny model with its weight `w` declared as external data at `location`."""
    m = tiny_model()
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", location
    onnx.save(m, str(d / "ext.onnx"))
    return d / "ext.onnx"


class Hostile:
    """A pickle that runs code when loaded: it would create the marker file."""

    def __init__(self, folder: Path) -> None:
        self.target = str(folder / MARKER)

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def small_state_dict() -> dict[str, torch.Tensor]:
    from updp.models import create_model

    module, _ = create_model("mobilenetv2_035", num_classes=10)
    return module.state_dict()


def cifar_folder(d: Path, hostile: bool = False) -> Path:
    root = d / "c10"
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": np.zeros((10, 3072), np.uint8), b"labels": list(range(10))}
        if hostile and name == "data_batch_1":
            batch = {b"data": Hostile(d), b"labels": list(range(10))}
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


def image_folder(d: Path) -> Path:
    """train/ and val/ with two classes of PNGs, and one corrupt JPEG among the training images."""
    from PIL import Image

    root = d / "imgs"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / split / cls / f"{i}.png")
    good = (root / "train" / "a" / "0.png").read_bytes()
    (root / "train" / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + good[:40])
    return root


def bomb_folder(d: Path) -> Path:
    """image_folder, with a 20000 x 20000 PNG header among the val images: PIL refuses to open an
    image past its pixel limit (a decompression bomb) with an error of its own type."""
    root = image_folder(d)
    (root / "train" / "a" / "broken.jpg").unlink()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 1, 0, 0, 0, 0))
    (root / "val" / "a" / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IEND", b""))
    return root


def classifier(d: Path, *, channels: int = 3, second_input: bool = False, logits_4d: bool = False,
               name: str = "clf.onnx") -> Path:
    """An 8x8 image classifier of 10 classes (a Conv over the whole image), with what `updp eval`
    cannot measure when asked: another channel count, a second input, [N, 10, 1, 1] logits."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((10, channels, 8, 8)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"])]
    if logits_4d:
        nodes[0].output[0] = "y"
    else:
        nodes.append(helper.make_node("Flatten", ["c"], ["y" if not second_input else "f"]))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 8, 8])]
    if second_input:
        nodes.append(helper.make_node("Add", ["f", "z"], ["y"]))
        inputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1]))
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10, 1, 1] if logits_4d else [1, 10])
    graph = helper.make_graph(nodes, "clf", inputs, [out], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(d / name))
    return d / name


def tiny_folder(d: Path, per_class: int = 3) -> Path:
    """train/ and val/ of two classes with `per_class` PNGs each: too few for a holdout split."""
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            (d / "tiny" / split / cls).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(np.full((8, 8, 3), 60 * i, np.uint8)).save(d / "tiny" / split / cls / f"{i}.png")
    return d / "tiny"


def folder_of_classes(d: Path, train: list[str], val: list[str]) -> Path:
    """An image folder with one PNG per class, the given class folders in train/ and val/."""
    from PIL import Image

    for split, classes in (("train", train), ("val", val)):
        for cls in classes:
            (d / "cls" / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(d / "cls" / split / cls / "0.png")
    return d / "cls"


def mount_tmpfs(where: Path, options: str) -> bool:
    """A small tmpfs (root on Linux only): the real read-only and full-disk errors, not mocks."""
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    return proc.returncode == 0


def unmount(where: Path) -> None:
    subprocess.run(["umount", str(where)], capture_output=True)


# ---------------------------------------------------------------- the table

@dataclass
class Case:
    """argv(folder) -> the command line; it builds the files it needs in `folder`."""

    id: str
    argv: Callable[[Path], list[str]]
    code: int
    fragment: str
    may_create: tuple[str, ...] = ()
    marks: list = field(default_factory=list)


def model_with_data_file(d: Path) -> Path:
    """The tiny model saved with every tensor in the external-data file `m.onnx.data` beside it."""
    onnx.save_model(tiny_model(), str(d / "m.onnx"), save_as_external_data=True, location="m.onnx.data",
                    size_threshold=0)
    return d / "m.onnx"


def _optimize(src: Callable[[Path], Path], out: str | Callable[[Path], str] = "out.onnx", *extra: str):
    def argv(d: Path) -> list[str]:
        target = out(d) if callable(out) else str(d / out) if out else ""
        return ["optimize", str(src(d)), "--out", target, *extra]
    return argv


def _bytes(data: bytes, name: str = "m.onnx") -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        (d / name).write_bytes(data)
        return d / name
    return make


def _fifo(d: Path) -> str:
    os.mkfifo(d / "pipe")
    return str(d / "pipe")


def _device(d: Path) -> str:
    os.mknod(d / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    return str(d / "null")


def _export_ck(make: Callable[[Path], Path]):
    def argv(d: Path) -> list[str]:
        return ["export", "--checkpoint", str(make(d)), "mobilenetv2_035", "--num-classes", "10", "--input-size",
                "32", "--out", str(d / "o.onnx")]
    return argv


def _ck_text(d: Path) -> Path:
    (d / "c.pt").write_text("not a checkpoint\n")
    return d / "c.pt"


def _ck_hostile(d: Path) -> Path:
    torch.save({"model": Hostile(d)}, d / "c.pt")
    return d / "c.pt"


def _ck_nan(d: Path) -> Path:
    sd = small_state_dict()
    sd["classifier.weight"][0, 0] = float("nan")
    torch.save(sd, d / "c.pt")
    return d / "c.pt"


def _ck_lists(d: Path) -> Path:
    torch.save({k: v.tolist() for k, v in small_state_dict().items()}, d / "c.pt")
    return d / "c.pt"


def _ck_spec(**broken):
    """A checkpoint of updp (weights and model_spec) with one field of its model_spec broken."""
    def make(d: Path) -> Path:
        spec = {"model": "timm:mobilenetv2_035", "kwargs": {}, "num_classes": 10, "input_size": [3, 32, 32], **broken}
        torch.save({"format": 1, "model": small_state_dict(), "model_spec": spec}, d / "c.pt")
        return d / "c.pt"
    return make


def _ck_format_99(d: Path) -> Path:
    torch.save({"format": 99, "model": small_state_dict()}, d / "c.pt")
    return d / "c.pt"


def _ck_two_classes(d: Path) -> Path:
    """A checkpoint of updp of a 2-class mobilenetv2_035 at 32 px (random weights)."""
    from updp.models import create_model

    module, _ = create_model("mobilenetv2_035", num_classes=2)
    spec = {"model": "timm:mobilenetv2_035", "kwargs": {}, "num_classes": 2, "input_size": [3, 32, 32]}
    torch.save({"format": 1, "model": module.state_dict(), "model_spec": spec}, d / "two.pt")
    return d / "two.pt"


def _ck_two_named_classes(names: list[str]):
    """`_ck_two_classes` recording the class names it was trained on."""
    def make(d: Path) -> Path:
        path = _ck_two_classes(d)
        ck = torch.load(path, weights_only=True)
        ck["model_spec"]["class_names"] = names
        torch.save(ck, path)
        return path
    return make


def _named_classifier(d: Path) -> Path:
    """`classifier` exported by updp from a model of the ten classes a..j."""
    from updp.exporter.torch_export import set_metadata

    path = classifier(d)
    model = onnx.load(str(path))
    set_metadata(model, {"updp.class_names": list("abcdefghij")})
    onnx.save(model, str(path))
    return path


def _gather_model(d: Path) -> Path:
    """Rows of a constant table picked by an index input: an index past the table's end is an input
    that neither ONNX Runtime nor onnx's reference evaluator runs."""
    table = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "table")
    graph = helper.make_graph([helper.make_node("Gather", ["table", "i"], ["y"])], "g",
                              [helper.make_tensor_value_info("i", TensorProto.INT64, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [table])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(d / "g.onnx"))
    return d / "g.onnx"


def _ck_truncated(d: Path) -> Path:
    torch.save(small_state_dict(), d / "full.pt")
    (d / "c.pt").write_bytes((d / "full.pt").read_bytes()[:5000])
    return d / "c.pt"


def _ck_wrong_model(d: Path) -> Path:
    from updp.models import create_model

    torch.save(create_model("resnet18", num_classes=10)[0].state_dict(), d / "c.pt")
    return d / "c.pt"


def _train(data: str | Callable[[Path], str], *extra: str, out: str | Callable[[Path], str] = "t.pt"):
    def argv(d: Path) -> list[str]:
        spec = data(d) if callable(data) else data
        target = out(d) if callable(out) else str(d / out)
        return ["train", "resnet18", "--data", spec, "--input-size", "32", "--epochs", "1",
                "--max-steps-per-epoch", "2", "--batch-size", "8", "--out", target, "--no-progress", *extra]
    return argv


def _npz(d: Path, **arrays) -> str:
    np.savez(d / "in.npz", **arrays)
    return str(d / "in.npz")


def _pb_folder(d: Path, name: str, data: bytes) -> str:
    (d / "pb").mkdir()
    (d / "pb" / name).write_bytes(data)
    return str(d / "pb")


def _yaml_config(d: Path) -> list[str]:
    (d / "run.yaml").write_text(f"model: !!python/object/apply:os.system ['touch {d / MARKER}']\n")
    return ["run", "--config", str(d / "run.yaml"), "--out", str(d / "r")]


def _under_file(d: Path) -> str:
    (d / "f.txt").write_text("x")
    return str(d / "f.txt" / "out.onnx")


CASES = [
    # ONNX files (the input)
    Case("onnx-garbage", _optimize(_bytes(b"\x08garbage\xff" * 9)), 2, "as an ONNX model"),
    Case("onnx-truncated", _optimize(_bytes(tiny_model().SerializeToString()[:150])), 2, "m.onnx"),
    Case("onnx-empty", _optimize(_bytes(b"")), 2, "holds no ONNX graph"),
    Case("onnx-missing", _optimize(lambda d: d / "nope.onnx"), 2, "not found"),
    Case("onnx-directory", _optimize(lambda d: d), 2, "is a directory"),
    Case("onnx-external-dotdot", _optimize(lambda d: external_model(d, "../../etc/passwd")), 2,
         "outside the directory"),
    Case("onnx-external-absolute", _optimize(lambda d: external_model(d, "/etc/passwd")), 2, "absolute path"),
    Case("onnx-external-symlink", _optimize(lambda d: (os.symlink("/etc/passwd", d / "w.bin"),
                                                       external_model(d, "w.bin"))[1]), 2, "symbolic link"),
    Case("onnx-external-missing", _optimize(lambda d: external_model(d, "gone.bin")), 2, "gone.bin"),
    # outputs
    Case("out-is-input", _optimize(write_model, lambda d: str(d / "m.onnx")), 2, "is the input"),
    Case("out-is-input-data", _optimize(model_with_data_file, lambda d: str(d / "m.onnx.data")), 2,
         "holds the external data of the input"),
    Case("bench-save-is-input-data", lambda d: ["bench", str(model_with_data_file(d)), "--repeats", "2", "--warmup",
                                                "0", "--save", str(d / "m.onnx.data")], 2,
         "holds the external data of the input"),
    Case("out-is-directory", _optimize(write_model, lambda d: str(d)), 2, "is a directory"),
    Case("out-is-fifo", _optimize(write_model, _fifo), 2, "not a regular file"),
    Case("out-is-device", _optimize(write_model, _device), 2, "not a regular file",
         marks=[pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")]),
    Case("out-under-a-file", _optimize(write_model, _under_file), 2, "is a file, not a folder"),
    Case("out-empty", _optimize(write_model, ""), 2, "output path is empty"),
    Case("bench-save-directory", lambda d: ["bench", str(write_model(d)), "--repeats", "2", "--warmup", "0",
                                            "--save", str(d)], 2, "is a directory"),
    Case("export-out-fifo", lambda d: ["export", "resnet18", "--input-size", "32", "--out", _fifo(d)], 2,
         "not a regular file"),
    Case("train-out-under-a-file", _train("digits", out=_under_file), 2, "is a file, not a folder"),
    Case("train-out-is-checkpoint", lambda d: _train("digits", "--checkpoint", str(_ck_wrong_model(d)),
                                                     out=lambda d: str(d / "c.pt"))(d), 2, "is the input"),
    Case("prune-out-is-directory", lambda d: ["prune", "--checkpoint", str(_ck_wrong_model(d)), "--data", "digits",
                                              "--prune", "1", "--out", str(d)], 2, "is a directory"),
    Case("prune-out-is-plan", lambda d: ["prune", "--checkpoint", str(_ck_wrong_model(d)), "--data", "digits",
                                         "--plan", str(_bytes(b"{}", "p.json")(d)), "--out", str(d / "p.json")], 2,
         "is the input"),
    Case("search-side-file-unwritable", lambda d: ["search", str(_ck_wrong_model(d)), "--data", "digits", "--out",
                                                   str(d / "plan.json"), "--lut", str(d / "missing.lut.json"),
                                                   "--supernet", _fifo(d)], 2, "not a regular file"),
    Case("prune-plain-state-dict", lambda d: ["prune", "--checkpoint", str(_ck_wrong_model(d)), "--model", "resnet18",
                                              "--data", "digits", "--prune", "1", "--out", str(d / "p.pt")], 2,
         "is a plain state dict (it records no model, input size or class count): import it first"),
    Case("run-model-without-prunable-blocks", lambda d: ["run", "--model", "efficientnet_b0", "--data", "digits",
                                                         "--out", str(d / "r")], 2,
         "efficientnet_b0 has no block updp can prune"),
    Case("run-blocks-not-prunable", lambda d: ["run", "--model", "convnext_atto", "--blocks", "0,99", "--data",
                                               "digits", "--out", str(d / "r")], 2,
         "search.blocks [99]: not prunable blocks of convnext_atto"),
    Case("search-empty-holdout", lambda d: ["search", str(_ck_two_classes(d)), "--data",
                                            f"imagefolder:{tiny_folder(d, 1)}", "--out", str(d / "plan.json")], 2,
         "the holdout split of imagefolder:"),
    Case("run-dir-is-a-file", lambda d: ["run", "--out", (d / "f.txt").write_text("x") and str(d / "f.txt")], 2,
         "not a folder"),
    # checkpoints
    Case("checkpoint-text", _export_ck(_ck_text), 2, "not a PyTorch checkpoint"),
    Case("checkpoint-hostile", _export_ck(_ck_hostile), 2, "refused: it holds Python objects"),
    Case("checkpoint-nan", _export_ck(_ck_nan), 2, "'classifier.weight' holds 1 NaN"),
    Case("checkpoint-truncated", _export_ck(_ck_truncated), 2, "truncated or corrupt"),
    Case("checkpoint-newer-format", _export_ck(_ck_format_99), 2, "checkpoint format 99, written by a newer updp"),
    Case("checkpoint-lists-not-tensors", _export_ck(_ck_lists), 2, "holds a list, not a tensor"),
    Case("checkpoint-spec-size", lambda d: ["export", "--checkpoint", str(_ck_spec(input_size=["a", "b", "c"])(d)),
                                            "--out", str(d / "o.onnx")], 2, "is not three positive integers"),
    Case("checkpoint-spec-model", lambda d: ["eval", str(_ck_spec(model=123)(d)), "--data", "digits"], 2,
         "model_spec's model is 123"),
    Case("checkpoint-spec-kwargs", lambda d: ["eval", str(_ck_spec(kwargs=[1, 2])(d)), "--data", "digits"], 2,
         "are not a table of constructor arguments"),
    Case("checkpoint-spec-classes", lambda d: ["eval", str(_ck_spec(num_classes="two")(d)), "--data", "digits"], 2,
         "num_classes 'two' is not a positive integer"),
    Case("checkpoint-spec-class-names", lambda d: ["eval", str(_ck_spec(num_classes=2, class_names=["a"])(d)), "--data",
                                                   "digits"], 2, "class_names are not 2 class names"),
    Case("checkpoint-missing", _export_ck(lambda d: d / "none.pt"), 2, "checkpoint not found"),
    # a model scored, pruned or taken as a baseline on classes other than those it was trained on
    Case("eval-checkpoint-of-other-classes", lambda d: ["eval", str(_ck_two_named_classes(["cat", "dog"])(d)),
                                                        "--data", f"imagefolder:{tiny_folder(d)}"], 2,
         "only the model's: cat, dog; only the data's: a, b"),
    Case("eval-checkpoint-classes-in-another-order", lambda d: [
        "eval", str(_ck_two_named_classes(["b", "a"])(d)), "--data", f"imagefolder:{tiny_folder(d)}"], 2,
         "the same names in another label order"),
    Case("eval-onnx-of-other-classes", lambda d: ["eval", str(_named_classifier(d)), "--data", "digits"], 2,
         "only the model's: a, b, c, d, e, f, g, h and 2 more; only the data's: 0, 1"),
    Case("prune-checkpoint-of-other-classes", lambda d: [
        "prune", "--checkpoint", str(_ck_two_named_classes(["cat", "dog"])(d)), "--data",
        f"imagefolder:{tiny_folder(d)}", "--blocks", "1", "--out", str(d / "p.pt")], 2, "only the model's: cat, dog"),
    Case("train-takes-a-checkpoint-of-other-classes-as-is", lambda d: [
        "train", "mobilenetv2_035", "--checkpoint", str(_ck_two_named_classes(["cat", "dog"])(d)), "--epochs", "0",
        "--data", f"imagefolder:{tiny_folder(d)}", "--out", str(d / "b.pt")], 2, "only the model's: cat, dog"),
    Case("checkpoint-wrong-model", _export_ck(_ck_wrong_model), 2, "c.pt"),
    # data
    Case("data-unknown", _train("imagenet"), 2, "unknown --data"),
    Case("data-folder-missing", _train(lambda d: f"imagefolder:{d / 'none'}"), 2, "directory not found"),
    Case("data-corrupt-image", _train(lambda d: f"imagefolder:{image_folder(d)}"), 2, "broken.jpg"),
    Case("train-out-replaces-a-cifar-batch", lambda d: _train(f"cifar10:{cifar_folder(d)}",
                                                              out=str(d / "c10" / "test_batch"))(d), 2,
         "test_batch is a file of the dataset"),
    Case("run-dir-inside-the-image-folder", lambda d: ["run", "--data", f"imagefolder:{tiny_folder(d)}", "--out",
                                                       str(d / "tiny" / "train" / "run")], 2,
         "train, which holds the dataset's images"),
    Case("data-classes-differ-after-the-fifth", _train(lambda d: "imagefolder:" + str(folder_of_classes(
        d, list("abcdefg"), [*"abcdef", "h"]))), 2, "only in train/: ['g'], only in val/: ['h']"),
    Case("data-one-class", _train(lambda d: "imagefolder:" + str(folder_of_classes(d, ["a"], ["a"]))), 2,
         "has one class (a): a classifier needs at least two"),
    Case("data-decompression-bomb", _train(lambda d: f"imagefolder:{bomb_folder(d)}"), 2,
         "huge.png: Image size (400000000 pixels) exceeds limit"),
    Case("data-cifar-hostile", _train(lambda d: f"cifar10:{cifar_folder(d, hostile=True)}"), 2,
         "refused to load posix.system"),
    Case("data-cifar-missing-batches", _train(lambda d: (d / "c").mkdir() or f"cifar10:{d / 'c'}"), 2,
         "lacks data_batch_1"),
    Case("data-diverges", _train("digits", "--lr", "1e30", "--warmup-epochs", "0"), 2, "training diverged"),
    # eval of a file that is not a classifier updp can feed, or of a split with nothing in it
    Case("eval-two-inputs", lambda d: ["eval", str(classifier(d, second_input=True)), "--data", "digits"], 2,
         "takes 2 inputs (x, z)"),
    Case("eval-one-channel", lambda d: ["eval", str(classifier(d, channels=1)), "--data", "digits"], 2,
         "takes 1-channel images, the data is served with 3 channels"),
    Case("eval-4d-logits", lambda d: ["eval", str(classifier(d, logits_4d=True)), "--data", "digits"], 2,
         "has shape [1, 10, 1, 1]; accuracy needs logits [N, classes]"),
    Case("eval-empty-split", lambda d: ["eval", str(classifier(d)), "--data", f"imagefolder:{tiny_folder(d, 1)}",
                                        "--split", "holdout"], 2, "the holdout split of imagefolder:"),
    Case("eval-upper-case-onnx", lambda d: ["eval", str(classifier(d, second_input=True, name="CLF.ONNX")), "--data",
                                            "digits"], 2, "takes 2 inputs"),
    # verification inputs and configs
    Case("inputs-pickled-npz", lambda d: _optimize(write_model, "o.onnx", "--inputs", _npz(
        d, x=np.array([{"a": 1}], dtype=object)))(d), 2, "cannot read inputs"),
    Case("inputs-batch-0", lambda d: _optimize(lambda d: write_model(d, batch="N"), "o.onnx", "--inputs", _npz(
        d, x=np.zeros((0, 3, 8, 8), np.float32)))(d), 2, "no elements"),
    Case("inputs-wrong-names", lambda d: _optimize(write_model, "o.onnx", "--inputs", _npz(
        d, y=np.zeros((1, 3, 8, 8), np.float32)))(d), 2, "the model takes ['x']"),
    Case("inputs-wrong-shape", lambda d: _optimize(write_model, "o.onnx", "--inputs", _npz(
        d, x=np.zeros((1, 3, 9, 9), np.float32)))(d), 2, "'x' has shape [1, 3, 9, 9], the model takes [1, 3, 8, 8]"),
    Case("inputs-wrong-rank", lambda d: _optimize(lambda d: write_model(d, batch="N"), "o.onnx", "--inputs", _npz(
        d, x=np.zeros((3, 8, 8), np.float32)))(d), 2, "the model takes ['N', 3, 8, 8]"),
    Case("inputs-wrong-dtype", lambda d: _optimize(write_model, "o.onnx", "--inputs", _npz(
        d, x=np.zeros((1, 3, 8, 8), np.float64)))(d), 2, "'x' is float64, the model takes float32"),
    Case("inputs-pb-misnamed", lambda d: _optimize(write_model, "o.onnx", "--inputs", _pb_folder(
        d, "input_x.pb", numpy_helper.from_array(np.zeros((1, 3, 8, 8), np.float32)).SerializeToString()))(d), 2,
         "input_x.pb is not named input_<k>.pb"),
    Case("inputs-pb-undefined-type", lambda d: _optimize(write_model, "o.onnx", "--inputs", _pb_folder(
        d, "input_0.pb", bytes.fromhex("0a03616263")))(d), 2, "input_0.pb: not a TensorProto onnx can read"),
    Case("inputs-no-runtime-runs-them", lambda d: _optimize(_gather_model, "o.onnx", "--inputs", _npz(
        d, i=np.array([100, 0], np.int64)))(d), 3, "neither runtime runs it on the inputs given"),
    Case("run-config-yaml-python-tag", _yaml_config, 2, "run.yaml"),
    # the command line
    Case("model-unknown", lambda d: ["export", "no_such_net", "--out", str(d / "o.onnx")], 2, "no_such_net"),
    Case("bench-batch-baked-into-the-graph",
         lambda d: ["bench", str(batch_baked_in_model(d)), "--batch", "4", "--repeats", "2"], 2, "--dynamic-batch"),
    Case("bench-repeats-0", lambda d: ["bench", str(write_model(d)), "--repeats", "0"], 2, "repeats >= 1"),
]


def _snapshot(folder: Path) -> dict[str, str]:
    """{relative path: sha256 or a kind} of everything in the folder (FIFOs and devices not read)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        mode = os.lstat(p).st_mode
        if stat.S_ISREG(mode):
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[str(p.relative_to(folder))] = stat.filemode(mode)[0]
    return out


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(case: Case, tmp_path, capsys):
    argv = case.argv(tmp_path)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert code == case.code, err
    assert len(lines) == 1 and lines[0].startswith(f"updp {argv[0]}: error: "), err
    assert case.fragment in lines[0], lines[0]
    assert "weights_only" not in lines[0] and "Traceback" not in err
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k not in case.may_create} == before
    assert not (tmp_path / MARKER).exists(), "a hostile payload ran"


# ---------------------------------------------------------------- what a table cannot say


def test_usage_errors_are_one_line_with_a_hint():
    proc = subprocess.run([sys.executable, "-m", "updp", "optimize", "m.onnx"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "updp optimize: error: the following arguments are required: --out (see updp optimize --help)"]


@pytest.mark.parametrize("flag", ["-v", "-q", "--verbose", "--quiet"])
def test_verbosity_flags_work_after_the_subcommand(tmp_path, capsys, flag):
    code = main(["optimize", str(tmp_path / "none.onnx"), "--out", str(tmp_path / "o.onnx"), flag])
    assert code == 2 and "not found" in capsys.readouterr().err


def test_verbose_after_the_subcommand_shows_the_traceback_of_a_bug(tmp_path, monkeypatch):
    import updp.workflows.optimize as optimizing

    def broken(*a, **kw):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(optimizing, "optimize_file", broken)
    src = write_model(tmp_path)
    assert main(["optimize", str(src), "--out", str(tmp_path / "o.onnx")]) == 1
    with pytest.raises(ZeroDivisionError):
        main(["optimize", str(src), "--out", str(tmp_path / "o.onnx"), "-v"])


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_outputs_get_the_umask_permissions(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        assert main(["optimize", str(write_model(tmp_path)), "--out", str(tmp_path / "o.onnx")]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "o.onnx").st_mode) == mode


def test_a_fifo_output_stays_a_fifo(tmp_path):
    fifo = _fifo(tmp_path)
    assert main(["optimize", str(write_model(tmp_path)), "--out", fifo]) == 2
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


@pytest.fixture
def tmpfs(tmp_path):
    """mount_tmpfs(options) -> the mount point (skipped where mounting is not allowed)."""
    mounted = []

    def make(options: str) -> Path:
        where = tmp_path / f"mnt{len(mounted)}"
        if not mount_tmpfs(where, options):
            pytest.skip("mounting a tmpfs needs root")
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        unmount(where)


def test_a_read_only_folder_is_found_before_training(tmpfs, capsys):
    ro = tmpfs("ro,size=1m")
    t0 = time.perf_counter()
    code = main(_train("digits", out=lambda d: str(ro / "t.pt"))(ro))
    assert code == 2 and "read-only file system" in capsys.readouterr().err
    assert time.perf_counter() - t0 < 30  # refused before the data is loaded and an epoch is run


def test_a_full_disk_is_exit_2_with_nothing_left(tmpfs, tmp_path, capsys):
    full = tmpfs("size=64k")
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((1000, 200)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1000])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 200])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10),
              str(tmp_path / "big.onnx"))  # 800 kB of weights: more than the 64 kB file system holds
    code = main(["optimize", str(tmp_path / "big.onnx"), "--out", str(full / "o.onnx"), "--no-onnxsim"])
    err = capsys.readouterr().err
    assert code == 2 and "No space left on device" in err and "o.onnx" in err, err
    assert list(full.iterdir()) == []


def test_a_full_disk_while_writing_a_checkpoint_is_exit_2(tmpfs, capsys):
    full = tmpfs("size=64k")
    code = main(_train("digits", out=lambda d: str(full / "t.pt"))(full))
    err = capsys.readouterr().err
    assert code == 2 and "cannot write" in err and "t.pt" in err, err
    assert list(full.iterdir()) == []


def _default_sigint() -> None:
    """The child's Ctrl-C acts even when the suite runs with SIGINT ignored (a background job of a
    non-interactive shell: `bash scripts/test.sh &`), which the child would otherwise inherit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigint_exits_130_and_leaves_no_partial_checkpoint(tmp_path):
    """Ctrl-C while training: after the first epoch's checkpoint is on disk, whatever the machine's speed."""
    proc = subprocess.Popen([sys.executable, "-m", "updp", "train", "resnet18", "--data", "digits", "--epochs", "50",
                             "--out", str(tmp_path / "t.pt"), "--no-progress"], cwd=ROOT, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, preexec_fn=_default_sigint)
    deadline = time.monotonic() + 300
    while not (tmp_path / "t.pt").exists():
        assert proc.poll() is None, f"the command ended before its first epoch: {proc.stderr.read()}"
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint after 300 s")
        time.sleep(0.2)
    proc.send_signal(2)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "updp train: interrupted"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.pt"]
    assert torch.load(tmp_path / "t.pt", weights_only=True)["epoch"] >= 1


def test_an_interrupt_that_passes_through_exec_of_source_text_still_exits_130(tmp_path):
    """The race behind a flaky SIGINT status, made deterministic: a Ctrl-C that lands while dataclasses
    (inside torch's import) builds methods with exec() must still give 130 and the one-line message.
    Run with -m like `python -m updp`, the start-up path on which CPython acts on its stale flag."""
    (tmp_path / "interrupted_entry.py").write_text(
        "import updp.cli as cli\n"
        "help_text, epilog, _ = cli.COMMANDS['train']\n"
        "cli.COMMANDS['train'] = (help_text, epilog, lambda args: exec('raise KeyboardInterrupt'))\n"
        "cli.console_main()\n")
    proc = subprocess.run([sys.executable, "-m", "interrupted_entry", "train", "resnet18", "--data", "digits",
                           "--out", str(tmp_path / "t.pt")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert (proc.returncode, proc.stderr.strip().splitlines()[-1]) == (130, "updp train: interrupted")


def test_no_loader_in_the_package_can_run_code():
    """The audit, kept true: every deserialization in updp is one that cannot run code.

    torch.load only with weights_only=True; np.load only with allow_pickle=False; YAML only through
    safe_load; pickle only through the CIFAR unpickler (its find_class allows numpy arrays alone);
    no eval or exec.
    """
    problems = []
    for path in sorted((ROOT / "updp").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            f = call.func
            name = f"{getattr(f.value, 'id', '')}.{f.attr}" if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            kw = {k.arg: getattr(k.value, "value", None) for k in call.keywords}
            where = f"{path.relative_to(ROOT)}:{call.lineno}"
            if name == "torch.load" and kw.get("weights_only") is not True:
                problems.append(f"{where} torch.load without weights_only=True")
            if name == "np.load" and kw.get("allow_pickle") is not False:
                problems.append(f"{where} np.load without allow_pickle=False")
            if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
                problems.append(f"{where} {name} (use yaml.safe_load)")
            if name in ("pickle.load", "pickle.loads", "eval", "exec", "marshal.loads"):
                problems.append(f"{where} {name}")
    assert problems == []
