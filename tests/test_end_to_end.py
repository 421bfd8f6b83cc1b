"""End to end on real timm and torchvision models, all four families, small inputs.

Each case prunes some blocks at λ = 1 with random weights and randomized norm statistics, exports,
merges, and checks: the merged graph matches the unmerged export in ORT (the export itself fails
otherwise; the figures are asserted again here), and it has fewer nodes.
"""

from __future__ import annotations

import onnx
import pytest
import torch

from updp.core.constants import DEFAULT_OPSET
from updp.exporter import export_module
from updp.workflows.config import ExportConfig
from updp.workflows.export import export

CASES = [
    # (model spec, input size, model kwargs, blocks)
    ("timm:convnext_atto", (64, 64), {}, [1, 3, 7]),
    ("timm:convnext_atto", (48, 64), {"conv_mlp": True}, [0, 5]),
    ("torchvision:convnext_tiny", (32, 32), {}, [0, 4, 17]),
    ("timm:deit_tiny_patch16_224", (32, 32), {"patch_size": 4}, [0, 5, 11]),
    ("timm:mobilenetv2_050", (64, 64), {}, [0, 1, 2, 3, 5]),
    ("torchvision:mobilenet_v2", (64, 64), {}, [0, 1, 3, 10]),
    ("timm:resnet18", (64, 64), {}, [0, 3]),
    ("timm:resnet26", (64, 64), {}, [0, 2, 5]),
    ("torchvision:resnet50", (64, 64), {}, [1, 4]),
]


@pytest.mark.parametrize("spec,size,kwargs,blocks", CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES])
def test_prune_export_merge_verify(tmp_path, spec, size, kwargs, blocks):
    out = tmp_path / "m.onnx"
    res = export(ExportConfig(model=spec, blocks=blocks, input_size=size, model_kwargs=kwargs, out=str(out)))
    assert out.exists()
    assert res.max_abs_diff is not None and res.rel_diff <= 1e-4
    base = export(ExportConfig(model=spec, input_size=size, model_kwargs=kwargs, out=str(tmp_path / "base.onnx")))
    # Pruned + merged is smaller than the unpruned model in every family.
    assert res.nodes_after < base.nodes_after, (base.ops_after, res.ops_after)
    if "resnet" in spec:
        # Two "same"-padded 3x3 convs cannot merge exactly, and bottleneck merges cost more than they
        # save: the planner must say why it kept them apart.
        assert any("not exact" in d or "separate" in d for d in res.decisions + res.refusals)
    else:
        # The merge itself removes nodes from the λ = 1 export.
        assert res.nodes_after < res.nodes_before, (res.ops_before, res.ops_after)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["updp.pruned_blocks"] == str(blocks).replace(" ", " ")
    assert "updp.versions" in meta


def test_torchvision_vit_tiny_config(tmp_path):
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=32, mlp_dim=64,
                            num_classes=10)
    res = export_module(vit, (1, 3, 32, 32), [0, 2], out=tmp_path / "vit.onnx", optimize=True, verify=True,
                        polish=True, opset=DEFAULT_OPSET, dynamic_batch=False, weights="random (seed 0)",
                        randomize_norms=0, model_label="tv-vit-tiny")
    assert res.rel_diff <= 1e-4
    assert res.nodes_after < res.nodes_before
    # The pruned MLPs and their residuals fold into one MatMul each (+ bias): 2 MatMuls fewer per block.
    assert res.ops_after.get("MatMul", 0) + res.ops_after.get("Gemm", 0) < \
        res.ops_before.get("MatMul", 0) + res.ops_before.get("Gemm", 0)


def test_convnext_pruned_block_merges_to_dw_plus_pw(tmp_path):
    """The planner's form for a ConvNeXt block: DW 7x7 + one C x C pointwise conv, never a dense 7x7."""
    res = export(ExportConfig(model="timm:convnext_atto", blocks=[2], input_size=(64, 64),
                              out=str(tmp_path / "m.onnx")))
    model = onnx.load(str(tmp_path / "m.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    block_convs = [n for n in model.graph.node if n.op_type == "Conv" and "/stages.1/blocks/blocks.0/" in n.name]
    shapes = sorted(tuple(inits[n.input[1]].dims) for n in block_convs)
    assert shapes == [(80, 1, 7, 7), (80, 80, 1, 1)], shapes
    assert res.rel_diff <= 1e-4


def test_dynamic_batch_export(tmp_path):
    res = export(ExportConfig(model="timm:convnext_atto", blocks=[0], input_size=(32, 32), dynamic_batch=True,
                              batch=2, out=str(tmp_path / "m.onnx")))
    model = onnx.load(str(tmp_path / "m.onnx"))
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param == "batch"
    assert res.rel_diff <= 1e-4


FULL_SIZE = [("timm:convnext_tiny", 6), ("timm:deit_tiny_patch16_224", 6), ("timm:mobilenetv2_100", 4),
             ("torchvision:resnet50", 2)]


@pytest.mark.slow
@pytest.mark.parametrize("spec, n", FULL_SIZE, ids=[s for s, _ in FULL_SIZE])
def test_full_size_zoo_models_prune_merge_verify(tmp_path, spec, n):
    """The zoo models at their own 224x224 input, N blocks by the default rule, merged and verified."""
    res = export(ExportConfig(model=spec, prune=n, out=str(tmp_path / "p.onnx")))
    assert len(res.pruned_blocks) == n and res.rel_diff <= 1e-4 and res.torch_max_abs_diff is not None
    assert res.input_shape == [1, 3, 224, 224]
    base = export(ExportConfig(model=spec, out=str(tmp_path / "b.onnx")))
    assert res.nodes_after < base.nodes_after
