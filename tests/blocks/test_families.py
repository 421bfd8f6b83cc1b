"""Pruned training forms of the four block families, timm and torchvision.

For each family: λ = 0 is bit-for-bit the baseline (block and whole model), λ = 1 is exactly
affine up to the end-of-block nonlinearity, λ = 0.5 is differentiable and in between, and the
pruned block shares the original's parameters. All in float64, eval mode, with random norm
statistics and layer scales (`randomize_norm_stats`) so no equivalence holds trivially.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torchvision
from torch import nn

from updp.blocks import (
    ChannelBatchNorm,
    apply_pruning,
    find_blocks,
    pruned_blocks,
    randomize_norm_stats,
    set_lam,
)


def _tv_vit() -> nn.Module:
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                hidden_dim=32, mlp_dim=64, num_classes=10)


# id -> (builder, input H=W, expected family, expected class name of the blocks)
CASES = {
    "timm-convnext-convmlp": (lambda: timm.create_model("convnext_atto", num_classes=10), 32, "convnext"),
    "timm-convnext-linear": (lambda: timm.create_model("convnext_atto", conv_mlp=False, depths=(1, 1, 2, 1),
                                                       num_classes=10), 32, "convnext"),
    "tv-convnext": (lambda: torchvision.models.convnext_tiny(num_classes=10), 32, "convnext"),
    "timm-vit": (lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=2,
                                           num_classes=10), 32, "vit"),
    "timm-deit-layerscale": (lambda: timm.create_model("deit_tiny_patch16_224", img_size=32, patch_size=8,
                                                       depth=2, init_values=1e-5, num_classes=10), 32, "vit"),
    "tv-vit": (_tv_vit, 32, "vit"),
    "timm-mobilenetv2": (lambda: timm.create_model("mobilenetv2_050", num_classes=10), 32,
                         "inverted_residual"),
    "tv-mobilenetv2": (lambda: torchvision.models.mobilenet_v2(width_mult=0.5, num_classes=10), 32,
                       "inverted_residual"),
    "timm-resnet-basic": (lambda: timm.create_model("resnet18", num_classes=10), 32, "resnet"),
    "timm-resnet-bottleneck": (lambda: timm.create_model("resnet26", num_classes=10), 32, "resnet"),
    "tv-resnet-basic": (lambda: torchvision.models.resnet18(num_classes=10), 32, "resnet"),
    "tv-resnet-bottleneck": (lambda: torchvision.models.resnet50(num_classes=10), 32, "resnet"),
}


def _prepare(case: str):
    """Baseline model (float64, eval, random stats), its recognized blocks, and a test input."""
    build, size, family = CASES[case]
    torch.manual_seed(0)
    model = build().double().eval()
    randomize_norm_stats(model, seed=1)
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    nn.init.normal_(head.weight, std=0.1)  # torchvision ViT zero-initializes its head
    blocks = find_blocks(model, size)
    assert blocks and all(b.family == family for b in blocks)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    return model, blocks, x


def _randomize_new_bns(model: nn.Module, seed: int = 7) -> None:
    for i, m in enumerate(model.modules()):
        if isinstance(m, ChannelBatchNorm):
            randomize_norm_stats(m, seed=seed + i)


@pytest.fixture(scope="module", params=sorted(CASES))
def pruned_case(request):
    model, blocks, x = _prepare(request.param)
    baseline = copy.deepcopy(model)
    originals = {b.name: model.get_submodule(b.name) for b in blocks}
    idx = [b.index for b in blocks if b.prunable]
    assert idx, "every block of these models is prunable"
    infos = apply_pruning(model, idx, lam=0.0)
    _randomize_new_bns(model)
    return request.param, model, baseline, originals, infos, blocks, x


def test_lambda0_whole_model_bit_exact(pruned_case):
    _, model, baseline, _, _, _, x = pruned_case
    set_lam(model, 0.0)
    with torch.no_grad():
        assert torch.equal(model(x), baseline(x))


def test_lambda0_each_block_bit_exact(pruned_case):
    _, model, _, originals, infos, blocks, _ = pruned_case
    set_lam(model, 0.0)
    g = torch.Generator().manual_seed(3)
    for info, before in zip(infos, blocks, strict=True):
        xin = torch.randn(before.input_shape, generator=g, dtype=torch.float64)
        with torch.no_grad():
            ref = originals[info.name](xin.clone())
            out = model.get_submodule(info.name)(xin.clone())
        assert torch.equal(out, ref), info.name


def _affine_defect(f, x: torch.Tensor, y: torch.Tensor) -> float:
    """max |f(a x + b y) - f(0) - a (f(x) - f(0)) - b (f(y) - f(0))| relative to max |f(x)|."""
    a, b = 0.7, -1.3
    with torch.no_grad():
        f0 = f(torch.zeros_like(x))
        lhs = f(a * x + b * y) - f0
        rhs = a * (f(x) - f0) + b * (f(y) - f0)
        scale = max(f(x).abs().max().item(), 1.0)
    return (lhs - rhs).abs().max().item() / scale


def test_lambda1_is_affine_up_to_end_nonlinearity(pruned_case):
    case, model, _, originals, infos, blocks, _ = pruned_case
    set_lam(model, 1.0)
    g = torch.Generator().manual_seed(4)
    for info, before in zip(infos, blocks, strict=True):
        blk = model.get_submodule(info.name)
        shape = before.input_shape
        if case.endswith("vit") or "deit" in case:
            # forward_linear is the MLP half; its input is the post-attention residual stream
            shape = before.output_shape
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        y = torch.randn(shape, generator=g, dtype=torch.float64)
        assert _affine_defect(blk.forward_linear, x, y) < 1e-10, info.name
        # and the baseline block is not affine (so the test above means something)
        if not (case.endswith("vit") or "deit" in case):
            assert _affine_defect(originals[info.name], x, y) > 1e-4, info.name
    set_lam(model, 0.0)


def test_lambda_half_differentiable_and_between(pruned_case):
    _, model, _, _, infos, _, x = pruned_case
    with torch.no_grad():
        set_lam(model, 0.0)
        y0 = model(x)
        set_lam(model, 1.0)
        y1 = model(x)
    set_lam(model, 0.5)
    xg = x.clone().requires_grad_(True)
    y = model(xg)
    y.square().sum().backward()
    assert torch.isfinite(y).all()
    assert xg.grad is not None and torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0
    blk = model.get_submodule(infos[0].name)
    grads = [p.grad for p in blk.parameters() if p.requires_grad]
    assert any(gr is not None and gr.abs().sum() > 0 for gr in grads)
    model.zero_grad(set_to_none=True)
    assert not torch.equal(y.detach(), y0) and not torch.equal(y.detach(), y1)
    # no jump at the end points: the python branches at λ = 0 and 1 agree with the blend formula
    eps = 1e-7
    with torch.no_grad():
        set_lam(model, eps)
        ye0 = model(x)
        set_lam(model, 1 - eps)
        ye1 = model(x)
    scale = y1.abs().max() + y0.abs().max()
    assert (ye0 - y0).abs().max() < 1e-4 * scale
    assert (ye1 - y1).abs().max() < 1e-4 * scale
    set_lam(model, 0.0)


def test_parameters_are_shared(pruned_case):
    _, model, _, originals, infos, _, _ = pruned_case
    for info in infos:
        blk = model.get_submodule(info.name)
        orig = originals[info.name]
        pruned_params = {id(p) for p in blk.parameters()}
        for name, p in orig.named_parameters():
            assert id(p) in pruned_params, f"{info.name}.{name} not shared"
            assert blk.get_parameter(name) is p, f"{info.name}.{name} has another key"
        for m in orig.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                assert any(m is n for n in blk.modules())


def test_training_mode_lambda_half_runs(pruned_case):
    _, model, _, _, _, _, x = pruned_case
    m = copy.deepcopy(model).train()
    set_lam(m, 0.5)
    y = m(x)
    y.sum().backward()
    assert torch.isfinite(y).all()
    # the new BNs saw data (running stats moved from the randomized values)
    assert all(bn.num_batches_tracked.item() > 0 for bn in m.modules() if isinstance(bn, ChannelBatchNorm))


def test_lambda_saved_in_checkpoint(pruned_case, tmp_path):
    _, model, _, _, _, _, _ = pruned_case
    set_lam(model, 0.25)
    path = tmp_path / "ckpt.pt"
    torch.save(model.state_dict(), path)
    set_lam(model, 1.0)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    assert {b.lam for _, b in pruned_blocks(model)} == {0.25}
    set_lam(model, 0.0)
