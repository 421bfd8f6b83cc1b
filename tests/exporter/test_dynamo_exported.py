"""`updp optimize` on files from torch's default exporter, the torch.export-based one (`dynamo=True`).

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

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from updp.blocks import apply_pruning, calibrate_bn, randomize_norm_stats
from updp.exporter.optimize import optimize_file
from updp.models import create_for_data
from updp.verify import compare_outputs

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
