"""Checkpoint → ONNX accuracy parity, and `updp eval` on static and dynamic batch axes.

Why "equal or at most one sample apart": the exported file is the merged graph (BN folded, pruned
blocks' linear chains multiplied out), which equals the torch model only up to fp32 rounding
(max abs logit difference ~1e-6, checked by export itself). A prediction can flip only if its two
largest logits are closer than that, a tie; on a few hundred images that is at most one sample,
and in practice none.
"""

from __future__ import annotations

import pytest

from updp.cli import main
from updp.core.errors import InputError
from updp.workflows.config import EvalConfig, ExportConfig, PruneConfig
from updp.workflows.evaluate import evaluate
from updp.workflows.export import export
from updp.workflows.prune import prune

SMALL = ["--model-kwarg", "dims=[16,32,48,64]"]  # atto's depths, thinner (fast CPU steps)
TINY = ["--data", "digits", "--batch-size", "32", "--max-steps-per-epoch", "4", "--no-progress"]


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    assert main(["-q", "train", "convnext_atto", *SMALL, "--epochs", "1", "--out", str(d / "base.pt"), *TINY]) == 0
    prune(PruneConfig(checkpoint=str(d / "base.pt"), data="digits", blocks=[2, 9], epochs=1, batch_size=32,
                      max_steps_per_epoch=4, progress=False, out=str(d / "p.pt")))
    return d


@pytest.mark.parametrize("batch, dynamic", [(1, False), (4, False), (1, True)])
def test_checkpoint_and_onnx_accuracy_match(pruned, batch, dynamic):
    onnx_path = pruned / f"p_b{batch}{'d' if dynamic else ''}.onnx"
    res = export(ExportConfig(model="convnext_atto", checkpoint=str(pruned / "p.pt"), batch=batch,
                              dynamic_batch=dynamic, out=str(onnx_path)))
    assert res.pruned_blocks == [2, 9] and res.max_abs_diff < 1e-4
    torch_r = evaluate(EvalConfig(file=str(pruned / "p.pt"), data="digits"))
    onnx_r = evaluate(EvalConfig(file=str(onnx_path), data="digits", batch_size=64))
    assert torch_r["n"] == onnx_r["n"] == 359  # static batch 4: the padded last chunk is discarded
    assert abs(round(torch_r["acc"] * 359) - round(onnx_r["acc"] * 359)) <= 1
    assert onnx_r["loss"] == pytest.approx(torch_r["loss"], abs=1e-4)
    assert onnx_r["provider"] == "CPUExecutionProvider"


def test_eval_errors(pruned, tmp_path, capsys):
    with pytest.raises(InputError, match="not found"):
        evaluate(EvalConfig(file=str(tmp_path / "none.onnx"), data="digits"))
    with pytest.raises(InputError, match="checkpoint not found"):
        evaluate(EvalConfig(file=str(tmp_path / "none.pt"), data="digits"))
    onnx_path = pruned / "p_b1.onnx"
    if onnx_path.exists():  # the file takes 32x32: serving 16x16 is refused
        with pytest.raises(InputError, match="takes inputs"):
            evaluate(EvalConfig(file=str(onnx_path), data="digits", input_size=(16, 16)))
    assert main(["eval", str(tmp_path / "none.onnx"), "--data", "digits"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_eval_plain_state_dict_needs_model_name(tmp_path, capsys):
    import torch

    from updp.models import create_model

    m, _ = create_model("convnext_atto", num_classes=10)
    torch.save(m.state_dict(), tmp_path / "plain.pt")
    assert main(["eval", str(tmp_path / "plain.pt"), "--data", "digits"]) == 2
    assert "give the model name" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "plain.pt"), "--model", "convnext_atto", "--data", "digits", "--json"]) == 0
    assert '"n": 359' in capsys.readouterr().out
