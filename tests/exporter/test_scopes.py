"""Node-name scopes: the fragment of a module path, and node times attributed to blocks."""

from __future__ import annotations

import pytest

from updp.core.errors import InputError
from updp.exporter.scopes import OTHER, NodeTime, aggregate_by_block, block_scopes, scope_fragment


def test_scope_fragment_examples():
    assert scope_fragment("stages.0.blocks.3") == "/stages/stages.0/blocks/blocks.3/"
    assert scope_fragment("layer2.0.downsample.0") == "/layer2/layer2.0/downsample/downsample.0/"
    assert scope_fragment("layer.0.0") == "/layer/layer.0/layer.0.0/"
    assert scope_fragment("head") == "/head/"
    assert scope_fragment("0.1") == "/0/0.1/"  # a Sequential root: all atoms numeric
    assert scope_fragment("blocks.1") not in "/blocks/blocks.10/conv/Conv"
    assert block_scopes(["a.0", "a.1"]) == {"0 a.0": "/a/a.0/", "1 a.1": "/a/a.1/"}
    for bad in ("", "a..b", ".a"):
        with pytest.raises(InputError):
            scope_fragment(bad)


def test_scope_fragment_matches_exporter_names(tiny_scoped):
    model, blocks = tiny_scoped
    names = [n.name for n in model.graph.node]
    for path in blocks:
        frag = scope_fragment(path)
        ops = sorted(n.split("/")[-1] for n in names if frag in n)
        assert ops == ["Add", "Conv", "Conv", "Relu"], (path, frag, names)


def test_scope_fragment_matches_timm_and_torchvision(torchscript_export):
    timm = pytest.importorskip("timm")
    torchvision = pytest.importorskip("torchvision")
    net = timm.create_model("convnext_atto", pretrained=False)
    names = [n.name for n in torchscript_export(net, 64).graph.node]
    paths = [f"stages.{i}.blocks.{j}" for i, s in enumerate(net.stages) for j in range(len(s.blocks))]
    paths += [f"stages.{i}.downsample.1" for i in range(1, 4)]
    for p in paths:
        assert any(scope_fragment(p) + "conv" in n.lower() for n in names), p
    names = [n.name for n in torchscript_export(torchvision.models.resnet18(), 64).graph.node]
    for p in ["layer1.0", "layer4.1", "layer2.0.downsample.0"]:
        assert any(n.startswith(scope_fragment(p)) for n in names), p


def _nt(name, us, order):
    return NodeTime(name=name, op_type=name.split("/")[-1], mean_us=us, order=order)


def test_aggregate_rules():
    nodes = [_nt("/stem/Conv", 5, 0),
             _nt("ReorderInput", 1, 1),                     # unscoped after stem: stays OTHER
             _nt("/s/s.0/Conv", 10, 2),
             _nt("Gelu_token_3", 4, 3),                     # unscoped: inherits s.0
             _nt("/s/s.0/inner/inner.1/Conv", 7, 4),        # nested block: longest fragment wins
             _nt("/s/s.0/inner/inner.1/Relu_output_0_nchwc", 3, 5),
             _nt("/s/s.1/Conv", 20, 6),
             _nt("/s/s.10/Conv", 2, 7),                     # not s.1
             _nt("/head/Gemm", 8, 8)]
    scopes = {"s.0": "/s/s.0/", "inner": "/s/s.0/inner/inner.1/", "s.1": "/s/s.1/"}
    prof = aggregate_by_block(list(reversed(nodes)), scopes)  # order comes from NodeTime.order
    got = {b.label: (b.total_us, b.n_nodes) for b in prof.blocks}
    assert got == {"s.0": (14, 2), "inner": (10, 2), "s.1": (20, 1), OTHER: (16, 4)}
    assert [b.label for b in prof.blocks] == ["s.0", "inner", "s.1", OTHER]
    assert prof.total_us == 60
    assert sum(b.share for b in prof.blocks) == pytest.approx(1, abs=1e-12)
    assert prof.inherited == ["ReorderInput", "Gelu_token_3"]
    strict = aggregate_by_block(nodes, scopes, inherit_unscoped=False)
    assert strict.get("s.0").total_us == 10 and strict.get(OTHER).total_us == 20
    d = prof.to_dict()
    assert [b["label"] for b in d["blocks"]] == ["s.0", "inner", "s.1", OTHER]
    table = prof.format_table()
    assert "s.0" in table and "100.0%" in table
    with pytest.raises(InputError):
        aggregate_by_block(nodes, {OTHER: "/s/"})


