"""ONNX Runtime session construction and ONNX file loading, shared by verification and latency.

Every session updp creates goes through `make_session` so that the graph optimization level, the
thread counts and the providers are always set explicitly and can be recorded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from updp.core.constants import OPT_LEVELS
from updp.core.errors import InputError

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


def _tensor_bytes(t: onnx.TensorProto) -> int:
    """The bytes of a tensor's data, from its dims and type (protobuf's own size of a message over
    its limit cannot be asked for: it fails)."""
    if t.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return sum(len(v) for v in t.string_data)
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    return int(np.prod(t.dims, dtype=np.int64)) * itemsize


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
    with tempfile.TemporaryDirectory(prefix="updp-model-") as tmp:
        path = Path(tmp) / "model.onnx"
        if is_large(model):
            save_external(model, path, "model.onnx.data")
        else:
            onnx.save(model, str(path))
        yield str(path)


def load_onnx(path: str | os.PathLike, check: bool = True) -> onnx.ModelProto:
    """Load an ONNX file with one-line, actionable errors for the usual failures."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory, not an ONNX file")
    if not path.is_file():
        raise InputError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises DecodeError, external data raises various
        raise InputError(f"cannot read {path} as an ONNX model: {type(exc).__name__}: {exc}") from None
    if not model.graph.node:
        raise InputError(f"{path} holds no ONNX graph (empty or not an ONNX model)")
    if check:
        try:
            onnx.checker.check_model(str(path) if is_large(model) else model)
        except onnx.checker.ValidationError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid model"
            raise InputError(f"{path} is not a valid ONNX model: {first}") from None
    return model


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def default_providers(device: str = "cpu") -> list[str]:
    """CPU always; CUDA first when asked for and onnxruntime-gpu provides it."""
    if device == "cuda":
        if "CUDAExecutionProvider" not in available_providers():
            raise InputError("CUDA requested but onnxruntime has no CUDAExecutionProvider "
                             "(install onnxruntime-gpu on a machine with a GPU)")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


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
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[opt_level])
    so.log_severity_level = 3
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
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"ONNX Runtime cannot load the model: {msg}") from None


def input_specs(session, batch: int = 1, dims: dict[str, int] | None = None):
    """(name, shape, numpy dtype) for each session input, symbolic dims resolved.

    A symbolic first dimension becomes `batch`; other symbolic dims must be given in `dims`.
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
                                 "export with a static input size")
        dtype = _ONNX_TO_NUMPY.get(inp.type)
        if dtype is None:
            raise InputError(f"input {inp.name!r} has unsupported type {inp.type}")
        specs.append((inp.name, tuple(shape), dtype))
    return specs


def random_inputs(session, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Non-trivial random feeds: standard normal floats (never all-zeros or all-ones)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, shape, dtype in input_specs(session, batch):
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feeds
