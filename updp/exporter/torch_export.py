"""torch → ONNX: export, full checker, onnxsim clean-up and provenance metadata.

Why the TorchScript exporter (`dynamo=False`) by default: on this project's reference machine it
exports about 5x faster than `dynamo=True` and the two give the same ONNX Runtime latency; it also
names every node after its module scope (`/stages/stages.0/blocks/blocks.3/conv_dw/Conv`), which is
what `updp.latency.profile` uses to attribute time to blocks.

Why the torch.export-based exporter as a choice (`exporter="dynamo"`): it is torch's default since
2.9, and torch deprecates the TorchScript one ("will be removed"); it also exports some models the
tracer cannot. Its node names carry no scope (`node_Conv_12`), but each node records its module
path in its metadata, so the nodes are renamed to the TorchScript scheme (`_scoped_node_names`)
and their output values after them (`_scoped_value_names`), so the per-block attribution works on
either export. That metadata (which also holds the Python
stack trace of every op, with the paths of the machine that exported it) is then dropped: a
deployed file should not carry it.

Why onnxsim runs twice with different settings: before our passes it only folds constants and
infers shapes (`perform_optimization=False`), because its optimizer rewrites `MatMul + Add` into
`Reshape → Gemm → Reshape`, which hides the linear chains our passes merge. After our passes it may
run in full as a final polish (the default), since by then the chains are merged.

torch and onnxsim (which imports torch) are imported inside the functions that use them: saving,
checking and labelling a file someone brings (`updp optimize`, `updp bench` on ONNX files) then
starts without the seconds those imports take.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import logging
import os
import platform
import re
import secrets
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
import onnxruntime

from updp.core.constants import DEFAULT_EXPORTER, DEFAULT_OPSET, EXPORTERS, MIN_EXPORT_OPSET
from updp.core.errors import InputError, UnsupportedError, first_line
from updp.core.io import commit, finish_file, scratch_dir, staged_dir, writing
from updp.core.version import __version__
from updp.exporter.scopes import scope_fragment
from updp.ort import is_large, model_file, save_external, subgraphs

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def versions() -> dict[str, str]:
    """Versions of everything that shapes an exported graph, for provenance."""
    import onnxsim  # lazy: see the module docstring
    import torch  # lazy: see the module docstring

    out = {"updp": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
           "onnxruntime": onnxruntime.__version__, "onnxsim": getattr(onnxsim, "__version__", "?"),
           "python": platform.python_version()}
    for mod in ("timm", "torchvision"):
        with contextlib.suppress(ImportError):
            out[mod] = __import__(mod).__version__
    return out


@contextlib.contextmanager
def _quiet_export():
    """Hide the TorchScript tracer's chatter (TracerWarnings, deprecation notes).

    Only warnings are silenced; an exception from the exporter propagates unchanged.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stdout(io.StringIO()):
            yield


def torch_to_onnx(model: torch.nn.Module, input_shape: tuple[int, ...], *, dynamic_batch: bool = False,
                  opset: int = DEFAULT_OPSET, exporter: str = DEFAULT_EXPORTER) -> onnx.ModelProto:
    """Export `model` (eval mode, CPU, float32) and check it.

    Args:
        model: the module to export; it is put in eval mode.
        input_shape: full input shape including batch, e.g. (1, 3, 224, 224).
        dynamic_batch: mark axis 0 of the input and the output as symbolic `batch`.
        opset: ONNX opset (>= 17, for LayerNormalization).
        exporter: "torchscript" or "dynamo" (see the module docstring).
    """
    import torch  # lazy: see the module docstring

    if opset < MIN_EXPORT_OPSET:
        raise InputError(f"opset {opset} is too old: updp needs >= {MIN_EXPORT_OPSET} (LayerNormalization)")
    if exporter not in EXPORTERS:
        raise InputError(f"unknown exporter {exporter!r}; choose from {', '.join(EXPORTERS)}")
    model = model.eval().float().cpu()
    x = torch.randn(*input_shape)
    with scratch_dir("export") as tmp:
        path = os.path.join(tmp, "model.onnx")
        # nn.MultiheadAttention's inference fast path (`_native_multi_head_attention`) has no ONNX
        # symbolic; the regular path computes the same function and exports.
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            with torch.no_grad(), _quiet_export():
                if exporter == "dynamo":
                    _dynamo_export(model, x, path, dynamic_batch=dynamic_batch, opset=opset)
                else:
                    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
                    torch.onnx.export(model, (x,), path, dynamo=False, opset_version=opset,
                                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                      dynamic_axes=dynamic_axes, do_constant_folding=True)
        except RuntimeError as exc:
            raise UnsupportedError(f"torch.onnx.export failed: {first_line(exc)}") from None
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
        proto = onnx.load(path)
    if exporter == "dynamo":
        _scoped_node_names(proto)
        _scoped_value_names(proto)
    full_check(proto, "exported model")
    return proto


def _dynamo_export(model: torch.nn.Module, x: torch.Tensor, path: str, *, dynamic_batch: bool, opset: int) -> None:
    """torch.export-based export to `path`; its failures raise as RuntimeError with the cause's first line."""
    import torch  # lazy: see the module docstring

    try:
        import onnxscript  # noqa: F401  # lazy: the exporter's own dependency, optional; checked here for a clear message
    except ImportError:
        raise UnsupportedError("--exporter dynamo needs onnxscript: pip install onnxscript "
                               "(or use the default TorchScript exporter)") from None
    dynamic_shapes = None
    if dynamic_batch:
        dynamic_shapes = ({0: torch.export.Dim("batch")},)
        # torch.export specializes a size-1 axis to the constant 1 (then refuses it as dynamic)
        x = x.expand(max(2, x.shape[0]), *x.shape[1:]).contiguous()
    try:
        # it logs its internal retries as errors, with tracebacks: they go to the debug log
        with _output_to_debug_log("torch.onnx.export (dynamo)"):
            torch.onnx.export(model, (x,), path, dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_shapes=dynamic_shapes, verbose=False)
    except Exception as exc:  # torch.export raises many types; the summary names the exporter's step
        cause = exc.__cause__ or exc
        raise RuntimeError(f"{type(cause).__name__}: {first_line(cause)}") from None


# Node metadata the torch.export-based exporter writes: the module path of each node (read by
# `_scoped_node_names`), its module classes, FX node and Python stack trace.
_DYNAMO_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
_DYNAMO_METADATA_PREFIXES = ("pkg.torch.onnx.", "namespace")


def _scoped_node_names(model: onnx.ModelProto) -> None:
    """Rename the nodes of a torch.export-based export to the TorchScript exporter's scheme,
    `<scope_fragment of the node's module>/<OpType>` (unique with `_1`, `_2`, ...), and drop the
    exporter's node metadata (see the module docstring).

    The module path is the next-to-last entry of the node's `name_scopes` (the last is the FX
    node's own name). A node without them (one the exporter's optimizer made) keeps its name:
    without a "/", it is attributed like the TorchScript exporter's unscoped nodes.
    """
    taken: set[str] = set()  # the new names have a "/"; the exporter's own never do
    for node in model.graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == _DYNAMO_SCOPES_KEY), None)
        kept = [p for p in node.metadata_props if not p.key.startswith(_DYNAMO_METADATA_PREFIXES)]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
        try:
            path = ast.literal_eval(scopes) if scopes else None
        except (ValueError, SyntaxError):
            path = None
        if not isinstance(path, list) or len(path) < 2 or not all(isinstance(p, str) for p in path):
            taken.add(node.name)
            continue
        module = path[-2]
        base = f"{scope_fragment(module) if module else '/'}{node.op_type}"
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        node.name = name
        taken.add(name)


def _scoped_value_names(model: onnx.ModelProto) -> None:
    """Rename the values a scoped node computes to the TorchScript scheme, `<node name>_output_<k>`.

    Why the values too: under ORT_ENABLE_ALL on CPU, ORT's NCHWc layout transformer replaces every
    convolution and pool by a node named after its *output value* (`<value>_nchwc`). The
    torch.export-based exporter names values `conv2d_4`, `add_1`, ... with no scope, so those
    nodes, most of a CNN's time, would inherit the block of whatever ran before them. Graph inputs
    and outputs keep their names (a deployed file's interface), and so do the values of nodes that
    kept an unscoped name (`_scoped_node_names`) or a new name would collide with an existing one.
    Readers in subgraphs (which see the outer graph's values by name) are renamed with them.
    """
    graph = model.graph
    interface = {v.name for v in graph.input} | {v.name for v in graph.output}
    existing = interface | {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    renamed: dict[str, str] = {}
    for node in graph.node:
        if "/" not in node.name:
            continue
        for k, value in enumerate(node.output):
            new = f"{node.name}_output_{k}"
            if value and value not in interface and new not in existing:
                renamed[value] = new
                node.output[k] = new
                existing.add(new)
    if not renamed:
        return

    def rename_readers(g: onnx.GraphProto) -> None:
        for node in g.node:
            for p, value in enumerate(node.input):
                if value in renamed:
                    node.input[p] = renamed[value]
            for sub in subgraphs(node):
                rename_readers(sub)

    rename_readers(graph)
    for info in graph.value_info:
        info.name = renamed.get(info.name, info.name)


def full_check(model: onnx.ModelProto | str | os.PathLike, what: str) -> None:
    """Run the ONNX checker with full shape/type checking; raise one line on failure. A model over
    the protobuf limit is checked as a file."""
    try:
        if isinstance(model, onnx.ModelProto) and is_large(model):
            with model_file(model) as path:
                onnx.checker.check_model(path, full_check=True)
        else:
            onnx.checker.check_model(model if isinstance(model, onnx.ModelProto) else str(model), full_check=True)
    except Exception as exc:  # ValidationError, InferenceError; ValueError from its C++ core for codes it does not know
        first = first_line(exc, "invalid")
        raise UnsupportedError(f"{what} fails the ONNX checker: {first}") from None


@contextlib.contextmanager
def _output_to_debug_log(what: str) -> Iterator[None]:
    """What native code writes to the process's stdout and stderr meanwhile goes to the debug log.

    onnxsim prints a warning and a Python traceback for every node it cannot fold (a huge
    ConstantOfShape, an op ONNX Runtime refuses), straight to file descriptors 1 and 2: without
    this, a user's terminal would show them around updp's own one-line messages.
    """
    streams = [s for s in (sys.stdout, sys.stderr) if s is not None]
    for s in streams:
        s.flush()
    with tempfile.TemporaryFile() as sink:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            for s in streams:
                s.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            said = sink.read(4000).decode("utf-8", "replace").strip()
            if said:
                logger.debug("%s wrote: %s", what, said)


def simplify(model: onnx.ModelProto, *, optimize: bool) -> onnx.ModelProto:
    """onnxsim: constant folding + shape inference, plus its optimizer when `optimize`.

    A model onnxsim cannot process is returned unchanged with a warning: simplification is a
    convenience, never a correctness requirement, and everything after it is verified anyway.
    """
    import onnxsim  # lazy: it imports torch (seconds), only where a graph is simplified

    try:
        with _quiet_export(), _output_to_debug_log("onnxsim"):
            simplified, ok = onnxsim.simplify(model, perform_optimization=optimize)
    except Exception as exc:  # onnxsim raises bare RuntimeErrors from its C++ core
        logger.warning("onnxsim skipped: %s", first_line(exc))
        return model
    if not ok:
        logger.warning("onnxsim could not validate its result; keeping the unsimplified model")
        return model
    return simplified


def set_metadata(model: onnx.ModelProto, props: dict[str, object]) -> None:
    """Write provenance into `metadata_props` (values JSON-encoded unless already strings)."""
    existing = {p.key: p for p in model.metadata_props}
    for key, value in props.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        if key in existing:
            existing[key].value = text
        else:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, text


VERIFIED_KEY = "updp.verified_max_abs_diff"  # the export's record of its verified merge


def hand_down_verification(model: onnx.ModelProto) -> None:
    """In a file made from a verified export (its int8 or float16 version), the export's record of
    its verified merge is kept under a name that says whose it is: `..._of_float_model`."""
    for entry in model.metadata_props:
        if entry.key == VERIFIED_KEY:
            entry.key = f"{VERIFIED_KEY}_of_float_model"


def get_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


@contextlib.contextmanager
def staged_model(model: onnx.ModelProto, dest: str | os.PathLike) -> Iterator[Path]:
    """Write `model` under a temporary name next to `dest` and yield that path (to check it as a
    file); on success, move it onto `dest`. On any exception nothing at `dest` changes.

    A model over the protobuf limit keeps its tensors in `<dest name>.<token>.data` beside it. The
    token is new for every write, so the data file is moved into place first (it replaces
    nothing) and the .onnx that refers to it last: a reader sees the old pair or the new one, never
    a mix. The old data file is removed after the switch.
    """
    dest = Path(dest)
    with staged_dir(dest) as tmpdir:
        staged = tmpdir / dest.name
        location = None
        with writing(dest):
            if is_large(model):
                location = f"{dest.name}.{secrets.token_hex(4)}.data"
                save_external(model, staged, location)
            else:
                onnx.save(model, str(staged))
        del model  # written: a caller that drops its own reference frees the memory while it checks the file
        yield staged
        with writing(dest):
            if location is not None:
                finish_file(tmpdir / location)
                commit(tmpdir / location, dest.parent / location)
            finish_file(staged)
            commit(staged, dest)
            _remove_old_data_files(dest, keep=location)


def _remove_old_data_files(dest: Path, keep: str | None) -> None:
    """Remove the data files of earlier writes of `dest` (the one it referred to before, and any a
    write killed between its two renames left behind): updp's own names, `<dest>.<8 hex>.data`."""
    pattern = re.compile(re.escape(dest.name) + r"\.[0-9a-f]{8}\.data$")
    for entry in dest.parent.iterdir():
        if entry.name != keep and pattern.match(entry.name) and entry.is_file():
            entry.unlink(missing_ok=True)


def save_model(model: onnx.ModelProto, dest: str | os.PathLike) -> Path:
    """Save atomically (see `staged_model`; models over the protobuf limit with external data)."""
    with staged_model(model, dest):
        pass
    return Path(dest)
