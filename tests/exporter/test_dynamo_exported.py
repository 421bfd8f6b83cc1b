"""Files from torch's default exporter, the torch.export-based one (`dynamo=True`): `updp optimize`
on a user's such file, and `updp export --exporter dynamo`.

Since torch 2.9 `torch.onnx.export(model, args, path)` uses it, so it is what a user's own ONNX
file most likely came from; updp's own export keeps the TorchScript exporter (see
`updp.exporter.torch_export`). Its files differ from updp's where the passes look: opset 20 ops,
node names without module scopes (`node_Conv_12`), weights in an external `.onnx.data` file by
default, BatchNorms and constants already folded by onnxscript's optimizer (or, with
`optimize=False`, left as Constant nodes and a BatchNorm decomposed into Sub/Div/Sqrt/Mul/Add),
and `torch.export.Dim` names for dynamic axes. The pruned blocks of a real model must merge all
the same, and the result must compute what the torch module computes.

Needs onnxscript (the exporter's own dependency, in the `dev` extra); skipped without it.
"""

from __future__ import annotations

import collections
import copy
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper

from updp.blocks import apply_pruning, calibrate_bn, randomize_norm_stats
from updp.blocks.discover import find_blocks
from updp.cli import main
from updp.core.constants import EXPORTERS
from updp.core.errors import InputError
from updp.exporter.export import export_module
from updp.exporter.optimize import optimize_file
from updp.exporter.scopes import attribute_nodes, scope_fragment, scopes_of
from updp.exporter.torch_export import _DYNAMO_SCOPES_KEY, _scoped_node_names, _scoped_value_names, get_metadata
from updp.latency.profile import profile_nodes
from updp.latency.runner import LatencySetup
from updp.models import create_for_data
from updp.verify import compare_outputs
from updp.workflows.config import ExportConfig

pytest.importorskip("onnxscript", reason="torch's dynamo ONNX exporter needs onnxscript")

CONVNEXT_PRUNED = [0, 5, 8, 10]  # one block in stage 0, two in stage 2, one in stage 3
DEIT_PRUNED = [2, 5, 9]


def _pruned(model_name: str, blocks: list[int], **kwargs) -> torch.nn.Module:
    """A real zoo model, 32×32 input, with `blocks` in their linear form (λ = 1) and every norm and
    layer scale given random statistics, so that no fold or merge holds trivially."""
    model, _ = create_for_data(model_name, num_classes=10, input_chw=(3, 32, 32), model_kwargs=kwargs, seed=0)
    randomize_norm_stats(model, seed=0)
    apply_pruning(model, blocks, lam=1.0)
    calibrate_bn(model, [torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)])
    return model.eval()


def _dynamo_export(model: torch.nn.Module, path, **options) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 3, 32, 32),), str(path), dynamo=True, verbose=False, **options)


def _ort(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _matches_torch(model: torch.nn.Module, path, batch: int) -> None:
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        ref = model(x).numpy()
    rep = compare_outputs([ref], [_ort(path, x.numpy())], ["logits"])
    assert rep.passed, rep.failures


@pytest.fixture(scope="module")
def convnext():
    return _pruned("timm:convnext_atto", CONVNEXT_PRUNED)


def test_dynamic_batch_convnext_merges_every_pruned_block(tmp_path, convnext):
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    _dynamo_export(convnext, src, dynamic_shapes=({0: torch.export.Dim("batch")},))
    assert (tmp_path / "m.onnx.data").exists(), "the exporter's default keeps weights beside the file"
    res = optimize_file(src, out, verify=True, polish=True, fold_layernorm_affine=False)
    # each pruned block's two pointwise convs (with its BNs and layer scale folded in) become one
    assert res.applied.get("merge_conv_chain") == len(CONVNEXT_PRUNED)
    assert res.ops_before["Conv"] - res.ops_after["Conv"] == len(CONVNEXT_PRUNED)
    assert res.max_abs_diff is not None
    written = onnx.load(str(out), load_external_data=False)
    assert not [t.name for t in written.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL], \
        "the optimized file is self-contained"
    batch_dim = written.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value, "the batch axis stays symbolic"
    for batch in (1, 5):
        _matches_torch(convnext, out, batch)


@pytest.mark.slow
def test_unoptimized_dynamo_export_reaches_the_same_graph(tmp_path, convnext):
    """With the exporter's own optimizer off, the Constant nodes and the decomposed BatchNorms
    are folded by updp's passes: the result has the ops of the optimized export's result."""
    results = {}
    for optimize in (True, False):
        src, out = tmp_path / f"m{optimize}.onnx", tmp_path / f"o{optimize}.onnx"
        _dynamo_export(convnext, src, optimize=optimize)
        results[optimize] = optimize_file(src, out, verify=True, polish=True, fold_layernorm_affine=False)
        _matches_torch(convnext, out, batch=2)
    raw, optimized = results[False], results[True]
    assert raw.ops_before.get("Constant", 0) > 0 and "Sqrt" in raw.ops_before  # what onnxscript would fold
    assert raw.ops_after == optimized.ops_after
    assert raw.applied["merge_conv_chain"] == optimized.applied["merge_conv_chain"] == len(CONVNEXT_PRUNED)


@pytest.mark.slow
def test_deit_pruned_blocks_merge_their_matmuls(tmp_path):
    model = _pruned("timm:deit_tiny_patch16_224", DEIT_PRUNED, patch_size=4, img_size=32)
    src, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    _dynamo_export(model, src)
    res = optimize_file(src, out, verify=True, polish=True, fold_layernorm_affine=False)
    # each linearized MLP's two matrix products become one (onnxsim's polish may turn a MatMul
    # and its bias into a Gemm, so the two are counted together)
    assert res.applied.get("merge_matmul_chain") == len(DEIT_PRUNED)

    def products(ops):
        return ops.get("MatMul", 0) + ops.get("Gemm", 0)

    assert products(res.ops_before) - products(res.ops_after) == len(DEIT_PRUNED)
    _matches_torch(model, out, batch=2)  # exported at a fixed batch of 2


# --- updp's own export with `exporter="dynamo"` ------------------------------------------------


def test_updp_export_with_the_dynamo_exporter_merges_like_the_torchscript_one(tmp_path):
    """The same pruned ConvNeXt through both exporters: the same blocks merge, both verified and
    matching torch; the dynamo file's nodes carry module scopes (so per-block profiles attribute
    them) and none of the exporter's metadata (stack traces with local paths)."""
    module = create_for_data("timm:convnext_atto", num_classes=10, input_chw=(3, 32, 32), seed=0)[0]
    randomize_norm_stats(module, seed=0)
    blocks = find_blocks(module, (1, 3, 32, 32))
    results = {}
    for exporter in EXPORTERS:
        results[exporter] = export_module(copy.deepcopy(module), (1, 3, 32, 32), CONVNEXT_PRUNED,
                                          out=tmp_path / f"{exporter}.onnx", optimize=True, verify=True, polish=True,
                                          opset=18, dynamic_batch=True, weights="random", exporter=exporter)
    dyn, ts = results["dynamo"], results["torchscript"]
    assert (dyn.exporter, ts.exporter) == ("dynamo", "torchscript")
    assert dyn.to_dict()["exporter"] == "dynamo" and "exporter: dynamo" in dyn.format_summary()
    assert dyn.verified and dyn.max_abs_diff is not None and dyn.torch_max_abs_diff is not None
    assert len(dyn.decisions) == len(ts.decisions) == len(CONVNEXT_PRUNED)
    assert dyn.ops_after["Conv"] == ts.ops_after["Conv"]
    written = onnx.load(str(tmp_path / "dynamo.onnx"))
    assert get_metadata(written)["updp.exporter"] == "dynamo"
    assert not [p.key for n in written.graph.node for p in n.metadata_props]
    names = [n.name for n in written.graph.node]
    assert len(set(names)) == len(names)
    for b in blocks:  # every block, pruned or not, owns nodes by its scope
        assert any(scope_fragment(b.name) in name for name in names), b.name
    pruned = copy.deepcopy(module)
    apply_pruning(pruned, CONVNEXT_PRUNED, lam=1.0)
    for batch in (1, 4):
        _matches_torch(pruned.eval(), tmp_path / "dynamo.onnx", batch)
    # Under ORT_ENABLE_ALL the CPU EP renames convolutions after their output values
    # (`<value>_nchwc`), so a per-block profile attributes the two files alike only if the dynamo
    # file's values carry scopes too: every block holds the same ops in both. Layout reorders are
    # left out: the one after the last block depends on the head, which the exporters write apart
    # (GlobalAveragePool + Flatten vs ReduceMean + Reshape + Gather).
    scopes = scopes_of((b.index, b.name) for b in blocks)
    ops = {exporter: _ops_per_block(tmp_path / f"{exporter}.onnx", scopes) for exporter in EXPORTERS}
    for label in scopes:
        assert ops["dynamo"][label] == ops["torchscript"][label], label
        assert ops["dynamo"][label]["Conv"] >= 1, label


def _ops_per_block(path, scopes: dict[str, str]) -> dict[str, collections.Counter]:
    """Op types per block of the nodes ORT runs at ORT_ENABLE_ALL, attributed as a per-block
    profile attributes them (layout reorders left out)."""
    nodes = profile_nodes(path, LatencySetup(warmup=0, threads=1), runs=1, opt_level="all")
    ops: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for t, label, _ in attribute_nodes(nodes, scopes):
        if t.op_type not in ("ReorderInput", "ReorderOutput"):
            ops[label][t.op_type] += 1
    return ops


def test_scoped_node_names_follow_the_torchscript_scheme():
    def node(op, name, scopes=None, extra=()):
        n = helper.make_node(op, ["x"], [name + "_out"], name=name)
        for key, value in ([(_DYNAMO_SCOPES_KEY, scopes)] if scopes is not None else []) + list(extra):
            entry = n.metadata_props.add()
            entry.key, entry.value = key, value
        return n

    trace = ("pkg.torch.onnx.stack_trace", 'File "/home/someone/model.py", line 3')
    nodes = [node("Conv", "node_Conv_0", "['', 'stages', 'stages.0', 'stages.0.blocks', 'stages.0.blocks.3', "
                  "'stages.0.blocks.3.conv_dw', 'conv2d']", [trace]),
             node("Mul", "node_mul_1", "['', 'stages', 'stages.0', 'stages.0.blocks', 'stages.0.blocks.3', 'mul']"),
             node("Mul", "node_mul_2", "['', 'stages', 'stages.0', 'stages.0.blocks', 'stages.0.blocks.3', 'mul_1']"),
             node("Add", "node_add", "['', 'add']"),  # the root module's own op
             node("Identity", "val_7"),  # made by the exporter's optimizer: no scopes
             node("Relu", "node_relu", "not a list", [("user.key", "kept")])]
    graph = helper.make_graph(nodes, "g", [], [])
    model = helper.make_model(graph)
    _scoped_node_names(model)
    assert [n.name for n in model.graph.node] == [
        "/stages/stages.0/blocks/blocks.3/conv_dw/Conv", "/stages/stages.0/blocks/blocks.3/Mul",
        "/stages/stages.0/blocks/blocks.3/Mul_1", "/Add", "val_7", "node_relu"]
    assert [[(p.key, p.value) for p in n.metadata_props] for n in model.graph.node] == [[], [], [], [], [],
                                                                                        [("user.key", "kept")]]


def test_scoped_value_names_follow_their_nodes():
    """A scoped node's outputs become `<node>_output_<k>`, readers (also in a subgraph) and
    value_info follow; the graph's interface, unscoped nodes' values and colliding names stay."""
    inner = helper.make_graph([helper.make_node("Identity", ["relu"], ["inner_y"], name="inner")], "body", [],
                              [helper.make_tensor_value_info("inner_y", onnx.TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Relu", ["x"], ["relu"], name="/a/Relu"),
             helper.make_node("Neg", ["relu"], ["neg"], name="val_3"),  # unscoped: keeps its value's name
             helper.make_node("Abs", ["neg"], ["abs"], name="/b/Abs"),
             helper.make_node("Add", ["abs", "relu"], ["/b/Add_output_0"], name="/c/Add"),  # taken below
             helper.make_node("Sub", ["/b/Add_output_0", "abs"], ["sub"], name="/b/Add"),
             helper.make_node("If", ["cond"], ["if_out"], name="/d/If", then_branch=inner, else_branch=inner),
             helper.make_node("Mul", ["sub", "if_out"], ["y"], name="/e/Mul")]  # a graph output: kept
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2]),
                                           helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
                              value_info=[helper.make_tensor_value_info("relu", onnx.TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    x = np.array([-1.5, 2.0], np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x, "cond": np.array(True)})[0]
    _scoped_value_names(model)
    assert [list(n.output) for n in model.graph.node] == [
        ["/a/Relu_output_0"], ["neg"], ["/b/Abs_output_0"], ["/c/Add_output_0"], ["sub"], ["/d/If_output_0"], ["y"]]
    assert list(model.graph.node[3].input) == ["/b/Abs_output_0", "/a/Relu_output_0"]
    assert model.graph.node[5].attribute[0].g.node[0].input[0] == "/a/Relu_output_0"
    assert [v.name for v in model.graph.value_info] == ["/a/Relu_output_0"]
    onnx.checker.check_model(model, full_check=True)
    after = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x, "cond": np.array(True)})[0]
    np.testing.assert_array_equal(after, before)


def test_dynamo_exporter_without_onnxscript_is_one_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now raises ImportError
    rc = main(["export", "timm:convnext_atto", "--input-size", "32", "--num-classes", "10", "--exporter", "dynamo",
               "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3 and len(err) == 1 and "needs onnxscript" in err[0], err
    assert not list(tmp_path.iterdir())


def test_unknown_exporter_is_refused():
    with pytest.raises(InputError, match="--exporter"):
        ExportConfig(model="timm:convnext_atto", out="m.onnx", exporter="tflite")
