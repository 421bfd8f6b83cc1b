"""Block discovery, conversion errors, non-prunable reasons, the registry and the plan."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import torchvision
from torch import nn

from updp.blocks import (
    BlockHandler,
    PrunedBlock,
    PrunePlan,
    apply_pruning,
    find_blocks,
    get_handler,
    indices_of,
    pruned_blocks,
    register_block,
    set_lam,
)
from updp.blocks.modules import LambdaAct
from updp.core.errors import InputError, UnsupportedError


def test_find_blocks_convnext_atto():
    model = timm.create_model("convnext_atto")
    blocks = find_blocks(model, 64)
    assert [b.index for b in blocks] == list(range(12))  # depths (2, 2, 6, 2)
    assert blocks[0].name == "stages.0.blocks.0" and blocks[-1].name == "stages.3.blocks.1"
    assert all(b.prunable and b.family == "convnext" and b.shortcut == "identity" for b in blocks)
    b = blocks[0]
    c, hw = 40, 16  # stem stride 4 at 64x64
    assert b.input_shape == b.output_shape == (1, c, hw, hw)
    # DW 7x7 + PW C->4C + PW 4C->C per pixel
    assert b.macs == hw * hw * (c * 49 + 2 * 4 * c * c)
    assert b.params == sum(p.numel() for p in model.stages[0].blocks[0].parameters())


def test_find_blocks_without_input_size_is_structural():
    blocks = find_blocks(timm.create_model("resnet18"))
    assert len(blocks) == 8 and blocks[0].macs == 0 and blocks[0].input_shape is None
    assert [b.shortcut for b in blocks].count("projection") == 3


def test_vit_macs_count_attention():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1)
    (b,) = find_blocks(model, 32)
    n, d = 17, 192
    assert b.macs == n * d * 3 * d + 2 * n * n * d + n * d * d + 2 * n * d * 4 * d


@pytest.mark.parametrize("name, reason_part, n_prunable", [
    ("mobilenetv3_small_050", "squeeze-excitation", 2),  # the two blocks without SE are prunable
    ("efficientnet_b0", "squeeze-excitation", 0),
    ("convnextv2_atto", "GlobalResponseNorm", 0),
    ("seresnet18", "squeeze-excitation", 0),
    ("resnetaa34d", "anti-aliasing", 13),  # AA only in the three stride-2 blocks
])
def test_non_prunable_blocks_have_reasons(name, reason_part, n_prunable):
    model = timm.create_model(name)
    blocks = find_blocks(model)
    bad = [b for b in blocks if not b.prunable]
    assert sum(b.prunable for b in blocks) == n_prunable
    assert bad and all(reason_part in b.reason for b in bad)
    with pytest.raises(UnsupportedError, match=f"block {bad[0].index} \\({bad[0].name}"):
        apply_pruning(model, [bad[0].index])


def test_identity_shortcut_only():
    blocks = find_blocks(timm.create_model("mobilenetv2_050"), identity_shortcut_only=True)
    assert sum(b.prunable for b in blocks) == 10
    assert all("no residual connection" in b.reason for b in blocks if not b.prunable)


def test_apply_pruning_in_place_and_indices_stable():
    model = torchvision.models.resnet18()
    before = find_blocks(model)
    infos = apply_pruning(model, [1, 3], lam=1.0)
    assert [i.name for i in infos] == ["layer1.1", "layer2.1"]
    assert all(i.pruned and i.shortcut == "identity" for i in infos)
    after = find_blocks(model)
    assert [(b.index, b.name) for b in after] == [(b.index, b.name) for b in before]
    assert isinstance(model.layer1[1], PrunedBlock) and model.layer1[1].lam == 1.0
    assert [n for n, _ in pruned_blocks(model)] == ["layer1.1", "layer2.1"]
    assert indices_of(model, ["layer2.1"]) == [3]
    # idempotent: converting again only sets λ
    apply_pruning(model, [1], lam=0.5)
    assert model.layer1[1].lam == 0.5 and model.layer2[1].lam == 1.0
    assert set_lam(model, 0.0) == 2


@pytest.mark.parametrize("indices, err", [([8], InputError), ([-1], InputError), ([1, 1], InputError)])
def test_apply_pruning_bad_indices(indices, err):
    with pytest.raises(err, match="block"):
        apply_pruning(torchvision.models.resnet18(), indices)


def test_state_dict_keys_of_original_unchanged():
    model = timm.create_model("convnext_atto")
    keys = set(model.state_dict())
    apply_pruning(model, [0])
    new = set(model.state_dict())
    assert keys <= new
    assert sorted(new - keys) == sorted(
        f"stages.0.blocks.0.{k}" for k in
        ["_extra_state", *(f"{bn}.{s}" for bn in ("norm_bn", "end_bn")
                           for s in ("weight", "bias", "running_mean", "running_var",
                                     "num_batches_tracked"))])


def test_prune_norm1_and_swap_at_start_options():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    apply_pruning(model, [0], lam=0.0, prune_norm1=True)
    assert hasattr(model.blocks[0], "norm1_bn")
    assert torch.equal(model(x), ref)
    apply_pruning(model, [1], lam=0.0, swap_at_start=True)
    assert not torch.allclose(model(x), ref)  # the swap changes the function at λ = 0


def test_register_user_block():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.act = nn.ReLU()

        def forward(self, x):
            return x + self.fc(self.act(x))

    class PrunedTwice(PrunedBlock):
        family = "user"

        def __init__(self, blk):
            super().__init__(blk)
            self.fc = blk.fc
            self.act = LambdaAct(blk.act)

        def forward_linear(self, x):
            return x + self.fc(self.act(x))

        forward = forward_linear

    @register_block(Twice, family="user")
    class Handler(BlockHandler):
        def to_pruned(self, module, **_):
            return PrunedTwice(module)

    assert isinstance(get_handler(Twice()), Handler)
    model = nn.Sequential(Twice(), Twice())
    (info,) = apply_pruning(model, [1])
    assert info.family == "user" and model[1].fc is not None and model[1].lam == 1.0


def test_plan_json_round_trip(tmp_path):
    plan = PrunePlan(model="timm:convnext_atto", input_size=(3, 64, 64), blocks=[1, 3],
                     block_names=["stages.0.blocks.1", "stages.1.blocks.1"], lam=1.0,
                     selection_rule="manual", model_kwargs={"drop_path_rate": 0.0},
                     block_options={"swap_at_start": False}, notes="P2")
    again = PrunePlan.from_json(plan.to_json())
    assert again == plan
    path = tmp_path / "plan.json"
    plan.save(str(path))
    assert PrunePlan.load(str(path)) == plan
    d = json.loads(plan.to_json())
    d["schema_version"] = 99
    with pytest.raises(InputError, match="schema_version 99"):
        PrunePlan.from_json(json.dumps(d))
    d["schema_version"] = 1
    d["bogus"] = 1
    with pytest.raises(InputError, match="bogus"):
        PrunePlan.from_json(json.dumps(d))
    with pytest.raises(InputError, match="not valid JSON"):
        PrunePlan.from_json("{")
