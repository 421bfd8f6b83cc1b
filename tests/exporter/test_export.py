"""The λ = 1 branch exports clean: no activation or LayerNorm left inside a pruned block."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch

from updp.blocks import apply_pruning, calibrate_bn, randomize_norm_stats


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter is deprecated
def test_pruned_convnext_exports_linear_block(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", num_classes=10).eval()
    randomize_norm_stats(model, seed=0)
    apply_pruning(model, [1, 4], lam=1.0)
    calibrate_bn(model, [torch.randn(4, 3, 32, 32) for _ in range(2)])
    x = torch.randn(2, 3, 32, 32)
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=18, input_names=["x"],
                      output_names=["y"])
    graph = onnx.load(str(path)).graph
    onnx.checker.check_model(onnx.load(str(path)))

    def ops(scope):
        return [(n.op_type, n.name) for n in graph.node if n.name.startswith(scope)]

    nonlinear = {"Erf", "Gelu", "LayerNormalization", "Relu", "Tanh", "Sigmoid", "ReduceMean", "Sqrt"}
    pruned = ops("/stages/stages.0/blocks/blocks.1/")
    assert pruned, "block scope kept in node names"
    inner = [(t, n) for t, n in pruned if "/end_act/" not in n]
    assert not [t for t, _ in inner if t in nonlinear], inner
    assert sorted(t for t, _ in inner if t in ("Conv", "Mul", "Add")) == sorted(
        ["Conv"] * 3 + ["Mul"] * 3 + ["Add"] * 3)  # DW, PW, PW; BN, γ, end BN; BN, end BN, residual
    assert "Erf" in [t for t, n in pruned if "/end_act/" in n]  # the inserted end activation
    # an unpruned block keeps its LayerNorm and GELU
    assert {"LayerNormalization", "Erf"} <= {t for t, _ in ops("/stages/stages.0/blocks/blocks.0/")}

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": x.numpy()})
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(y - ref).max() <= 1e-5 + 1e-4 * np.abs(ref).max()
