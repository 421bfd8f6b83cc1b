"""ONNX Runtime session construction and ONNX file loading, shared by verification and latency.

Every session updp creates goes through `make_session` so that the graph optimization level, the
thread counts and the providers are always set explicitly and can be recorded.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from updp.core.constants import OPT_LEVELS
from updp.core.errors import InputError, UnsupportedError, first_line
from updp.core.io import scratch_dir

logger = logging.getLogger(__name__)

_ONNX_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


# protobuf cannot serialize a message of 2 GiB or more: a larger model keeps its tensors in an
# external-data file next to the .onnx, and goes to ONNX Runtime and the checker as a path.
PROTOBUF_LIMIT = 2**31 - 1
EXTERNAL_DATA_THRESHOLD = 2_000_000_000


def _itemsize(data_type: int) -> int | None:
    """Bytes per element of a tensor type; None for a code onnx does not define."""
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None


def _tensor_bytes(t: onnx.TensorProto) -> int:
    """The bytes of a tensor's data, from its dims and type (protobuf's own size of a message over
    its limit cannot be asked for: it fails). A type code onnx does not define counts 0 (the
    checker names it); the product of the dims is a Python int, so huge dims cannot wrap around."""
    if t.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return sum(len(v) for v in t.string_data)
    itemsize = _itemsize(t.data_type)
    return 0 if itemsize is None else math.prod(max(int(d), 0) for d in t.dims) * itemsize


def model_bytes(model: onnx.ModelProto) -> int:
    """About how large the model is as one protobuf: its initializers' and constants' data."""
    total = sum(_tensor_bytes(t) for t in model.graph.initializer)
    for n in model.graph.node:
        total += sum(_tensor_bytes(a.t) for a in n.attribute if a.type == onnx.AttributeProto.TENSOR)
    return total


def is_large(model: onnx.ModelProto) -> bool:
    """Too large for one protobuf (with a margin for the graph and what serializing adds)."""
    return model_bytes(model) > EXTERNAL_DATA_THRESHOLD


def save_external(model: onnx.ModelProto, path: Path, location: str) -> None:
    """Save a copy of `model` at `path` with its tensors in `location` beside it (the model
    itself is left as it is: onnx's saver would rewrite its tensors into references)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.save_model(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location,
                    size_threshold=1024)


@contextlib.contextmanager
def model_file(model: onnx.ModelProto | str | os.PathLike) -> Iterator[str]:
    """A model as a file path: a path as given; a ModelProto written to a temporary folder (with
    external data when it is over the protobuf limit), removed afterwards."""
    if not isinstance(model, onnx.ModelProto):
        yield str(model)
        return
    with scratch_dir("model") as tmp:
        path = Path(tmp) / "model.onnx"
        if is_large(model):
            save_external(model, path, "model.onnx.data")
        else:
            onnx.save(model, str(path))
        yield str(path)


def read_onnx(path: str | os.PathLike, load_external_data: bool = True) -> onnx.ModelProto:
    """`onnx.load`, with what it warns about (an external-data key it ignores, ...) logged as one
    line each instead of Python's two-line warnings on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = onnx.load(str(path), load_external_data=load_external_data)
    for message in dict.fromkeys(first_line(w.message) for w in caught):
        logger.warning("%s: %s", path, message)
    return model


# Types whose data is whole bytes per element, and the typed field that holds them when there is
# no raw_data (complex numbers take two values of that field per element).
_TYPED_FIELDS = {
    **{t: "int32_data" for t in (2, 3, 4, 5, 6, 9, 10, 16, 17, 18, 19, 20, 24)},
    1: "float_data", 14: "float_data", 11: "double_data", 15: "double_data", 7: "int64_data", 12: "uint64_data",
    13: "uint64_data",
}


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs held by `node`'s attributes (an If's branches, a Loop's or Scan's body), in
    attribute order; not the graphs nested inside those. Every walk over a model's subgraphs goes
    through this, so that GRAPH and GRAPHS attributes are treated alike everywhere."""
    out: list[onnx.GraphProto] = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            out.append(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            out.extend(a.graphs)
    return out


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    """(where, tensor) for every initializer and tensor attribute, subgraphs included."""
    for t in graph.initializer:
        yield "initializer", t
    for n in graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield f"attribute {a.name!r} of {n.op_type} {n.name!r}", a.t
            for t in a.tensors:
                yield f"attribute {a.name!r} of {n.op_type} {n.name!r}", t
        for g in subgraphs(n):
            yield from _graph_tensors(g)


def _stored_elements(t: onnx.TensorProto) -> int | None:
    """How many elements the data of `t` holds (None: a type whose packing is not checked here)."""
    if t.data_type == onnx.TensorProto.STRING:
        return len(t.string_data)
    field = _TYPED_FIELDS.get(t.data_type)
    if field is None:
        return None
    per = 2 if t.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128) else 1
    if t.HasField("raw_data"):
        size, itemsize = len(t.raw_data), _itemsize(t.data_type) or 1
        return size // itemsize if size % itemsize == 0 else -1
    return len(getattr(t, field)) // per


def check_tensor_data(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Every tensor (external data loaded) holds as many elements as its dims say. onnx's checker
    does not compare them, and a mismatch would otherwise surface as a numpy reshape error deep in
    the passes, or as ONNX Runtime's refusal half-way.

    Raises:
        InputError: naming the tensor, its dims and what it holds.
    """
    for where, t in _graph_tensors(model.graph):
        dims = list(t.dims)
        if any(d < 0 for d in dims):
            raise InputError(f"{path}: tensor {t.name!r} ({where}) has a negative dimension: dims {dims}")
        if t.data_location == onnx.TensorProto.EXTERNAL:
            continue  # not loaded (a caller that reads the data later checks it there)
        held = _stored_elements(t)
        if held is not None and held != math.prod(dims):
            what = "a byte count that is not a whole number of elements" if held < 0 else f"{held} elements"
            raise InputError(f"{path}: tensor {t.name!r} ({where}) holds {what}, but its dims {dims} and type "
                             f"{onnx.TensorProto.DataType.Name(t.data_type)} need {math.prod(dims)}")


def _graph_names(graph: onnx.GraphProto) -> Iterator[str | bytes]:
    for vi in (*graph.input, *graph.output, *graph.value_info):
        yield vi.name
    for t in graph.initializer:
        yield t.name
    for n in graph.node:
        yield from (n.name, n.op_type, n.domain, *n.input, *n.output)
        for a in n.attribute:
            yield a.name
        for g in subgraphs(n):
            yield from _graph_names(g)


def check_names(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Every name, op type and domain is UTF-8, as ONNX requires. protobuf hands a string field
    that is not as `bytes` (no error), which ONNX Runtime then fails to decode half-way.

    Raises:
        InputError: naming the first such value.
    """
    for name in (*_graph_names(model.graph), *(o.domain for o in model.opset_import)):
        if not isinstance(name, str):
            raise InputError(f"{path} holds a name that is not UTF-8 text: {name[:60]!r}")


def external_data_files(path: str | os.PathLike) -> list[Path]:
    """The files that hold the external-data tensors of the ONNX file at `path` (as its tensors
    name them, beside it); [] for a file that cannot be read as a model (`load_onnx` says why)."""
    try:
        model = read_onnx(path, load_external_data=False)
    except Exception:  # protobuf raises DecodeError and others: reported when the model is loaded
        return []
    locations = {e.value for _, t in _graph_tensors(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL
                 for e in t.external_data if e.key == "location"}
    return [Path(path).parent / loc for loc in sorted(locations)]


def refuse_overwriting_data(outputs: list[str | os.PathLike | None], models: list[str | os.PathLike]) -> None:
    """Refuse an output that is the external-data file of an input model: writing it would leave
    the input model unreadable (the same file check of `updp.core.io` sees only the .onnx).

    Raises:
        InputError: naming the output and the model whose data it holds.
    """
    for model in models:
        for data in external_data_files(model):
            for out in outputs:
                if out is not None and Path(out).exists() and data.exists() and os.path.samefile(out, data):
                    raise InputError(f"the output {out} holds the external data of the input {model}: write the "
                                     "result to another path")


def load_onnx(path: str | os.PathLike, check: bool = True) -> onnx.ModelProto:
    """Load an ONNX file with one-line, actionable errors for the usual failures."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory, not an ONNX file")
    if not path.is_file():
        raise InputError(f"ONNX file not found: {path}")
    try:
        model = read_onnx(path)
    except Exception as exc:  # protobuf raises DecodeError, external data raises various
        raise InputError(f"cannot read {path} as an ONNX model: {type(exc).__name__}: {first_line(exc)}") from None
    if not model.graph.node:
        raise InputError(f"{path} holds no ONNX graph (empty or not an ONNX model)")
    if check:
        check_names(model, path)
        check_tensor_data(model, path)
        try:
            onnx.checker.check_model(str(path) if is_large(model) else model)
        except Exception as exc:  # ValidationError; ValueError and others from its C++ core for codes it does not know
            raise InputError(f"{path} is not a valid ONNX model: {first_line(exc, 'invalid model')}") from None
    return model


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


# The providers of each device, first preferred: ORT places every node on the first provider
# that takes it, so the CPU stays last for what the others cannot run.
DEVICE_PROVIDERS: dict[str, list[str]] = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def default_providers(device: str = "cpu") -> list[str]:
    """The providers of `device` (`DEVICE_PROVIDERS`), each checked to be in this onnxruntime."""
    if device not in DEVICE_PROVIDERS:
        raise InputError(f"unknown device {device!r}; choose from {', '.join(DEVICE_PROVIDERS)}")
    have = available_providers()
    missing = [p for p in DEVICE_PROVIDERS[device] if p not in have]
    if missing:
        raise InputError(f"{device} requested but onnxruntime has no {missing[0]} (it has {', '.join(have)}); "
                         "install onnxruntime-gpu on a machine with a GPU"
                         + (" and the TensorRT libraries" if device == "tensorrt" else ""))
    return list(DEVICE_PROVIDERS[device])


def make_session(model: onnx.ModelProto | str | os.PathLike, *, opt_level: str = "all",
                 threads: int | None = None, providers: list[str] | None = None,
                 profile_prefix: str | None = None, spinning: bool | None = None):
    """Create an InferenceSession with every setting explicit.

    Args:
        model: a ModelProto or a path.
        opt_level: one of `OPT_LEVELS` (disable, basic, extended, all).
        threads: intra-op threads (inter-op is pinned to 1; None lets ORT choose).
        providers: execution providers, CPU by default.
        profile_prefix: if set, ORT's profiler writes a trace with this file prefix.
        spinning: whether idle intra-op threads busy-wait for work (`session.intra_op.allow_spinning`);
            None keeps ORT's default (on). Interleaved A/B timing turns it off: otherwise the threads
            of the session that just ran keep spinning on the cores the next session needs.
    """
    if opt_level not in OPT_LEVELS:
        raise InputError(f"unknown optimization level {opt_level!r}; choose from {', '.join(OPT_LEVELS)}")
    # ORT's process-wide logger prints what its allocator and environment refuse (an overflowing
    # size, say) on stderr as well as raising it: fatal messages only, like the sessions' own.
    ort.set_default_logger_severity(4)
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[opt_level])
    so.log_severity_level = 4  # fatal only: an error is raised as an exception (one line here), not also logged
    if threads:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if spinning is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_prefix)
    try:
        if isinstance(model, onnx.ModelProto) and is_large(model):
            with model_file(model) as path:
                return ort.InferenceSession(path, sess_options=so, providers=providers or default_providers())
        payload = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
        return ort.InferenceSession(payload, sess_options=so, providers=providers or default_providers())
    except Exception as exc:  # ORT raises its own exception types for a model it cannot load
        raise InputError(f"ONNX Runtime cannot load the model: {first_line(exc)}") from None


# The most bytes one generated input may take: a declared shape past it is a broken file (or a
# model no random input suits), and numpy would try to fill it.
MAX_GENERATED_BYTES = 2**31


def check_generated_size(name: str, shape: tuple[int, ...], dtype) -> None:
    """Refuse, before numpy allocates it, an input of more than `MAX_GENERATED_BYTES`.

    Raises:
        UnsupportedError: naming the input, its shape and its size.
    """
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes > MAX_GENERATED_BYTES:
        raise UnsupportedError(f"input {name!r} of shape {list(shape)} would take {nbytes / 2**30:.3g} GiB, over the "
                               f"{MAX_GENERATED_BYTES / 2**30:g} GiB updp generates for an input")


def input_specs(session, batch: int = 1, dims: dict[str, int] | None = None):
    """(name, shape, numpy dtype) for each session input, symbolic dims resolved.

    A symbolic first dimension becomes `batch`; other symbolic dims must be given in `dims`.

    Raises:
        InputError: a symbolic dimension past the first, or a type updp does not generate.
        UnsupportedError: an input too large to generate (`check_generated_size`).
    """
    specs = []
    for inp in session.get_inputs():
        shape = []
        for i, d in enumerate(inp.shape):
            if isinstance(d, int) and d >= 0:
                shape.append(d)  # a fixed 0-length dimension stays 0
            elif dims and isinstance(d, str) and d in dims:
                shape.append(dims[d])
            elif i == 0:
                shape.append(batch)
            else:
                raise InputError(f"input {inp.name!r} has a symbolic dimension {d!r} at axis {i}; "
                                 f"give its value (updp bench --dim {d}=224) or export with a static input size")
        dtype = _ONNX_TO_NUMPY.get(inp.type)
        if dtype is None:
            raise InputError(f"input {inp.name!r} has unsupported type {inp.type}")
        check_generated_size(inp.name, tuple(shape), dtype)
        specs.append((inp.name, tuple(shape), dtype))
    return specs


def random_inputs(session, batch: int = 1, seed: int = 0, dims: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Non-trivial random feeds for a session's inputs (`random_feed` of its `input_specs`)."""
    return random_feed(input_specs(session, batch, dims), seed)


def random_feed(specs, seed: int = 0) -> dict[str, np.ndarray]:
    """Non-trivial random values for (name, shape, numpy dtype) specs: standard normal floats,
    0/1 integers and booleans (never all-zeros or all-ones).

    Floats are drawn in float64 and rounded to their type, so specs that differ only in float
    width get the same draw, rounded to each width.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, shape, dtype in specs:
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feeds
