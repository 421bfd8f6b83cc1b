"""`updp prune`: progressive subnet training (UPDP step 3) end to end through the CLI and the
workflow, its ablations, bad input, and the split seed it trains on.

Runs are tiny (a few steps on the bundled 8x8 digits at 32x32): they check the plumbing and the
exact λ = 1 end state, not accuracy.
"""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from updp.accuracy import module_accuracy
from updp.blocks import PrunePlan, drop_blocks, find_blocks
from updp.cli import main
from updp.core.errors import InputError, UnsupportedError
from updp.data import get_datasets
from updp.models import create_model
from updp.workflows.config import PruneConfig
from updp.workflows.prune import prune
from updp.workflows.resolve import load_model

SMALL = ["--model-kwarg", "dims=[16,32,48,64]"]  # atto's depths, thinner (fast CPU steps)
TINY = ["--data", "digits", "--batch-size", "32", "--max-steps-per-epoch", "3", "--no-progress"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("base")
    path = d / "base.pt"
    assert main(["-q", "train", "convnext_atto", *SMALL, "--epochs", "1", "--out", str(path), *TINY]) == 0
    return path


def _cfg(checkpoint, out, **kw) -> PruneConfig:
    return PruneConfig(**{"checkpoint": str(checkpoint), "data": "digits", "out": str(out), "epochs": 1,
                          "batch_size": 32, "progress": False, **kw})


def _lams(ck) -> list[float]:
    return [float(v) for k, v in ck["model"].items() if k.endswith("_extra_state")]


def test_train_prune_export_eval_cli(tmp_path, base, capsys):
    pruned = tmp_path / "p.pt"
    assert main(["prune", "--checkpoint", str(base), "--prune", "2", "--epochs", "2", "--out", str(pruned),
                 "--json", *TINY]) == 0
    report = json.loads(capsys.readouterr().out)
    ck = torch.load(pruned, weights_only=True)
    plan = PrunePlan.from_dict(ck["plan"])
    assert plan.lam == 1.0 and len(plan.blocks) == 2 and plan.num_classes == 10
    assert plan.input_size == (3, 32, 32) and "updp progressive" in plan.notes and "kd alpha=0.5" in plan.notes
    assert _lams(ck) == [1.0, 1.0]                       # exactly mergeable
    assert report["history"][-1]["lam"] == 1.0 and report["at_start"]["acc"] == report["baseline"]["acc"]
    out = tmp_path / "p.onnx"
    # MODEL is checked against the checkpoint; classes and input size come from it.
    assert main(["-q", "export", "convnext_atto", "--checkpoint", str(pruned), "--out", str(out)]) == 0
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["updp.pruned_blocks"]) == plan.blocks
    capsys.readouterr()
    assert main(["eval", str(out), "--data", "digits", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["n"] == 359 and ev["provider"] == "CPUExecutionProvider"


def test_plan_file_abrupt_and_schedule_options(tmp_path, base):
    plan = PrunePlan(model="timm:convnext_atto", input_size=(3, 32, 32), blocks=[3, 5],
                     block_names=["stages.1.blocks.1", "stages.2.blocks.1"], selection_rule="search:test")
    plan.save(str(tmp_path / "plan.json"))
    out = tmp_path / "abrupt.pt"
    assert main(["-q", "prune", "--checkpoint", str(base), "--plan", str(tmp_path / "plan.json"), "--method", "abrupt",
                 "--no-kd", "--epochs", "1", "--out", str(out), *TINY]) == 0
    ck = torch.load(out, weights_only=True)
    p = PrunePlan.from_dict(ck["plan"])
    assert p.blocks == [3, 5] and p.selection_rule == "search:test" and "abrupt" in p.notes and "no kd" in p.notes
    assert ck["config"]["kd_alpha"] == 0.0 and _lams(ck) == [1.0, 1.0]


def test_layerfold_prune_export_merge_verify_eval(tmp_path, base, capsys):
    """Layer-Folding end to end like the other methods: prune → export (merge + verify) → eval."""
    pruned = tmp_path / "lf.pt"
    assert main(["-q", "prune", "--checkpoint", str(base), "--blocks", "1,3", "--method", "layerfold",
                 "--epochs", "2", "--out", str(pruned), *TINY]) == 0
    capsys.readouterr()
    ck = torch.load(pruned, weights_only=True)
    assert ck["plan"]["block_options"] == {"layerfold_alphas": True} and "layerfold" in ck["plan"]["notes"]
    assert _lams(ck) == [1.0, 1.0]
    out = tmp_path / "lf.onnx"
    assert main(["-q", "export", "--checkpoint", str(pruned), "--out", str(out), "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["pruned_blocks"] == [1, 3] and exported["verified"] and exported["max_abs_diff"] is not None
    assert exported["nodes_after"] < exported["nodes_before"]  # the folded blocks merged
    assert main(["eval", str(out), "--data", "digits", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 359


def test_step_schedule_api_ramp_reaches_one(tmp_path, base):
    seen = []
    res = prune(_cfg(base, tmp_path / "s.pt", blocks=[1], schedule="step", ramp_fraction=1.0, epochs=2,
                     max_steps_per_epoch=2))
    seen = [h["lam"] for h in res.train.history]
    assert seen[-1] == 1.0 and seen[0] < 1.0
    loaded = load_model(str(tmp_path / "s.pt"))
    assert loaded.plan.blocks == [1]


def test_drop_ablation_exports_a_shallower_model(tmp_path, base, capsys):
    out = tmp_path / "drop.pt"
    assert main(["-q", "prune", "--checkpoint", str(base), "--blocks", "1,3", "--method", "drop", "--epochs", "1",
                 "--out", str(out), *TINY]) == 0
    ck = torch.load(out, weights_only=True)
    assert ck["plan"]["block_options"] == {"drop": True}
    assert not any(k.startswith("stages.0.blocks.1.") for k in ck["model"])
    loaded = load_model(str(out))
    assert len(find_blocks(loaded.module)) == 10
    onnx_out = tmp_path / "drop.onnx"
    assert main(["-q", "export", "timm:convnext_atto", "--checkpoint", str(out), "--out", str(onnx_out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--data", "digits", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 359


def test_drop_refuses_projection_shortcut():
    m, _ = create_model("resnet18", num_classes=10)
    with pytest.raises(UnsupportedError, match="projection shortcut"):
        drop_blocks(m, [2])  # layer2.0 has a downsample path
    assert drop_blocks(m, [1]) == ["layer1.1"]


def test_vit_tiny_via_api(tmp_path):
    base = tmp_path / "vit.pt"
    assert main(["-q", "train", "vit_tiny_patch16_224", "--model-kwarg", "patch_size=4", "--model-kwarg", "depth=2",
                 "--epochs", "1", "--out", str(base), *TINY]) == 0
    res = prune(_cfg(base, tmp_path / "vitp.pt", blocks=[1], max_steps_per_epoch=2))
    assert res.plan.model_kwargs["img_size"] == 32 and res.plan.model_kwargs["patch_size"] == 4
    assert main(["-q", "export", "vit_tiny_patch16_224", "--checkpoint", str(tmp_path / "vitp.pt"),
                 "--out", str(tmp_path / "vit.onnx")]) == 0


# ------------------------------------------------------------------ bad input: one line, exit 2

@pytest.mark.parametrize("argv, match", [
    (["prune", "--blocks", "1", "--data", "imagefolder:/no/such", "--epochs", "1"], "not found"),
    (["prune", "--blocks", "99", "--data", "digits", "--epochs", "1"], "12 recognized blocks"),
    (["prune", "--blocks", "1", "--model", "resnet18", "--data", "digits", "--epochs", "1"], "holds a timm:convnext"),
    (["eval", "--data", "digits"], "holds a timm:convnext_atto, not resnet18"),
])
def test_bad_input_is_one_line(tmp_path, base, capsys, argv, match):
    if argv[0] == "prune":
        argv = [*argv, "--checkpoint", str(base), "--out", str(tmp_path / "x.pt"), "--no-progress"]
    else:
        argv = [*argv, str(base), "--model", "resnet18"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    assert not (tmp_path / "x.pt").exists()


def test_export_with_wrong_model_name(tmp_path, base, capsys):
    assert main(["export", "resnet18", "--checkpoint", str(base), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "holds a timm:convnext_atto, not resnet18" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_plan_naming_missing_or_other_blocks(tmp_path, base):
    bad = PrunePlan(model="convnext_atto", input_size=(3, 32, 32), blocks=[40])
    with pytest.raises(InputError, match="block 40 does not exist"):
        prune(_cfg(base, tmp_path / "x.pt", plan=bad))
    wrong = PrunePlan(model="convnext_atto", input_size=(3, 32, 32), blocks=[2], block_names=["stages.0.blocks.0"])
    with pytest.raises(InputError, match="block 2 is 'stages.1.blocks.0'"):
        prune(_cfg(base, tmp_path / "x.pt", plan=wrong))
    other = PrunePlan(model="resnet18", input_size=(3, 32, 32), blocks=[1])
    with pytest.raises(InputError, match="plan is for resnet18"):
        prune(_cfg(base, tmp_path / "x.pt", plan=other))


def test_class_count_mismatch(tmp_path, base):
    from PIL import Image

    for split in ("train", "val"):
        for c in ("a", "b", "c"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(tmp_path / split / c / f"{i}.png")
    with pytest.raises(InputError, match="10 classes, the data .* has 3"):
        prune(_cfg(base, tmp_path / "x.pt", data=f"imagefolder:{tmp_path}", blocks=[1]))


def test_pruned_checkpoint_cannot_be_pruned_again(tmp_path, base):
    out = tmp_path / "p.pt"
    prune(_cfg(base, out, blocks=[1], max_steps_per_epoch=1))
    with pytest.raises(InputError, match="is a pruned checkpoint"):
        prune(_cfg(out, tmp_path / "again.pt", blocks=[2]))


def test_the_split_seed_is_the_one_the_data_is_split_with(tmp_path, base, capsys):
    """`updp prune --split-seed N` trains and validates on the split of seed N (it was parsed and
    then dropped: the pruned model trained on the seed-0 split while the baseline and the search
    used seed N)."""
    baseline = load_model(str(base)).module
    accs = {seed: module_accuracy(baseline, get_datasets("digits", 32, split_seed=seed).val)["acc"]
            for seed in (0, 3)}
    assert accs[0] != accs[3]  # the two splits are told apart by the baseline's val accuracy
    assert main(["prune", "--checkpoint", str(base), "--blocks", "1", "--epochs", "1", "--split-seed", "3",
                 "--out", str(tmp_path / "s3.pt"), "--json", *TINY]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["baseline"]["acc"] == accs[3]
    api = prune(_cfg(base, tmp_path / "a.pt", blocks=[1], split_seed=3, max_steps_per_epoch=1))
    assert api.baseline["acc"] == accs[3]


def test_layerfold_settings_are_refused_with_another_method(tmp_path, base):
    with pytest.raises(InputError, match="--layerfold-penalty applies to --method layerfold only"):
        _cfg(base, tmp_path / "x.pt", blocks=[1], layerfold_penalty=1.0)
    with pytest.raises(InputError, match="--layerfold-alpha-lr applies to --method layerfold only"):
        _cfg(base, tmp_path / "x.pt", blocks=[1], method="abrupt", layerfold_alpha_lr=0.1)
    assert _cfg(base, tmp_path / "x.pt", blocks=[1], method="layerfold", layerfold_penalty=1.0).layerfold_penalty == 1.0
