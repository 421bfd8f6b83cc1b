"""Inputs to run a model on when checking it: the user's, or generated ones that are valid for the graph.

A verification is only as honest as its inputs. Random floats into a `Reshape`'s shape, 0/1 into
a `Resize`'s sizes or out-of-range `Gather` indices make ONNX Runtime raise (or, worse, test a
path the model never takes), so:

* **The user's inputs** come first: an `.npz` of arrays by input name, or a folder of ONNX test
  data (`input_0.pb`, ... as onnx's backend test cases store them, one folder or several
  `test_data_set_*` folders), `load_feeds`.
* **Generated inputs** (`generate_feeds`) are standard-normal floats, small positive integers, random
  bools and short strings, of every dtype ONNX has (float16/bfloat16 included), with the shapes the
  graph declares: a fixed 0-length dimension stays 0, a symbolic one takes one value per symbol
  (the batch for a leading one), so inputs that share a dimension agree. Sequence inputs get a
  sequence of two tensors, optional ones a tensor.
* **Shape-like inputs are never random.** An input that feeds a slot that decides a shape, an axis,
  a count or an index (a `Reshape`'s shape, `Slice`'s starts/ends/axes/steps, `Resize`'s scales and
  sizes, `Split`'s split, `Pad`'s pads, `Tile`'s repeats, `Dropout`'s ratio, `Gather`'s indices, ...)
  takes its value from the model when the model has one (an initializer of the same name: a
  default) and otherwise cannot be generated: `generate_feeds` raises `UnsupportedError` naming the
  input and the slot, and the user gives `--inputs`.
"""

from __future__ import annotations

import glob
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from updp.core.errors import InputError, UnsupportedError, first_line

DEFAULT_SYMBOLIC_DIM = 3  # a symbolic dimension that is not the leading (batch) one
# The most bytes one generated input may take: a declared shape past it (a broken file, a huge dim)
# is refused before numpy would try to fill it.
MAX_GENERATED_BYTES = 2**31

# Input slots (op type -> input positions) whose values decide shapes, axes, counts or indices.
SHAPE_LIKE_SLOTS: dict[str, dict[int, str]] = {
    "Reshape": {1: "shape"}, "Expand": {1: "shape"}, "ConstantOfShape": {0: "shape"}, "Tile": {1: "repeats"},
    "Slice": {1: "starts", 2: "ends", 3: "axes", 4: "steps"}, "Squeeze": {1: "axes"}, "Unsqueeze": {1: "axes"},
    "Split": {1: "split"}, "Resize": {1: "roi", 2: "scales", 3: "sizes"}, "Upsample": {1: "scales"},
    "Pad": {1: "pads", 3: "axes"}, "CumSum": {1: "axis"}, "Col2Im": {1: "image_shape", 2: "block_shape"},
    "Dropout": {1: "ratio", 2: "training_mode"}, "Range": {0: "start", 1: "limit", 2: "delta"},
    "OneHot": {1: "depth"}, "TopK": {1: "k"}, "Trilu": {1: "k"}, "Gather": {1: "indices"},
    "GatherElements": {1: "indices"}, "GatherND": {1: "indices"}, "ScatterElements": {1: "indices"},
    "ScatterND": {1: "indices"}, "Scatter": {1: "indices"}, "NonMaxSuppression": {2: "max_output_boxes_per_class"},
    "ReduceSum": {1: "axes"}, "ReduceMean": {1: "axes"}, "ReduceMax": {1: "axes"}, "ReduceMin": {1: "axes"},
    "ReduceProd": {1: "axes"}, "ReduceL1": {1: "axes"}, "ReduceL2": {1: "axes"}, "ReduceLogSum": {1: "axes"},
    "ReduceLogSumExp": {1: "axes"}, "ReduceSumSquare": {1: "axes"}, "Loop": {0: "trip count"},
    "CenterCropPad": {1: "shape"}, "DFT": {1: "dft_length", 2: "axis"}, "STFT": {1: "frame_step", 3: "frame_length"},
    "HannWindow": {0: "size"}, "HammingWindow": {0: "size"}, "BlackmanWindow": {0: "size"},
    "MelWeightMatrix": {0: "num_mel_bins", 1: "dft_length", 2: "sample_rate"},
    "RoiAlign": {2: "batch_indices"}, "MaxUnpool": {1: "indices", 2: "output_shape"},
    "SequenceAt": {1: "position"}, "SequenceInsert": {2: "position"}, "SequenceErase": {1: "position"},
    "SplitToSequence": {1: "split"}, "ReverseSequence": {1: "sequence_lens"},
}
# Ops whose output keeps the value of input 0 (a shape-like use seen through them is still one).
_PASS_THROUGH = ("Cast", "Identity", "CastLike")

_NUMPY_OF = {
    TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64, TensorProto.FLOAT16: np.float16,
    TensorProto.BFLOAT16: ml_dtypes.bfloat16, TensorProto.INT8: np.int8, TensorProto.INT16: np.int16,
    TensorProto.INT32: np.int32, TensorProto.INT64: np.int64, TensorProto.UINT8: np.uint8,
    TensorProto.UINT16: np.uint16, TensorProto.UINT32: np.uint32, TensorProto.UINT64: np.uint64,
    TensorProto.BOOL: np.bool_, TensorProto.STRING: np.object_,
}


@dataclass(frozen=True)
class InputSlot:
    """A graph input to feed.

    Attributes:
        name: the input's name.
        kind: 'tensor', 'sequence', 'optional' or 'map'.
        elem_type: the (element) tensor's `TensorProto` data type (0 when unknown).
        shape: the declared dims: ints (0 included), symbol names, or None where unknown; None when
            the rank is unknown.
    """

    name: str
    kind: str
    elem_type: int
    shape: tuple[int | str | None, ...] | None


def _tensor_slot(name: str, kind: str, tt: onnx.TypeProto.Tensor) -> InputSlot:
    shape = None
    if tt.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
    return InputSlot(name, kind, tt.elem_type, shape)


def _slot(vi: onnx.ValueInfoProto) -> InputSlot:
    t = vi.type
    which = t.WhichOneof("value")
    if which == "tensor_type":
        return _tensor_slot(vi.name, "tensor", t.tensor_type)
    if which == "sequence_type" and t.sequence_type.elem_type.HasField("tensor_type"):
        return _tensor_slot(vi.name, "sequence", t.sequence_type.elem_type.tensor_type)
    if which == "optional_type" and t.optional_type.elem_type.HasField("tensor_type"):
        return _tensor_slot(vi.name, "optional", t.optional_type.elem_type.tensor_type)
    return InputSlot(vi.name, "map" if which == "map_type" else str(which), 0, None)


def graph_inputs(model: onnx.ModelProto) -> list[InputSlot]:
    """The inputs a run must feed: graph inputs without an initializer of the same name (those
    have a default in the model)."""
    inits = {t.name for t in model.graph.initializer}
    return [_slot(vi) for vi in model.graph.input if vi.name not in inits]


def shape_like_uses(model: onnx.ModelProto) -> dict[str, list[str]]:
    """{input name: ["Reshape 'name' input 1 (shape)", ...]} for inputs feeding shape-like slots,
    directly or through Cast/Identity (main graph only)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    out: dict[str, list[str]] = {}
    for slot in graph_inputs(model):
        frontier, seen = [slot.name], set()
        while frontier:
            tensor = frontier.pop()
            if tensor in seen:
                continue
            seen.add(tensor)
            for n in consumers.get(tensor, []):
                positions = [k for k, i in enumerate(n.input) if i == tensor]
                if n.op_type in _PASS_THROUGH and 0 in positions:
                    frontier.extend(o for o in n.output if o)
                for k in positions:
                    what = SHAPE_LIKE_SLOTS.get(n.op_type, {}).get(k)
                    if what is not None:
                        out.setdefault(slot.name, []).append(f"{n.op_type} {n.name or '?'!r} input {k} ({what})")
    return out


def _dims(slot: InputSlot, batch: int, symbols: dict[str, int]) -> tuple[int, ...]:
    if slot.shape is None:
        raise UnsupportedError(f"input {slot.name!r} has no declared shape: valid inputs cannot be generated "
                               "(give them with --inputs F.npz)")
    dims = []
    for axis, d in enumerate(slot.shape):
        if isinstance(d, int) and d < 0:
            raise InputError(f"input {slot.name!r} declares a negative dimension {d} at axis {axis}")
        if isinstance(d, int):
            dims.append(d)  # 0 included: a fixed empty dimension stays empty
        elif d is None:
            dims.append(batch if axis == 0 else DEFAULT_SYMBOLIC_DIM)
        else:
            symbols.setdefault(d, batch if axis == 0 else DEFAULT_SYMBOLIC_DIM)
            dims.append(symbols[d])
    return tuple(dims)


def _values(elem_type: int, shape: tuple[int, ...], rng: np.random.Generator, name: str) -> np.ndarray:
    dtype = _NUMPY_OF.get(elem_type)
    if dtype is None:
        type_name = TensorProto.DataType.Name(elem_type) if elem_type in TensorProto.DataType.values() else \
            f"code {elem_type}"
        raise UnsupportedError(f"input {name!r} has data type {type_name}, for which "
                               "updp cannot generate values (give them with --inputs F.npz)")
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes > MAX_GENERATED_BYTES:
        raise UnsupportedError(f"input {name!r} of shape {list(shape)} would take {nbytes / 2**30:.3g} GiB, over the "
                               f"{MAX_GENERATED_BYTES / 2**30:g} GiB updp generates for an input (give smaller inputs "
                               "with --inputs F.npz)")
    if dtype is np.object_:
        return rng.choice(np.array(["a", "bc", "def", "updp"], dtype=object), size=shape)
    if dtype is np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(np.dtype(dtype), np.integer):
        return rng.integers(1, 5, size=shape).astype(dtype)  # small and nonzero: divisors, counts
    return rng.standard_normal(shape).astype(np.float32).astype(dtype)


def generate_feeds(model: onnx.ModelProto, *, batch: int = 1, trials: int = 3, seed: int = 0) -> list[dict]:
    """`trials` sets of valid inputs for `model` (see the module docstring).

    Raises:
        UnsupportedError: an input feeds a shape-like slot and the model gives it no value, or its
            type or shape leaves nothing to generate. The message names the input and the slot.
    """
    uses = shape_like_uses(model)
    if uses:
        name, where = next(iter(uses.items()))
        raise UnsupportedError(f"input {name!r} feeds {where[0]}: its values decide the computation, so "
                               "they cannot be random; give real inputs with --inputs F.npz (or a folder of "
                               "input_*.pb)")
    out = []
    for trial in range(trials):
        rng = np.random.default_rng([seed, trial])
        symbols: dict[str, int] = {}
        feeds: dict[str, object] = {}
        for slot in graph_inputs(model):
            if slot.kind == "map" or slot.elem_type == 0:
                raise UnsupportedError(f"input {slot.name!r} is a {slot.kind}: updp cannot generate it "
                                       "(give it with --inputs)")
            shape = _dims(slot, batch, symbols)
            value = _values(slot.elem_type, shape, rng, slot.name)
            feeds[slot.name] = [value, _values(slot.elem_type, shape, rng, slot.name)] \
                if slot.kind == "sequence" else value
        out.append(feeds)
    return out


def _pb_feeds(folder: Path, model: onnx.ModelProto) -> dict:
    names = [s.name for s in graph_inputs(model)]
    files = list(folder.glob("input_*.pb"))
    misnamed = [p.name for p in files if not re.fullmatch(r"input_\d+\.pb", p.name)]
    if misnamed:
        raise InputError(f"{folder}: {misnamed[0]} is not named input_<k>.pb (k = 0, 1, ...: the input's position)")
    files.sort(key=lambda p: int(p.stem.split("_")[1]))
    if len(files) != len(names):
        raise InputError(f"{folder}: {len(files)} input_*.pb files for {len(names)} model inputs {names}")
    feeds = {}
    for name, path in zip(names, files):
        t = TensorProto()
        try:
            t.ParseFromString(path.read_bytes())
            array = numpy_helper.to_array(t)
        except Exception as exc:  # protobuf's DecodeError; numpy_helper's TypeError/ValueError for what it holds
            raise InputError(f"{path}: not a TensorProto onnx can read: {first_line(exc)}") from None
        feeds[t.name or name] = array
    return feeds


def load_feeds(path: str | os.PathLike, model: onnx.ModelProto) -> list[dict]:
    """The user's inputs: an `.npz` (arrays by input name) or a folder of onnx test data.

    Raises:
        InputError: a missing file, a malformed one, or inputs that do not name the model's.
    """
    p = Path(path)
    slots = graph_inputs(model)
    names = {s.name for s in slots}
    if p.is_dir():
        sets = sorted(Path(d) for d in glob.glob(str(p / "test_data_set_*"))) or [p]
        feeds = [_pb_feeds(d, model) for d in sets]
    elif p.suffix == ".npz" and p.is_file():
        try:
            with np.load(p, allow_pickle=False) as data:
                feeds = [{k: data[k] for k in data.files}]
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read inputs {p}: {exc}") from None
    else:
        raise InputError(f"inputs {p}: expected an .npz file or a folder of input_*.pb files")
    for f in feeds:
        if set(f) != names:
            raise InputError(f"inputs {p} name {sorted(f)}, the model takes {sorted(names)}")
        _refuse_misfits(f, slots, p)
        _refuse_empty(f, slots, p)
    return feeds


def _refuse_misfits(feeds: dict, slots: list[InputSlot], path: Path) -> None:
    """A tensor of another type or of another shape than the model declares: ONNX Runtime refuses
    it, and the check would then run on onnx's reference evaluator, which computes something for it
    (an int64 convolution, a larger output) that no deployment sees."""
    for slot in slots:
        value = feeds.get(slot.name)
        if slot.kind != "tensor" or not isinstance(value, np.ndarray):
            continue
        if slot.elem_type:
            try:
                want = np.dtype(helper.tensor_dtype_to_np_dtype(slot.elem_type))
            except (KeyError, TypeError):
                want = None
            if want is not None and value.dtype != want:
                raise InputError(f"inputs {path}: {slot.name!r} is {value.dtype}, the model takes {want}")
        if slot.shape is None:
            continue
        fixed = [d if isinstance(d, int) else None for d in slot.shape]
        if value.ndim != len(fixed) or any(d is not None and d != n for d, n in zip(fixed, value.shape)):
            declared = [d if d is not None else "?" for d in slot.shape]
            raise InputError(f"inputs {path}: {slot.name!r} has shape {list(value.shape)}, the model takes "
                             f"{declared}")


def _refuse_empty(feeds: dict, slots: list[InputSlot], path: Path) -> None:
    """An input with no elements (a batch of 0) makes every output empty, and two empty outputs
    always match: a check on it would pass any rewrite. Allowed only where the model itself fixes a
    0-length dimension."""
    for slot in slots:
        value = feeds.get(slot.name)
        if not isinstance(value, np.ndarray) or value.size:
            continue
        if slot.shape is not None and 0 in slot.shape:
            continue
        raise InputError(f"inputs {path}: {slot.name!r} has shape {list(value.shape)}, no elements, so the check "
                         "would compare empty outputs; give at least one element (a batch of 1 or more)")


__all__ = ["DEFAULT_SYMBOLIC_DIM", "InputSlot", "SHAPE_LIKE_SLOTS", "generate_feeds", "graph_inputs", "load_feeds",
           "shape_like_uses"]
