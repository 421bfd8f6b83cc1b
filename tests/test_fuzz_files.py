"""`updp optimize` and `updp bench` on mutated real ONNX files: whatever a file holds, the command
ends with 0, 2, 3 or 4 (never 1, an internal error), within a time bound, with one stderr line that
names the problem, and it never leaves a partial output behind.

Why a fuzzer of whole files: the passes have their own property-based tests, but a user's file
reaches them through onnx's parser, the checker, the version converter, onnxsim, the feed
generator and ONNX Runtime, each with its own failure modes (exceptions of every type, C++ aborts,
allocations sized by a dim in the file, reads of external data anywhere on disk). Only a file that
is broken on purpose shows whether each of them is turned into a one-line error a user can act on.

Seeds (real models, small; built once per session by `seeds`): onnx's zoo graphs `squeezenet` and
`shufflenet` (opset 9, weights from ConstantOfShape), `atto` (timm convnext_atto at 32x32 with one
pruned block, exported by updp without merging), `cbr` (a hand-built Conv-BN-Relu-residual-Gemm
graph at opset 17) and `cbr_ext` (the same with every tensor in an external-data file).

Mutations (`MUTATIONS`, deterministic from the case number): bytes (flips, truncation, appended or
inserted garbage, an empty file, zeroed runs, not an ONNX file at all, an input path that is a
directory or a FIFO), protobuf fields through the onnx API (wrong, negative, zero and huge dims in
value_info and initializers, dims that do not match the data, undefined data types, attributes of
the wrong type, missing or absurd attributes, dangling inputs, duplicate outputs, cycles, opset
imports that are missing, 0, 10000 or of unknown domains, IR version 0 or huge, a Reshape or
ConstantOfShape asked for 2**40 elements, garbled names), and external data (a missing file, offsets
and lengths past the end, `../` and absolute locations, a directory, a FIFO, symlinks). A case
takes one to three of them.

How a case runs: one worker process (this file run as a script) reads case numbers on stdin,
builds the mutated input, runs `updp.cli.main` in-process with its stdout and stderr captured at
the file-descriptor level, checks the outcome and answers with one JSON line on a pipe. The parent
kills and restarts the worker when a case runs past `CASE_TIMEOUT_S`, so a hang fails that case
instead of the suite. The worker runs under an address-space limit (`MEMORY_LIMIT`): an attempt to
allocate terabytes fails at once (an internal error, which the checks catch) instead of swapping
the machine.

The default suite runs `DEFAULT_CASES` (every mutation kind at least once); `-m fuzz` runs the
others. To look at one case: `python tests/test_fuzz_files.py --repro N DIR` writes its input
under DIR and prints the command line. `UPDP_FUZZ_SALT=s` draws other cases from the same
numbers; `UPDP_FUZZ_SUMMARY=F.json` writes every case's record to F.json at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, external_data_helper, helper, numpy_helper

CASE_TIMEOUT_S = 60
# Another salt draws other cases from the same numbers (for exploring past the fixed ones; the
# worker inherits it, and a case's id is reproducible only with the same salt).
SALT = os.environ.get("UPDP_FUZZ_SALT", "")
SEED_TIMEOUT_S = 600
MEMORY_LIMIT = 6 * 2**30
CHUNK = 20
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
SEEDS = ("squeezenet", "shufflenet", "atto", "cbr", "cbr_ext")
SEED_WEIGHTS = (3, 2, 2, 4, 2)
LOG_LINE = re.compile(r"^updp: (DEBUG|INFO|WARNING|ERROR|CRITICAL): \S")
# Marks a mutation whose success would mean data outside the model's folder (or a device) was read.
OUTSIDE = "[outside the folder]"
HUGE = (2**31, 2**40, 2**62, 2**63 - 1)
ODD_DIMS = (0, 1, 2, 5, 1000, -1, -7)
# Type codes: every defined one, and codes onnx does not define.
DATA_TYPES = tuple(range(0, 26)) + (99, 1000, -5)


# ---------------------------------------------------------------- seeds

def _cbr_model() -> onnx.ModelProto:
    """Conv -> BN -> Relu -> 1x1 Conv + residual -> pool -> Reshape -> Gemm + ConstantOfShape:
    the patterns the passes rewrite, a shape constant and a ConstantOfShape to make huge."""
    rng = np.random.default_rng(0)

    def init(name, *shape, dtype=np.float32):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(dtype), name)

    inits = [init("w1", 8, 3, 3, 3), init("b1", 8), init("scale", 8), init("bias", 8), init("mean", 8),
             numpy_helper.from_array(rng.uniform(0.5, 2, 8).astype(np.float32), "var"), init("w2", 8, 8, 1, 1),
             numpy_helper.from_array(np.array([1, 8], np.int64), "shape"), init("w3", 4, 8), init("b3", 4),
             numpy_helper.from_array(np.array([1, 4], np.int64), "cos_shape")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "scale", "bias", "mean", "var"], ["n1"], name="bn",
                              epsilon=1e-5),
             helper.make_node("Relu", ["n1"], ["r1"], name="relu"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
             helper.make_node("Add", ["r1", "c2"], ["a1"], name="residual"),
             helper.make_node("GlobalAveragePool", ["a1"], ["g"], name="pool"),
             helper.make_node("Reshape", ["g", "shape"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["y0"], name="fc", transB=1, alpha=1.0),
             helper.make_node("ConstantOfShape", ["cos_shape"], ["k"], name="cos",
                              value=numpy_helper.from_array(np.array([0.5], np.float32))),
             helper.make_node("Add", ["y0", "k"], ["y"], name="bias_add")]
    graph = helper.make_graph(nodes, "cbr", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model, full_check=True)
    return model


def _export_atto(path: Path) -> None:
    from updp.workflows.config import ExportConfig
    from updp.workflows.export import export

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export(ExportConfig(out=str(path), model="convnext_atto", input_size=(32, 32), num_classes=10, blocks=[1],
                            optimize=False, verify=False, polish=False))


def _save_float_tensors_external(model: onnx.ModelProto, folder: Path) -> None:
    """`folder/model.onnx` with every float initializer in `folder/model.data`. The int64 shape
    constants stay inline: ONNX Runtime refuses a Reshape or ConstantOfShape whose shape is in
    external data, and a seed it cannot run would test nothing past loading."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    offset = 0
    with open(folder / "model.data", "wb") as data:
        for t in model.graph.initializer:
            if t.data_type != TensorProto.FLOAT:
                continue
            raw = numpy_helper.to_array(t).tobytes()
            data.write(raw)
            t.ClearField("float_data")
            t.raw_data = raw
            external_data_helper.set_external_data(t, "model.data", offset, len(raw))
            t.ClearField("raw_data")
            t.data_location = TensorProto.EXTERNAL
            offset += len(raw)
    (folder / "model.onnx").write_bytes(model.SerializeToString())


def build_seeds(root: Path) -> Path:
    """Every seed as `root/<name>/model.onnx` (cbr_ext with `model.data` beside it); built once."""
    if (root / "complete").exists():
        return root
    for name in SEEDS:
        (root / name).mkdir(parents=True, exist_ok=True)
    shutil.copy(LIGHT / "light_squeezenet.onnx", root / "squeezenet" / "model.onnx")
    shutil.copy(LIGHT / "light_shufflenet.onnx", root / "shufflenet" / "model.onnx")
    _export_atto(root / "atto" / "model.onnx")
    cbr = _cbr_model()
    onnx.save(cbr, str(root / "cbr" / "model.onnx"))
    _save_float_tensors_external(cbr, root / "cbr_ext")
    (root / "complete").write_text("ok\n")
    return root


# ---------------------------------------------------------------- helpers of the mutations

def _shaped_value_infos(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    g = model.graph
    return [vi for vi in (*g.input, *g.output, *g.value_info)
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")]


def _with(nodes, rng: random.Random, pred):
    hits = [n for n in nodes if pred(n)]
    return rng.choice(hits) if hits else None


def _node_with_attr(model, rng, attr_type):
    node = _with(model.graph.node, rng, lambda n: any(a.type == attr_type for a in n.attribute))
    if node is None:
        return None, None
    return node, rng.choice([a for a in node.attribute if a.type == attr_type])


def _const_tensor(model, name: str):
    """The TensorProto that holds the constant `name` (an initializer or a Constant's value)."""
    for t in model.graph.initializer:
        if t.name == name:
            return t
    for n in model.graph.node:
        if n.op_type == "Constant" and name in n.output:
            return next((a.t for a in n.attribute if a.name == "value"), None)
    return None


def _set_int64s(t: onnx.TensorProto, values: list[int]) -> None:
    t.ClearField("raw_data")
    t.ClearField("int64_data")
    t.ClearField("external_data")
    t.data_location = TensorProto.DEFAULT
    t.data_type = TensorProto.INT64
    t.int64_data.extend(values)
    del t.dims[:]
    t.dims.append(len(values))


def _insert_after_output(model, op: str, extra_inputs: list[str], **attrs) -> onnx.NodeProto:
    """A new node `op` between the first graph output and its producer."""
    out = model.graph.output[0].name
    for n in model.graph.node:
        for k, o in enumerate(n.output):
            if o == out:
                n.output[k] = out + "_fuzz_pre"
    for n in model.graph.node:
        for k, i in enumerate(n.input):
            if i == out:
                n.input[k] = out + "_fuzz_pre"
    node = helper.make_node(op, [out + "_fuzz_pre", *extra_inputs], [out], name=f"fuzz_{op}", **attrs)
    model.graph.node.append(node)
    return node


# ---------------------------------------------------------------- protobuf mutations
# Each takes (model, rng) and returns what it did, in a few words.

def m_dim_odd(model, rng):
    vi = rng.choice(_shaped_value_infos(model))
    dims = vi.type.tensor_type.shape.dim
    if not dims:
        dims.add().dim_value = 3
        return f"{vi.name!r} rank 0 -> 1"
    d = rng.choice(dims)
    d.dim_value = rng.choice(ODD_DIMS)
    return f"{vi.name!r} dim -> {d.dim_value}"


def m_dim_huge(model, rng):
    vi = rng.choice(_shaped_value_infos(model))
    dims = vi.type.tensor_type.shape.dim
    d = rng.choice(dims) if dims else dims.add()
    d.dim_value = rng.choice(HUGE)
    return f"{vi.name!r} dim -> {d.dim_value}"


def m_shape_rank(model, rng):
    vi = rng.choice(_shaped_value_infos(model))
    dims = vi.type.tensor_type.shape.dim
    if dims and rng.random() < 0.5:
        del dims[rng.randrange(len(dims))]
        return f"{vi.name!r} one dim fewer"
    d = dims.add()
    d.dim_param = rng.choice(["N", "", "batch\nsize", "ü"])
    return f"{vi.name!r} one more dim {d.dim_param!r}"


def m_elem_type(model, rng):
    vi = rng.choice([vi for vi in (*model.graph.input, *model.graph.output, *model.graph.value_info)
                     if vi.type.HasField("tensor_type")])
    vi.type.tensor_type.elem_type = rng.choice([c for c in DATA_TYPES if c >= 0])
    return f"{vi.name!r} elem_type -> {vi.type.tensor_type.elem_type}"


def m_init_dims(model, rng):
    t = rng.choice(model.graph.initializer)
    dims = list(t.dims)
    choice = rng.randrange(6)
    if choice == 0 and dims:
        dims[rng.randrange(len(dims))] += rng.choice([-1, 1, 7])
    elif choice == 1:
        dims = dims + [rng.choice([2, 3])]
    elif choice == 2:
        dims = []
    elif choice == 3:
        dims = [rng.choice([-1, 0, -2**40])] + dims[1:]
    elif choice == 4:
        dims = [rng.choice(HUGE)] + dims[1:]
    else:
        dims = [2**32, 2**32]
    del t.dims[:]
    t.dims.extend(dims)
    return f"initializer {t.name!r} dims -> {dims}"


def m_init_dtype(model, rng):
    t = rng.choice(model.graph.initializer)
    t.data_type = rng.choice([c for c in DATA_TYPES if c >= 0])
    return f"initializer {t.name!r} data_type -> {t.data_type}"


def m_init_data(model, rng):
    t = _with(model.graph.initializer, rng, lambda t: t.HasField("raw_data")) or rng.choice(model.graph.initializer)
    if t.HasField("raw_data") and rng.random() < 0.6:
        cut = rng.randrange(len(t.raw_data) + 1)
        t.raw_data = t.raw_data[:cut] if rng.random() < 0.5 else t.raw_data + bytes(rng.randrange(1, 9))
        return f"initializer {t.name!r} raw_data -> {len(t.raw_data)} bytes"
    t.ClearField("raw_data")
    t.float_data.extend([1.0] * rng.randrange(1, 5))
    t.int64_data.extend([2**40] * rng.randrange(0, 3))
    return f"initializer {t.name!r} typed data of the wrong length"


def m_attr_int_for_ints(model, rng):
    node, attr = _node_with_attr(model, rng, onnx.AttributeProto.INTS)
    if node is None:
        return m_attr_missing(model, rng)
    node.attribute.remove(attr)
    node.attribute.append(helper.make_attribute(attr.name, rng.choice([0, 1, 3, -1])))
    return f"{node.op_type} {node.name!r} {attr.name}: int instead of ints"


def m_attr_string_for_float(model, rng):
    node, attr = _node_with_attr(model, rng, onnx.AttributeProto.FLOAT)
    if node is None:
        node = rng.choice(model.graph.node)
        attr = onnx.AttributeProto(name="epsilon")
    else:
        node.attribute.remove(attr)
    node.attribute.append(helper.make_attribute(attr.name, rng.choice(["1e-5", "", "x\ny"])))
    return f"{node.op_type} {node.name!r} {attr.name}: string instead of float"


def m_attr_graph(model, rng):
    node = _with(model.graph.node, rng, lambda n: n.op_type not in ("If", "Loop", "Scan"))
    body = helper.make_graph([helper.make_node("Identity", ["a"], ["b"])], "body",
                             [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
                             [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])])
    name = rng.choice(["body", "then_branch", "kernel_shape", "fuzz"])
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, body))
    return f"{node.op_type} {node.name!r}: graph attribute {name!r}"


def m_attr_missing(model, rng):
    node = _with(model.graph.node, rng, lambda n: len(n.attribute) > 0)
    if node is None:
        return m_input_dangling(model, rng)
    if rng.random() < 0.3:
        names = [a.name for a in node.attribute]
        del node.attribute[:]
        return f"{node.op_type} {node.name!r}: all attributes removed {names}"
    a = rng.choice(node.attribute)
    node.attribute.remove(a)
    return f"{node.op_type} {node.name!r}: attribute {a.name!r} removed"


def m_attr_value(model, rng):
    node = _with(model.graph.node, rng, lambda n: any(a.type in (onnx.AttributeProto.INT, onnx.AttributeProto.INTS)
                                                      for a in n.attribute))
    if node is None:
        return m_attr_graph(model, rng)
    a = rng.choice([a for a in node.attribute if a.type in (onnx.AttributeProto.INT, onnx.AttributeProto.INTS)])
    value = rng.choice([0, -1, -100, 7, 2**40, 2**63 - 1])
    if a.type == onnx.AttributeProto.INT:
        a.i = value
    else:
        n = len(a.ints) or 1
        del a.ints[:]
        a.ints.extend([value] * rng.choice([n, n + 1, max(n - 1, 0)]))
    return f"{node.op_type} {node.name!r} {a.name} -> {value}"


def m_attr_type_code(model, rng):
    node = _with(model.graph.node, rng, lambda n: len(n.attribute) > 0)
    if node is None:
        return m_attr_graph(model, rng)
    a = rng.choice(node.attribute)
    a.type = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 99])
    return f"{node.op_type} {node.name!r} {a.name}: type code -> {a.type}"


def m_input_dangling(model, rng):
    node = _with(model.graph.node, rng, lambda n: len(n.input) > 0)
    k = rng.randrange(len(node.input))
    node.input[k] = rng.choice(["fuzz_nowhere", "", " "])
    return f"{node.op_type} {node.name!r} input {k} -> {node.input[k]!r}"


def m_output_duplicate(model, rng):
    nodes = list(model.graph.node)
    if rng.random() < 0.3:
        model.graph.output.append(model.graph.output[0])
        return "graph output listed twice"
    a, b = rng.sample(nodes, 2)
    b.output[0] = a.output[0]
    return f"{b.op_type} {b.name!r} writes {a.output[0]!r} too"


def m_cycle(model, rng):
    nodes = list(model.graph.node)
    k = rng.randrange(len(nodes))
    j = rng.randrange(k, len(nodes))
    target = nodes[k]
    if not target.input:
        target.input.append(nodes[j].output[0])
    else:
        target.input[rng.randrange(len(target.input))] = nodes[j].output[0]
    return f"{target.op_type} {target.name!r} reads {nodes[j].output[0]!r} (node {j} >= {k})"


def m_opset_default_missing(model, rng):
    kept = [o for o in model.opset_import if o.domain not in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    if rng.random() < 0.5:
        model.opset_import.append(helper.make_opsetid("com.fuzz", 1))
    return "no default-domain opset"


def m_opset_version(model, rng):
    version = rng.choice([0, 1, 5, 8, 10000, 2**31, -1])
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = version
    return f"default opset -> {version}"


def m_opset_domain(model, rng):
    domain = rng.choice(["com.fuzz", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training"])
    if rng.random() < 0.7:
        model.opset_import.append(helper.make_opsetid(domain, rng.choice([0, 1, 10000])))
    node = rng.choice(model.graph.node)
    node.domain = domain
    return f"{node.op_type} {node.name!r} in domain {domain!r}"


def m_ir_version(model, rng):
    model.ir_version = rng.choice([0, 1, 2, 100, 2**40, -1])
    return f"ir_version -> {model.ir_version}"


HUGE_SHAPES = ([2**40], [2**40, -1], [2**31, 2**31], [-1, -1], [0, 2**40], [2**62, 4], [2**63 - 1, 2])


def m_reshape_huge(model, rng):
    shape = rng.choice(HUGE_SHAPES)
    node = _with(model.graph.node, rng, lambda n: n.op_type == "Reshape" and len(n.input) > 1
                 and _const_tensor(model, n.input[1]) is not None)
    if node is None:
        model.graph.initializer.append(numpy_helper.from_array(np.array(shape, np.int64), "fuzz_shape"))
        _insert_after_output(model, "Reshape", ["fuzz_shape"])
        return f"Reshape to {shape} inserted before the output"
    _set_int64s(_const_tensor(model, node.input[1]), shape)
    return f"Reshape {node.name!r} shape -> {shape}"


def m_cos_huge(model, rng):
    shape = rng.choice([[2**40], [2**20, 2**20, 2**20], [2**31], [-1], [2**63 - 1], [2**31, 2, 2], [2**29, 2], [2**25]])
    node = _with(model.graph.node, rng, lambda n: n.op_type == "ConstantOfShape"
                 and _const_tensor(model, n.input[0]) is not None)
    if node is None:
        model.graph.initializer.append(numpy_helper.from_array(np.array(shape, np.int64), "fuzz_cos_shape"))
        model.graph.node.append(helper.make_node("ConstantOfShape", ["fuzz_cos_shape"], ["fuzz_cos"]))
        model.graph.output.append(helper.make_tensor_value_info("fuzz_cos", TensorProto.FLOAT, shape))
        return f"ConstantOfShape {shape} as a new output"
    _set_int64s(_const_tensor(model, node.input[0]), shape)
    return f"ConstantOfShape {node.name!r} shape -> {shape}"


def m_node_remove(model, rng):
    k = rng.randrange(len(model.graph.node))
    node = model.graph.node[k]
    del model.graph.node[k]
    return f"node {k} ({node.op_type} {node.name!r}) removed"


def m_init_remove(model, rng):
    k = rng.randrange(len(model.graph.initializer))
    name = model.graph.initializer[k].name
    del model.graph.initializer[k]
    return f"initializer {name!r} removed"


def m_op_type(model, rng):
    node = rng.choice(model.graph.node)
    before = node.op_type
    node.op_type = rng.choice(["FuzzOp", "Relu", "Conv", "Gemm", "If", "Loop", "Scan", "Reshape", "Resize",
                               "MatMul", "LayerNormalization", "Softmax", "BatchNormalization", "Constant", ""])
    return f"{before} {node.name!r} -> op {node.op_type!r}"


def m_names(model, rng):
    weird = rng.choice(["in\nput", "a\x00b", "ünï", "", " ", "x" * 3000, "updp optimize: error: fake"])
    if rng.random() < 0.5:
        vi = rng.choice(model.graph.input)
        old = vi.name
        vi.name = weird
        for n in model.graph.node:
            for k, i in enumerate(n.input):
                if i == old:
                    n.input[k] = weird
        return f"input {old!r} renamed {weird[:20]!r}"
    node = rng.choice(model.graph.node)
    node.name = weird
    if rng.random() < 0.5:
        node.op_type = "FuzzOp"
    return f"node name {weird[:20]!r} ({node.op_type})"


def m_graph_outputs(model, rng):
    choice = rng.randrange(3)
    if choice == 0:
        del model.graph.output[:]
        return "no graph outputs"
    if choice == 1:
        model.graph.output.append(helper.make_tensor_value_info("fuzz_missing", TensorProto.FLOAT, [1]))
        return "graph output nobody produces"
    model.graph.output[0].type.CopyFrom(onnx.TypeProto())
    return "graph output without a type"


def m_graph_inputs(model, rng):
    choice = rng.randrange(4)
    if choice == 0:
        model.graph.input.append(model.graph.input[0])
        return "graph input listed twice"
    if choice == 1:
        name = model.graph.input[0].name
        del model.graph.input[0]
        return f"graph input {name!r} removed"
    vi = onnx.ValueInfoProto(name="fuzz_extra")
    if choice == 2:
        vi.type.CopyFrom(helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(1, [2])))
    else:
        vi.type.CopyFrom(helper.make_sequence_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, None)))
    model.graph.input.append(vi)
    return f"extra graph input of type {vi.type.WhichOneof('value')}"


def m_input_kind(model, rng):
    vi = rng.choice(model.graph.input)
    kind = rng.randrange(3)
    elem = helper.make_tensor_type_proto(vi.type.tensor_type.elem_type or 1, None)
    vi.type.CopyFrom([helper.make_sequence_type_proto(elem), helper.make_optional_type_proto(elem),
                      onnx.TypeProto()][kind])
    return f"input {vi.name!r} type -> {['sequence', 'optional', 'nothing'][kind]}"


def m_tensor_attr(model, rng):
    node, attr = _node_with_attr(model, rng, onnx.AttributeProto.TENSOR)
    if node is None:
        return m_init_dims(model, rng)
    t = attr.t
    choice = rng.randrange(3)
    if choice == 0:
        del t.dims[:]
        t.dims.extend([rng.choice(HUGE)])
    elif choice == 1:
        t.data_type = rng.choice([0, 99, 8])
    else:
        t.ClearField("raw_data")
        t.ClearField("float_data")
    return f"{node.op_type} {node.name!r} tensor attribute {attr.name!r} broken ({choice})"


def m_function(model, rng):
    """A local function a node calls, with a body that reads a name nobody produces."""
    fn = helper.make_function("local.fuzz", "Fn", ["a"], ["b"],
                              [helper.make_node("Relu", [rng.choice(["a", "nowhere"])], ["b"])],
                              [helper.make_opsetid("", 17)])
    model.functions.append(fn)
    model.opset_import.append(helper.make_opsetid("local.fuzz", 1))
    node = rng.choice(model.graph.node)
    node.domain, node.op_type = "local.fuzz", "Fn"
    return f"{node.name!r} calls a local function"


def m_sparse(model, rng):
    t = rng.choice(model.graph.initializer)
    values = numpy_helper.from_array(np.ones(3, np.float32), t.name)
    indices = numpy_helper.from_array(np.array(rng.choice([[0, 1, 2], [2**40, 0, 1], [-1, 5, 9]]), np.int64))
    model.graph.initializer.remove(t)
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, list(t.dims) or [4]))
    return f"initializer {t.name!r} as a sparse tensor with odd indices"


# ---------------------------------------------------------------- valid-file mutations
# Files that pass onnx's checker, with values or structure the passes and the check must handle:
# they reach past loading, into onnxsim, the passes, the verification and ONNX Runtime.

FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16)


def _inline_floats(model) -> list[onnx.TensorProto]:
    return [t for t in model.graph.initializer
            if t.data_type in FLOAT_TYPES and t.data_location != TensorProto.EXTERNAL]


def m_weights_special(model, rng):
    t = rng.choice(_inline_floats(model))
    a = numpy_helper.to_array(t).copy()
    value = rng.choice([np.nan, np.inf, -np.inf, 3e38, 1e-45, -0.0, 0.0])
    flat = a.reshape(-1)
    if flat.size:
        count = max(1, flat.size // rng.choice([1, 3, 50]))
        picks = np.random.default_rng(rng.randrange(2**32)).choice(flat.size, count, replace=False)
        flat[picks] = value
    t.CopyFrom(numpy_helper.from_array(a, t.name))
    return f"initializer {t.name!r}: values -> {value}"


def m_data_flip(model, rng):
    t = rng.choice([t for t in _inline_floats(model) if t.HasField("raw_data") and t.raw_data])
    buf = bytearray(t.raw_data)
    for _ in range(rng.randint(1, 8)):
        buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    t.raw_data = bytes(buf)
    return f"initializer {t.name!r}: bits of its data flipped"


def m_bn_odd(model, rng):
    node = _with(model.graph.node, rng, lambda n: n.op_type == "BatchNormalization")
    if node is None:
        return m_weights_special(model, rng)
    var = _const_tensor(model, node.input[4]) if len(node.input) > 4 else None
    if var is not None and var.data_type == TensorProto.FLOAT and var.data_location != TensorProto.EXTERNAL \
            and rng.random() < 0.5:
        a = numpy_helper.to_array(var) * 0 + rng.choice([0.0, -1.0, 1e-30])
        var.CopyFrom(numpy_helper.from_array(a.astype(np.float32), var.name))
        return f"BatchNormalization {node.name!r}: variance -> {a.flat[0] if a.size else '[]'}"
    for a in list(node.attribute):
        if a.name == "epsilon":
            node.attribute.remove(a)
    eps = rng.choice([0.0, -1.0, 1e10, float("nan")])
    node.attribute.append(helper.make_attribute("epsilon", eps))
    return f"BatchNormalization {node.name!r}: epsilon -> {eps}"


VALID_INTS = {"pads": (0, 1, 2), "strides": (1, 2), "dilations": (1, 2), "kernel_shape": (1, 2, 3)}


def m_attr_valid(model, rng):
    """Another value an attribute may take (value_info is dropped, so the shapes are inferred anew)."""
    node = _with(model.graph.node, rng, lambda n: any(a.name in VALID_INTS or a.type == onnx.AttributeProto.FLOAT
                                                      or a.name in ("axis", "transA", "transB") for a in n.attribute))
    if node is None:
        return m_weights_special(model, rng)
    del model.graph.value_info[:]
    a = rng.choice([a for a in node.attribute if a.name in VALID_INTS or a.type == onnx.AttributeProto.FLOAT
                    or a.name in ("axis", "transA", "transB")])
    if a.name in VALID_INTS:
        values = [rng.choice(VALID_INTS[a.name]) for _ in a.ints]
        del a.ints[:]
        a.ints.extend(values)
    elif a.type == onnx.AttributeProto.FLOAT:
        a.f = rng.choice([0.0, -1.0, 0.5, 1e-30, 1e30])
    else:
        a.i = rng.choice([-1, 0, 1])
    return f"{node.op_type} {node.name!r} {a.name} -> {list(a.ints) if a.ints else a.f if a.type == 1 else a.i}"


def m_input_dims(model, rng):
    del model.graph.value_info[:]
    vi = rng.choice([vi for vi in model.graph.input if vi.type.tensor_type.shape.dim])
    d = vi.type.tensor_type.shape.dim[0]
    value = rng.choice(["N", "", 0, 2, 3])
    if isinstance(value, str):
        d.dim_param = value
    else:
        d.dim_value = value
    for out in model.graph.output:
        if out.type.tensor_type.shape.dim and rng.random() < 0.7:
            out.type.tensor_type.shape.dim[0].dim_param = "N"
    return f"input {vi.name!r} batch -> {value!r}"


def m_node_names(model, rng):
    name = rng.choice(["", "n", model.graph.input[0].name if model.graph.input else "x"])
    for n in model.graph.node:
        n.name = name
    return f"every node named {name!r}"


def m_unused(model, rng):
    model.graph.initializer.append(numpy_helper.from_array(np.ones((2, 2), np.float32), "fuzz_unused"))
    src = model.graph.input[0].name
    model.graph.node.insert(rng.randrange(len(model.graph.node) + 1),
                            helper.make_node("Relu", [src], ["fuzz_dead"], name="fuzz_dead"))
    return "an unused initializer and a dead node"


def m_extra_output(model, rng):
    """An intermediate tensor is also a graph output: the passes must keep it, computed as before."""
    outputs = {o.name for o in model.graph.output}
    inferred = onnx.shape_inference.infer_shapes(model).graph.value_info
    vi = rng.choice([vi for vi in inferred if vi.name not in outputs and vi.type.tensor_type.HasField("shape")])
    model.graph.output.append(vi)
    return f"{vi.name!r} is a graph output too"


def m_output_is_input(model, rng):
    if rng.random() < 0.5 or not model.graph.initializer:
        vi = model.graph.input[0]
        model.graph.output.append(vi)
        return f"graph input {vi.name!r} is a graph output too"
    t = rng.choice(model.graph.initializer)
    model.graph.output.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return f"initializer {t.name!r} is a graph output"


def m_opset_valid(model, rng):
    version = rng.choice([11, 12, 13, 14, 15, 16, 18, 19, 20, 21, 22])
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = version
    model.ir_version = max(model.ir_version, helper.find_min_ir_version_for(list(model.opset_import)))
    return f"default opset stamped {version} (no conversion)"


def m_init_as_input(model, rng):
    names = {vi.name for vi in model.graph.input}
    t = rng.choice([t for t in model.graph.initializer if t.name not in names])
    model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    model.ir_version = max(model.ir_version, 4)
    return f"initializer {t.name!r} is a graph input too"


def m_dtype(model, rng):
    """The whole float model in another float type (float64, float16, bfloat16)."""
    to = rng.choice([TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16])
    np_to = helper.tensor_dtype_to_np_dtype(to)
    del model.graph.value_info[:]
    for t in _inline_floats(model):
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np_to), t.name))
    for vi in (*model.graph.input, *model.graph.output):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = to
    for n in model.graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np_to), a.t.name))
    return f"every float tensor -> {TensorProto.DataType.Name(to)}"


# ---------------------------------------------------------------- external-data mutations
# Each takes (model, rng, folder of the case's model) and edits the model's entries or the files.

def _external(model) -> list[onnx.TensorProto]:
    return [t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]


def _entry(t: onnx.TensorProto, key: str, value: str | None) -> None:
    for e in list(t.external_data):
        if e.key == key:
            t.external_data.remove(e)
    if value is not None:
        t.external_data.add(key=key, value=value)


def _entries(t: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def e_missing_file(model, rng, folder: Path):
    if rng.random() < 0.5:
        (folder / "model.data").unlink()
        return "model.data deleted"
    t = rng.choice(_external(model))
    _entry(t, "location", "no_such.data")
    return f"{t.name!r} location -> no_such.data"


def e_offset(model, rng, folder: Path):
    t = rng.choice(_external(model))
    size = (folder / "model.data").stat().st_size
    value = rng.choice([size, size + 100, 2**40, -8, "abc", int(_entries(t).get("offset", 0)) + 1])
    _entry(t, "offset", str(value))
    return f"{t.name!r} offset -> {value}"


def e_length(model, rng, folder: Path):
    t = rng.choice(_external(model))
    size = (folder / "model.data").stat().st_size
    true = int(_entries(t).get("length", 0))
    value = rng.choice([0, max(true - 4, 0), true + 4, size * 2, 2**40, -1, "xyz"])
    _entry(t, "length", str(value))
    return f"{t.name!r} length -> {value}"


def e_outside(model, rng, folder: Path):
    """A location outside the model's folder, pointing at a real copy of the data (a reader
    that follows it would succeed: the check is that nothing does)."""
    outside = folder.parent / "outside.data"
    if (folder / "model.data").exists():
        shutil.copy(folder / "model.data", outside)
    location = rng.choice(["../outside.data", str(outside), "sub/../../outside.data", "/etc/hostname"])
    for t in _external(model):
        _entry(t, "location", location)
    return f"every location -> {location} {OUTSIDE}"


def e_directory(model, rng, folder: Path):
    (folder / "sub").mkdir(exist_ok=True)
    location = rng.choice([".", "sub", "", "sub/"])
    t = rng.choice(_external(model))
    _entry(t, "location", location)
    return f"{t.name!r} location -> {location!r} (a directory)"


def e_special(model, rng, folder: Path):
    """A location that is a FIFO (a reader would block for ever) or a device."""
    if rng.random() < 0.6:
        os.mkfifo(folder / "pipe.data")
        location = "pipe.data"
    else:
        os.symlink("/dev/zero", folder / "zero.data")
        location = "zero.data"
    t = rng.choice(_external(model))
    _entry(t, "location", location)
    return f"{t.name!r} location -> {location} {OUTSIDE}"


def e_symlink(model, rng, folder: Path):
    outside = folder.parent / "outside.data"
    if (folder / "model.data").exists():
        shutil.copy(folder / "model.data", outside)
    target = rng.choice(["model.data", str(outside), "../outside.data", "missing.data"])
    os.symlink(target, folder / "link.data")
    for t in _external(model):
        _entry(t, "location", "link.data")
    return f"every location -> link.data -> {target}" + (f" {OUTSIDE}" if "outside" in target else "")


def e_keys(model, rng, folder: Path):
    t = rng.choice(_external(model))
    choice = rng.randrange(4)
    if choice == 0:
        _entry(t, "location", None)
    elif choice == 1:
        t.external_data.add(key="location", value="model.data")
    elif choice == 2:
        t.external_data.add(key="fuzz", value="1")
    else:
        _entry(t, "checksum", "0" * 40)
    return f"{t.name!r} external_data keys edited ({choice})"


def e_flag(model, rng, folder: Path):
    t = rng.choice(_external(model))
    choice = rng.randrange(3)
    if choice == 0:
        t.data_location = TensorProto.DEFAULT
    elif choice == 1:
        del t.external_data[:]
    else:
        t.raw_data = b"\x00" * 4
    return f"{t.name!r} data_location / entries inconsistent ({choice})"


def e_truncated(model, rng, folder: Path):
    data = (folder / "model.data").read_bytes()
    (folder / "model.data").write_bytes(data[: rng.randrange(len(data))])
    return "model.data truncated"


def e_huge_dims(model, rng, folder: Path):
    t = rng.choice(_external(model))
    dims = rng.choice([[2**20, 2**20], [2**40], [2**31, 4]])
    del t.dims[:]
    t.dims.extend(dims)
    if rng.random() < 0.5:
        _entry(t, "length", str(int(np.prod(dims, dtype=np.float64)) * 4))
    return f"{t.name!r} dims -> {dims} (external)"


# ---------------------------------------------------------------- byte mutations
# Each takes (bytes, rng) and returns (bytes, what it did).

def b_flip(data, rng):
    buf = bytearray(data)
    offsets = sorted(rng.randrange(len(buf)) for _ in range(rng.randint(1, 16)))
    for o in offsets:
        buf[o] ^= rng.randint(1, 255)
    return bytes(buf), f"{len(offsets)} bytes flipped at {offsets[:4]}"


def b_truncate(data, rng):
    cut = rng.randrange(len(data))
    return data[:cut], f"truncated to {cut} of {len(data)} bytes"


def b_append(data, rng):
    junk = rng.randbytes(rng.randint(1, 4096)) if rng.random() < 0.7 else data[: rng.randint(1, 200)]
    return data + junk, f"{len(junk)} bytes appended"


def b_insert(data, rng):
    at = rng.randrange(len(data))
    junk = rng.randbytes(rng.randint(1, 64))
    return data[:at] + junk + data[at:], f"{len(junk)} bytes inserted at {at}"


def b_zero_run(data, rng):
    at, n = rng.randrange(len(data)), rng.randint(1, 512)
    fill = rng.choice([b"\x00", b"\xff"])
    return data[:at] + fill * n + data[at + n:], f"{n} bytes at {at} -> {fill!r}"


def b_empty(data, rng):
    return b"", "empty file"


def b_not_onnx(data, rng):
    other = rng.choice([b"hello\n", b"\x89PNG\r\n\x1a\n" + bytes(64), b'{"graph": {}}', b"PK\x03\x04" + bytes(30),
                        numpy_helper.from_array(np.ones(3, np.float32)).SerializeToString(), b"\x08" * 9])
    return other, f"not an ONNX file ({other[:8]!r})"


def b_bad_utf8(data, rng):
    """A name (or whatever ASCII run it hits) made invalid UTF-8 at the same length: protobuf then
    hands that string field as bytes."""
    names = re.findall(rb"[A-Za-z_/][A-Za-z0-9_./]{2,40}", data[:200_000])
    if not names:
        return b_flip(data, rng)
    name = rng.choice(names)
    bad = name[:-1] + rng.choice([b"\xd6", b"\xff", b"\xc3"])
    every = rng.random() < 0.5
    return data.replace(name, bad, -1 if every else 1), f"{name[:20]!r} -> invalid UTF-8 ({'all' if every else 'one'})"


SPECIAL_INPUTS = ("directory", "fifo", "symlink-to-directory", "dangling-symlink")


@dataclass(frozen=True)
class Mutation:
    layer: str  # "proto", "ext", "bytes" or "path"
    fn: object


MUTATIONS: dict[str, Mutation] = {
    **{k: Mutation("proto", f) for k, f in {
        "dim-odd": m_dim_odd, "dim-huge": m_dim_huge, "shape-rank": m_shape_rank, "elem-type": m_elem_type,
        "init-dims": m_init_dims, "init-dtype": m_init_dtype, "init-data": m_init_data,
        "attr-int-for-ints": m_attr_int_for_ints, "attr-string-for-float": m_attr_string_for_float,
        "attr-graph": m_attr_graph, "attr-missing": m_attr_missing, "attr-value": m_attr_value,
        "attr-type-code": m_attr_type_code, "input-dangling": m_input_dangling,
        "output-duplicate": m_output_duplicate, "cycle": m_cycle, "opset-no-default": m_opset_default_missing,
        "opset-version": m_opset_version, "opset-domain": m_opset_domain, "ir-version": m_ir_version,
        "reshape-huge": m_reshape_huge, "cos-huge": m_cos_huge, "node-remove": m_node_remove,
        "init-remove": m_init_remove, "op-type": m_op_type, "names": m_names, "graph-outputs": m_graph_outputs,
        "graph-inputs": m_graph_inputs, "input-kind": m_input_kind, "tensor-attr": m_tensor_attr,
        "function": m_function, "sparse": m_sparse, "weights-special": m_weights_special,
        "data-flip": m_data_flip, "bn-odd": m_bn_odd, "attr-valid": m_attr_valid, "input-dims": m_input_dims,
        "node-names": m_node_names, "unused": m_unused, "extra-output": m_extra_output,
        "output-is-input": m_output_is_input, "opset-valid": m_opset_valid, "init-as-input": m_init_as_input,
        "dtype": m_dtype}.items()},
    **{k: Mutation("ext", f) for k, f in {
        "ext-missing": e_missing_file, "ext-offset": e_offset, "ext-length": e_length, "ext-outside": e_outside,
        "ext-directory": e_directory, "ext-special": e_special, "ext-symlink": e_symlink, "ext-keys": e_keys,
        "ext-flag": e_flag, "ext-truncated": e_truncated, "ext-huge-dims": e_huge_dims}.items()},
    **{k: Mutation("bytes", f) for k, f in {
        "flip": b_flip, "truncate": b_truncate, "append": b_append, "insert": b_insert, "zero-run": b_zero_run,
        "empty": b_empty, "not-onnx": b_not_onnx, "bad-utf8": b_bad_utf8}.items()},
    "special-input": Mutation("path", None),
}
KINDS = tuple(MUTATIONS)
# The default suite: every kind first once (and a few more); `-m fuzz`: 1,200 more.
DEFAULT_CASES = range(0, max(60, len(KINDS)))
FUZZ_CASES = range(len(DEFAULT_CASES), len(DEFAULT_CASES) + 1200)
LAYER_ORDER = {"proto": 0, "ext": 1, "bytes": 2, "path": 3}


# ---------------------------------------------------------------- the plan of a case

@dataclass(frozen=True)
class Plan:
    """What case `index` does, decided by `index` alone (so a failure reproduces from its id)."""

    index: int
    seed: str
    kinds: tuple[str, ...]
    command: str  # "optimize", "bench" or "bench-pair"
    flags: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"f{self.index:04d}"

    def describe(self) -> str:
        return f"{self.id} {self.command} {self.seed} {'+'.join(self.kinds)} {' '.join(self.flags)}".rstrip()


def plan(index: int) -> Plan:
    """Every kind in turn as the first mutation (each stretch of `len(KINDS)` cases has them all),
    then up to two more at random; byte and path mutations come last, on the serialized file."""
    rng = random.Random(f"updp-fuzz-plan-{SALT}{index}")
    first = KINDS[index % len(KINDS)]
    layer = MUTATIONS[first].layer
    if layer == "ext":
        seed = "cbr_ext"
    else:
        seed = rng.choices(SEEDS, weights=SEED_WEIGHTS)[0]
    kinds = [first]
    extra = rng.choices([0, 1, 2], weights=[6, 3, 1])[0]
    if layer != "path":
        pool = [k for k in KINDS if MUTATIONS[k].layer in ("proto", "bytes")
                or (seed == "cbr_ext" and MUTATIONS[k].layer == "ext")]
        kinds += [rng.choice(pool) for _ in range(extra)]
    kinds = sorted(dict.fromkeys(kinds), key=lambda k: LAYER_ORDER[MUTATIONS[k].layer])
    command = rng.choices(["optimize", "bench", "bench-pair"], weights=[6, 2, 2])[0]
    if command == "optimize":
        flags = rng.choices([(), ("--no-onnxsim",), ("--no-verify",), ("--fold-layernorm",), ("--json",)],
                            weights=[6, 2, 1, 1, 1])[0]
    else:
        level = rng.choices(["disable", "all", "basic"], weights=[6, 3, 1])[0]
        flags = ("--repeats", "1", "--warmup", "0", "--threads", "1", "--opt-level", level)
        flags += rng.choices([(), ("--save", "SAVE"), ("--json",)], weights=[6, 2, 2])[0]
    return Plan(index, seed, tuple(kinds), command, flags)


# ---------------------------------------------------------------- building a case's input

def _special_input(path: Path, rng: random.Random) -> str:
    kind = rng.choice(SPECIAL_INPUTS)
    path.unlink(missing_ok=True)
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink-to-directory":
        os.symlink(path.parent, path)
    else:
        os.symlink(path.parent / "nothing.onnx", path)
    return f"the input path is a {kind}"


def build_input(p: Plan, seeds: Path, folder: Path) -> tuple[Path, list[str]]:
    """Write case `p`'s mutated model as `folder/model.onnx` (with its data file, for cbr_ext)."""
    rng = random.Random(f"updp-fuzz-case-{SALT}{p.index}")
    folder.mkdir(parents=True)
    src = folder / "model.onnx"
    if (seeds / p.seed / "model.data").exists():
        shutil.copy(seeds / p.seed / "model.data", folder / "model.data")
    model = onnx.load(str(seeds / p.seed / "model.onnx"), load_external_data=False)
    details = []
    data = None
    for kind in p.kinds:
        m = MUTATIONS[kind]
        try:
            if m.layer == "proto":
                details.append(m.fn(model, rng))
            elif m.layer == "ext":
                details.append(m.fn(model, rng, folder))
            elif m.layer == "bytes":
                data = model.SerializeToString() if data is None else data
                data, what = m.fn(data, rng) if data else b_append(data, rng)
                details.append(what)
        except (IndexError, ValueError, FileNotFoundError, onnx.shape_inference.InferenceError,
                onnx.checker.ValidationError):  # nothing left to edit (an earlier mutation removed it)
            details.append(f"{kind}: not applicable")
    src.write_bytes(model.SerializeToString() if data is None else data)
    if p.kinds[-1] == "special-input":
        details.append(_special_input(src, rng))
    return src, details


def command_argv(p: Plan, src: Path, seeds: Path, out_dir: Path) -> list[str]:
    flags = [str(out_dir / "bench.json") if f == "SAVE" else f for f in p.flags]
    if p.command == "optimize":
        return ["optimize", str(src), "--out", str(out_dir / "out.onnx"), *flags]
    models = [str(src)]
    if p.command == "bench-pair":
        original = str(seeds / p.seed / "model.onnx")
        models = [original, str(src)] if p.index % 2 else [str(src), original]
    return ["bench", *models, *flags]


# ---------------------------------------------------------------- the worker: run and check a case

@contextlib.contextmanager
def _captured_fds(folder: Path):
    """stdout and stderr of everything in the process (Python, onnx, ORT, onnxsim), as text."""
    got = {}
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile(dir=folder) as out, tempfile.TemporaryFile(dir=folder) as err:
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            yield got
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            for name, f in (("stdout", out), ("stderr", err)):
                f.seek(0)
                got[name] = f.read().decode("utf-8", "replace")


def run_cli(argv: list[str], folder: Path) -> tuple[object, str, str]:
    """`updp.cli.main(argv)` in this process: (exit code, stdout, stderr); captured in `folder`."""
    from updp import cli

    with _captured_fds(folder) as got:
        try:
            rc = cli.main(argv)
        except SystemExit as exc:  # argparse
            rc = exc.code if isinstance(exc.code, int) else 2
        except BaseException as exc:  # what main let through is a failure of its own (or -v's traceback)
            rc = f"raised {type(exc).__name__}: {exc}"
            traceback.print_exc()
    return rc, got["stdout"], got["stderr"]


def _message_problems(cmd: str, rc, stderr: str) -> list[str]:
    lines = [line for line in stderr.splitlines() if line.strip()]
    prefix = f"updp {cmd}: error: "
    errors = [line for line in lines if line.startswith((prefix, f"updp {cmd}: internal error: "))]
    noise = [line for line in lines if not line.startswith(prefix) and not LOG_LINE.match(line)]
    problems = []
    if noise:
        problems.append(f"stray stderr lines: {noise[:3]}")
    if rc == 0:
        if errors:
            problems.append("exit 0 with an error line")
        return problems
    if not lines:
        problems.append(f"exit {rc} and nothing on stderr")
    elif len(errors) != 1 or lines[-1] != errors[0]:
        problems.append(f"not exactly one error line at the end: {lines[-3:]}")
    elif len(errors[0]) < len(prefix) + 12 or "Traceback" in stderr:
        problems.append("the error line names no problem")
    return problems


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def _outputs_match(src: Path, out: Path) -> str | None:
    """An independent check of an exit-0 optimize: both files in ORT (optimizations off) on valid
    inputs; None when they agree, or when ORT cannot run the input itself."""
    import onnxruntime as ort

    from updp.feeds import generate_feeds

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 4
    try:
        ref = ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
        feeds = generate_feeds(onnx.load(str(src), load_external_data=False), trials=1)[0]
        expected = ref.run(None, feeds)
    except Exception:  # the input does not run in ORT: the reference evaluator checked it, or nothing can
        return None
    try:
        got = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"]).run(None, feeds)
    except Exception as exc:  # the input runs and the output does not: a bug
        return f"the output does not run where the input does: {str(exc).splitlines()[0][:200]}"
    for k, (e, g) in enumerate(zip(expected, got)):
        e, g = np.asarray(e), np.asarray(g)
        if e.shape != g.shape or e.dtype != g.dtype:
            return f"output {k}: {e.dtype}{list(e.shape)} vs {g.dtype}{list(g.shape)}"
        if np.issubdtype(e.dtype, np.floating):
            scale = float(np.nanmax(np.abs(e))) if e.size and np.isfinite(e).any() else 0.0
            if not np.allclose(e, g, rtol=0, atol=1e-5 + 1e-3 * scale, equal_nan=True):
                return f"output {k}: max diff {float(np.nanmax(np.abs(e - g))):.3g} at scale {scale:.3g}"
        elif not np.array_equal(e, g):
            return f"output {k}: values differ"
    return None if len(expected) == len(got) else f"{len(expected)} outputs vs {len(got)}"


def _file_problems(p: Plan, rc, src: Path, out_dir: Path, stdout: str, details: list[str]) -> list[str]:
    problems = []
    left = _listing(out_dir)
    if rc != 0 and left:
        problems.append(f"exit {rc} and the output folder holds {left}")
    if rc != 0:
        return problems
    expected = ["out.onnx"] if p.command == "optimize" else []
    expected += ["bench.json"] if "SAVE" in p.flags else []
    if left != sorted(expected):
        problems.append(f"the output folder holds {left}, expected {sorted(expected)}")
    if "--json" in p.flags:
        try:
            json.loads(stdout)
        except ValueError:
            problems.append("--json printed no JSON")
    if p.command == "optimize" and (out_dir / "out.onnx").is_file():
        try:
            onnx.checker.check_model(str(out_dir / "out.onnx"), full_check=True)
        except Exception as exc:  # the checker's own error types
            problems.append(f"the output fails onnx's checker: {str(exc).splitlines()[0][:200]}")
        else:
            mismatch = _outputs_match(src, out_dir / "out.onnx")
            if mismatch:
                problems.append(mismatch)
    if (out_dir / "bench.json").is_file():
        try:
            json.loads((out_dir / "bench.json").read_text())
        except ValueError:
            problems.append("bench.json is not JSON")
    if any(OUTSIDE in d for d in details):
        problems.append("exit 0: data outside the model's folder (or a special file) was read")
    return problems


def run_case(index: int, seeds: Path, work: Path) -> dict:
    """Build case `index`, run its command, check everything; the record the parent asserts on."""
    p = plan(index)
    case = work / p.id
    shutil.rmtree(case, ignore_errors=True)
    in_dir, out_dir, tmp = case / "in", case / "out", case / "tmp"
    src, details = build_input(p, seeds, in_dir)
    argv = command_argv(p, src, seeds, out_dir)
    tmp.mkdir()
    before = _listing(in_dir)
    tempfile.tempdir = os.environ["TMPDIR"] = str(tmp)
    try:
        rc, stdout, stderr = run_cli(argv, case)
    finally:
        tempfile.tempdir = None
        del os.environ["TMPDIR"]
    problems = []
    if rc not in (0, 2, 3, 4):
        problems.append(f"exit {rc}")
    problems += _message_problems(p.command.split("-")[0], rc, stderr)
    problems += _file_problems(p, rc, src, out_dir, stdout, details)
    if _listing(in_dir) != before:
        problems.append(f"the input folder changed: {before} -> {_listing(in_dir)}")
    if _listing(tmp):
        problems.append(f"temporary files left: {_listing(tmp)[:5]}")
    record = {"id": p.id, "plan": p.describe(), "details": details, "argv": argv, "rc": rc,
              "stderr": stderr[-2000:], "problems": problems}
    if rc == 1:
        record["traceback"] = _traceback_of(argv, out_dir, case)
    if not problems:
        shutil.rmtree(case, ignore_errors=True)
    return record


def _traceback_of(argv: list[str], out_dir: Path, case: Path) -> str:
    """The traceback of an internal error: the command again, with -v (main re-raises)."""
    import logging

    shutil.rmtree(out_dir, ignore_errors=True)
    _, _, stderr = run_cli(["-v", *argv], case)
    logging.getLogger("updp").setLevel(logging.NOTSET)
    return stderr[-3000:]


def _reset_warnings(filters: list) -> None:
    """Each case sees Python's warnings as a fresh process would (each shown once per place)."""
    warnings.filters[:] = filters
    warnings._filters_mutated()


def worker_main(result_fd: int) -> None:
    """Serve requests from stdin, one JSON line each: {"seeds": dir} builds the seeds,
    {"case": n, "seeds": dir, "work": dir} runs one case, {"sleep": s} hangs for the parent's test
    of its time bound; answers go to `result_fd`."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    filters = list(warnings.filters)
    answers = os.fdopen(result_fd, "w", buffering=1)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if "sleep" in request:  # the parent's own test of its hang bound
                time.sleep(request["sleep"])
                answer = {"slept": request["sleep"]}
            elif "case" in request:
                _reset_warnings(filters)
                answer = run_case(request["case"], Path(request["seeds"]), Path(request["work"]))
            else:
                build_seeds(Path(request["seeds"]))
                answer = {"seeds": request["seeds"]}
        except Exception:  # the fuzzer's own failure: reported as such, the worker serves on
            answer = {"error": traceback.format_exc()}
        answers.write(json.dumps(answer, default=str) + "\n")


# ---------------------------------------------------------------- the parent side

class Worker:
    """The worker process, restarted after a hang or a crash."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.proc = None
        self.results = None
        self.log = work / "worker.log"

    def _start(self) -> None:
        r, w = os.pipe()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, __file__, "--worker", str(w)], stdin=subprocess.PIPE,
                                         stdout=log, stderr=log, pass_fds=(w,), start_new_session=True,
                                         cwd=self.work)
        os.close(w)
        self.results = os.fdopen(r, "rb")

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.results.close()
            self.proc = None

    def ask(self, request: dict, timeout: float) -> dict:
        """The worker's answer, or {"hang": ...} / {"crash": ...} (the worker is then restarted)."""
        if self.proc is None or self.proc.poll() is not None:
            self.stop()
            self._start()
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.results], [], [], timeout)
        line = self.results.readline() if ready else b""
        if line:
            return json.loads(line)
        if not ready:
            self.stop()
            return {"hang": f"no answer after {timeout} s (killed)"}
        self.proc.wait()
        tail = self.log.read_text(errors="replace")[-600:]
        code = self.proc.returncode
        self.stop()
        return {"crash": f"the worker died (exit {code}); its last output: {tail}"}


def run_cases(worker: Worker, seeds: Path, indices) -> list[dict]:
    records = []
    for i in indices:
        answer = worker.ask({"case": i, "seeds": str(seeds), "work": str(worker.work)}, CASE_TIMEOUT_S)
        if "id" not in answer:
            p = plan(i)
            answer = {"id": p.id, "plan": p.describe(), "details": [], "rc": None, "stderr": "",
                      "problems": [answer.get("hang") or answer.get("crash") or f"fuzzer error: {answer}"]}
        records.append(answer)
    return records


def _format(record: dict) -> str:
    return (f"{record['plan']}\n    mutations: {'; '.join(record['details'])}\n    exit {record['rc']}: "
            f"{' | '.join(record['stderr'].strip().splitlines()[-2:])}\n    problems: {record['problems']}")


@pytest.fixture(scope="session")
def fuzz_worker(tmp_path_factory):
    """(worker, seeds folder, every record so far): the worker builds the seeds once per session."""
    work = tmp_path_factory.mktemp("fuzz-work")
    worker = Worker(work)
    seeds = tmp_path_factory.mktemp("fuzz-seeds")
    answer = worker.ask({"seeds": str(seeds)}, SEED_TIMEOUT_S)
    assert "seeds" in answer, answer
    records: list[dict] = []
    yield worker, seeds, records
    worker.stop()
    summary = os.environ.get("UPDP_FUZZ_SUMMARY")
    if summary:
        Path(summary).write_text(json.dumps(records, indent=1, default=str))


def _check_chunk(fuzz_worker, indices) -> None:
    worker, seeds, all_records = fuzz_worker
    records = run_cases(worker, seeds, indices)
    all_records.extend(records)
    failed = [r for r in records if r["problems"]]
    assert not failed, f"{len(failed)} of {len(records)} cases failed:\n" + "\n".join(_format(r) for r in failed)


def _chunks(cases: range) -> list:
    return [pytest.param(cases[k:k + CHUNK], id=f"cases{cases[k]:04d}-{cases[min(k + CHUNK, len(cases)) - 1]:04d}")
            for k in range(0, len(cases), CHUNK)]


@pytest.mark.parametrize("indices", _chunks(DEFAULT_CASES))
def test_mutated_files_fail_cleanly(fuzz_worker, indices):
    _check_chunk(fuzz_worker, indices)


@pytest.mark.fuzz
@pytest.mark.parametrize("indices", _chunks(FUZZ_CASES))
def test_many_mutated_files_fail_cleanly(fuzz_worker, indices):
    _check_chunk(fuzz_worker, indices)


def test_the_default_sample_has_every_mutation_kind():
    assert len(KINDS) <= len(DEFAULT_CASES)
    assert all(KINDS[i % len(KINDS)] in plan(i).kinds for i in DEFAULT_CASES)


def test_plans_are_reproducible_from_the_case_number():
    assert [plan(i) for i in range(100)] == [plan(i) for i in range(100)]


def test_a_hung_case_is_killed_and_the_worker_restarted(tmp_path):
    worker = Worker(tmp_path)
    try:
        assert "hang" in worker.ask({"sleep": 60}, timeout=2)
        assert worker.ask({"sleep": 0}, timeout=60) == {"slept": 0}
    finally:
        worker.stop()


# ---------------------------------------------------------------- regressions: inputs the fuzzer found
# Each once ended in an internal error (exit 1), or put more than updp's one line on stderr.

def _cli(capfd, *argv: str) -> tuple[int, list[str]]:
    """`updp ARGV` in-process: the exit code and every line on stderr (file-descriptor level)."""
    from updp.cli import main

    capfd.readouterr()
    code = main([str(a) for a in argv])
    return code, [line for line in capfd.readouterr().err.splitlines() if line.strip()]


def _updp(*argv: str, timeout: float = 120) -> tuple[int, list[str]]:
    """`python -m updp ARGV` in a child under a 4 GiB address-space limit (a regression to a
    memory bomb then fails its test instead of the machine): the exit code and stderr's lines.
    Python's warnings reach stderr only outside pytest, which collects them in-process."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))

    done = subprocess.run([sys.executable, "-m", "updp", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit)
    return done.returncode, [line for line in done.stderr.splitlines() if line.strip()]


def _one_error_line(lines: list[str], cmd: str, *words: str) -> None:
    assert len(lines) == 1 and lines[0].startswith(f"updp {cmd}: error: "), lines
    assert all(w in lines[0] for w in words), lines


BENCH = ("--repeats", "1", "--warmup", "0", "--threads", "1", "--opt-level", "disable")


def _saved(model: onnx.ModelProto, folder: Path, name: str = "m.onnx") -> Path:
    (folder / name).write_bytes(model.SerializeToString())
    return folder / name


def _set(model: onnx.ModelProto, name: str, array: np.ndarray) -> None:
    t = next(t for t in model.graph.initializer if t.name == name)
    t.CopyFrom(numpy_helper.from_array(array, name))


def test_an_undefined_data_type_is_bad_input(tmp_path, capfd):
    model = _cbr_model()
    next(t for t in model.graph.initializer if t.name == "w3").data_type = 99
    src = _saved(model, tmp_path)
    for cmd, argv in (("optimize", ("--out", tmp_path / "o.onnx")), ("bench", BENCH)):
        code, err = _cli(capfd, cmd, src, *argv)
        assert code == 2
        _one_error_line(err, cmd, str(src))


def test_a_value_info_type_onnx_does_not_define_is_bad_input(tmp_path, capfd):
    model = _cbr_model()
    next(vi for vi in model.graph.value_info if vi.name == "g").type.tensor_type.elem_type = 1000
    code, err = _cli(capfd, "optimize", _saved(model, tmp_path), "--out", tmp_path / "o.onnx", "--no-onnxsim")
    assert code == 2
    _one_error_line(err, "optimize", "Invalid tensor data type 1000")


def test_dims_that_do_not_match_the_data_are_bad_input(tmp_path, capfd):
    model = _cbr_model()
    del next(t for t in model.graph.initializer if t.name == "b3").dims[:]
    code, err = _cli(capfd, "optimize", _saved(model, tmp_path), "--out", tmp_path / "o.onnx")
    assert code == 2
    _one_error_line(err, "optimize", "'b3'", "holds 4 elements", "dims []")


def test_external_data_of_the_wrong_length_is_bad_input(tmp_path, capfd):
    _save_float_tensors_external(_cbr_model(), tmp_path)
    model = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    w1 = next(t for t in model.graph.initializer if t.name == "w1")
    for e in w1.external_data:
        if e.key == "length":
            e.value = str(int(e.value) + 4)
    src = _saved(model, tmp_path, "model.onnx")
    code, err = _cli(capfd, "optimize", src, "--out", tmp_path / "out" / "o.onnx")
    assert code == 2
    _one_error_line(err, "optimize", "'w1'", "217 elements", "need 216")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_names_that_are_not_utf8_are_bad_input(tmp_path, capfd):
    data = _cbr_model().SerializeToString()
    src = tmp_path / "m.onnx"
    src.write_bytes(data.replace(b"conv1", b"conv\xd6"))
    for cmd, argv in (("optimize", ("--out", tmp_path / "o.onnx")), ("bench", BENCH)):
        code, err = _cli(capfd, cmd, src, *argv)
        assert code == 2
        _one_error_line(err, cmd, "not UTF-8")


def test_bench_names_a_model_onnx_runtime_loads_but_cannot_run(tmp_path, capfd):
    model = _cbr_model()
    next(a for a in model.graph.node[0].attribute if a.name == "pads").ints[:] = [1, 1, 1, 1]
    model.graph.node[0].attribute.append(helper.make_attribute("group", 2))
    del model.graph.value_info[:]
    src = _saved(model, tmp_path)
    code, err = _cli(capfd, "bench", src, *BENCH)
    assert code == 2
    _one_error_line(err, "bench", "cannot run model 'm.onnx'")


def test_onnx_runtime_logs_nothing_besides_the_error(tmp_path, capfd):
    """ORT's session and process-wide loggers printed their own coloured copy of each error."""
    model = _cbr_model()
    _set(model, "cos_shape", np.array([2**63 - 1], np.int64))
    model.graph.node[-1].input[1] = "b3"
    model.graph.output.append(helper.make_tensor_value_info("k", TensorProto.FLOAT, [2**63 - 1]))
    del model.graph.value_info[:]
    code, err = _cli(capfd, "bench", _saved(model, tmp_path), *BENCH)
    assert code == 2
    _one_error_line(err, "bench", "cannot run model")


def test_onnxsim_prints_nothing_on_the_terminal(tmp_path, capfd):
    """onnxsim printed a warning and a Python traceback for each node ORT would not fold."""
    model = onnx.load(str(LIGHT / "light_shufflenet.onnx"))
    model.opset_import[0].version = 10000
    code, err = _cli(capfd, "optimize", _saved(model, tmp_path), "--out", tmp_path / "o.onnx", "--no-verify")
    assert code == 0
    assert err == []


def test_numpy_warnings_of_the_passes_stay_off_the_terminal(tmp_path):
    model = _cbr_model()
    _set(model, "var", -np.ones(8, np.float32))
    code, err = _updp("optimize", _saved(model, tmp_path), "--out", tmp_path / "o.onnx")
    assert code in (0, 4)
    assert not [line for line in err if "Warning" in line], err


def test_onnx_warnings_about_external_data_are_one_log_line(tmp_path):
    _save_float_tensors_external(_cbr_model(), tmp_path)
    model = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    model.graph.initializer[0].external_data.add(key="fuzz", value="1")
    src = _saved(model, tmp_path, "model.onnx")
    code, err = _updp("optimize", src, "--out", tmp_path / "out" / "o.onnx")
    assert code == 0
    assert err and all(LOG_LINE.match(line) and "'fuzz'" in line for line in err), err


def test_a_huge_constant_of_shape_is_refused_before_it_is_allocated(tmp_path):
    model = _cbr_model()
    _set(model, "cos_shape", np.array([2**29, 2], np.int64))
    model.graph.node[-1].input[1] = "b3"
    model.graph.output.append(helper.make_tensor_value_info("k", TensorProto.FLOAT, [2**29, 2]))
    del model.graph.value_info[:]
    code, err = _updp("optimize", _saved(model, tmp_path), "--out", tmp_path / "o.onnx")
    assert code == 3
    _one_error_line(err, "optimize", "'k'", "would take 4 GiB")


def test_a_huge_declared_input_is_refused_before_it_is_generated(tmp_path):
    graph = helper.make_graph([helper.make_node("ReduceMax", ["x"], ["y"], keepdims=1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2**40, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])])
    src = _saved(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path)
    for cmd, argv in (("optimize", ("--out", tmp_path / "o.onnx")), ("bench", BENCH)):
        code, err = _updp(cmd, src, *argv)
        assert code == 3
        _one_error_line(err, cmd, "'x'", "[1099511627776, 4]", "GiB")


def test_an_opset_import_onnx_does_not_know_does_not_break_the_upgrade(tmp_path, capfd):
    """An old-opset model with a local function: the IR version for the upgrade was looked up for
    every domain (onnx knows none for a local one), and the converter dropped the functions."""
    model = onnx.load(str(LIGHT / "light_squeezenet.onnx"))
    model.functions.append(helper.make_function("local.fuzz", "Fn", ["a"], ["b"],
                                                [helper.make_node("Relu", ["a"], ["b"])],
                                                [helper.make_opsetid("", 9)]))
    model.opset_import.append(helper.make_opsetid("local.fuzz", 1))
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.domain, relu.op_type = "local.fuzz", "Fn"
    code, err = _cli(capfd, "optimize", _saved(model, tmp_path), "--out", tmp_path / "o.onnx")
    assert code == 0, err
    assert onnx.load(str(tmp_path / "o.onnx")).functions


def test_an_op_of_another_domain_is_not_rewritten_as_the_onnx_op():
    """A `BatchNormalization` of a custom domain is not ONNX's: the passes folded it into the Conv."""
    from updp.onnx_passes import optimize_model

    model = _cbr_model()
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    bn.domain = "com.fuzz"
    model.opset_import.append(helper.make_opsetid("com.fuzz", 1))
    result = optimize_model(model).model
    kept = [n for n in result.graph.node if n.op_type == "BatchNormalization"]
    assert [n.domain for n in kept] == ["com.fuzz"]
    assert [n.op_type for n in model.graph.node if n.domain == "com.fuzz"] == ["BatchNormalization"]


# ---------------------------------------------------------------- as a script

def _repro(index: int, folder: Path) -> None:
    seeds = build_seeds(folder / "seeds")
    p = plan(index)
    src, details = build_input(p, seeds, folder / p.id / "in")
    argv = command_argv(p, src, seeds, folder / p.id / "out")
    sys.stdout.write(f"{p.describe()}\n{'; '.join(details)}\nupdp {' '.join(argv)}\n")


if __name__ == "__main__":
    if sys.argv[1] == "--worker":
        worker_main(int(sys.argv[2]))
    elif sys.argv[1] == "--repro":
        _repro(int(sys.argv[2]), Path(sys.argv[3]).resolve())
