"""merge_linear_chain: conv chains and matmul chains merged where the cost model says it pays."""

import pytest

from updp.onnx_passes import optimize_model
from updp.onnx_passes.cost import CostModel
from updp.onnx_passes.merge_linear_chain import plan_segments
from updp.verify import check_equivalence

MERGE_ALWAYS = CostModel(op_overhead_ns=1e9)  # per-node overhead dominates: fewer nodes always win

# ------------------------------------------------------------------ planner


def test_plan_segments_picks_the_cheapest_partition():
    # merging 0..1 is cheap, 1..2 is not exact, everything else costs its length
    def cost(i, j):
        if (i, j) == (0, 1):
            return 1.0
        if i == j:
            return 1.0
        return None

    segs, best = plan_segments(3, cost)
    assert segs == [(0, 1), (2, 2)]
    assert best == 2.0


# ------------------------------------------------------------------ conv chains: MobileNetV2-like


@pytest.mark.parametrize("stride", [1, 2])
def test_mbv2_t6_merges_to_one_dense_conv(stride, mbv2_block, optimized, impulse_feeds, weight_of):
    m = mbv2_block(stride=stride, residual=stride == 1)
    res = optimized(m, impulse_feeds("x", (1, 8, 5, 6)))
    convs = [n for n in res.model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 1
    assert weight_of(res.model, convs[0]).shape == (8, 8, 3, 3)
    assert convs[0].name.startswith("/blk/pw/Conv")
    assert "merge_conv_chain" in res.applied
    if stride == 1:
        assert res.applied.get("fold_residual") == 1
    assert any("dense 3x3" in d for d in res.decisions), res.decisions


def test_mbv2_t1_dw_pw_kept_separate(make_builder, optimized, op_counts):
    b = make_builder(1)
    y = b.bn(b.conv("x", 32, 32, 3, groups=32, name="/blk/dw/Conv"), 32)
    b.rename_output(b.bn(b.conv(y, 32, 16, 1, name="/blk/pw/Conv"), 16), "y")
    # realistic size: at 8x8 per-op overhead dominates and merging is (correctly) cheaper
    res = optimized(b.model({"x": (1, 32, 56, 56)}, {"y": None}))
    assert op_counts(res.model) == {"Conv": 2}
    assert any("separate is cheapest" in r for r in res.refusals), res.refusals


def test_resnet_basic_3x3_3x3_refused(make_builder, optimized, op_counts):
    b = make_builder(2)
    y = b.bn(b.conv("x", 8, 8, 3), 8)
    y = b.bn(b.conv(y, 8, 8, 3), 8)
    b.rename_output(b.op("Add", ["x", y]), "y")
    res = optimized(b.model({"x": (1, 8, 6, 6)}, {"y": None}))
    assert op_counts(res.model) == {"Conv": 2, "Add": 1}
    assert any("zero padding between convs is not exact" in r for r in res.refusals), res.refusals


def test_resnet_bottleneck_merge_is_exact_when_forced(make_builder, op_counts, impulse_feeds):
    """With a cost model that favours merging, PW -> 3x3 stride 2 -> PW becomes one conv, exactly."""
    b = make_builder(3)
    y = b.conv("x", 16, 4, 1, bias=False)  # no bias through the padding: no border Add
    y = b.conv(y, 4, 4, 3, stride=2, pad=1)
    b.rename_output(b.conv(y, 4, 16, 1), "y")
    m = b.model({"x": (1, 16, 5, 6)}, {"y": None})
    res = optimize_model(m, cost_model=MERGE_ALWAYS)
    assert op_counts(res.model).get("Conv") == 1
    check_equivalence(m, res.model, feeds=impulse_feeds("x", (1, 16, 5, 6)))


def test_bias_through_padding_becomes_border_add(builder, optimized, op_counts, impulse_feeds):
    """PW(bias, C->8C) -> 3x3 padded (8C->C): one dense 3x3 is cheaper; the PW bias reaches the zero
    padding, so the merged conv gets a constant border field Add."""
    y = builder.conv("x", 8, 64, 1)
    builder.rename_output(builder.conv(y, 64, 8, 3, pad=1), "y")
    m = builder.model({"x": (1, 8, 5, 6)}, {"y": None})
    res = optimized(m, impulse_feeds("x", (1, 8, 5, 6)))
    assert res.applied["merge_conv_chain"] == 1
    assert op_counts(res.model) == {"Conv": 1, "Add": 1}
    assert any("dense 3x3 8x8" in d for d in res.decisions), res.decisions


def test_chain_intermediate_graph_output_not_merged(make_builder, op_counts):
    b = make_builder(4)
    y = b.conv("x", 8, 48, 1)
    b.rename_output(y, "mid")
    b.rename_output(b.conv("mid", 48, 8, 1), "y")
    res = optimize_model(b.model({"x": (1, 8, 4, 4)}, {"y": None, "mid": None}))
    assert op_counts(res.model) == {"Conv": 2}


def test_depthwise_chain_stays_depthwise(make_builder, impulse_feeds, weight_of):
    b = make_builder(5)
    y = b.conv("x", 8, 8, 3, groups=8, pad=0)
    b.rename_output(b.conv(y, 8, 8, 3, groups=8, pad=0), "y")
    m = b.model({"x": (1, 8, 7, 7)}, {"y": None})
    res = optimize_model(m, cost_model=MERGE_ALWAYS)
    (conv,) = [n for n in res.model.graph.node if n.op_type == "Conv"]
    assert weight_of(res.model, conv).shape == (8, 1, 5, 5)
    check_equivalence(m, res.model, feeds=impulse_feeds("x", (1, 8, 7, 7)))


def test_chain_ending_at_a_dilated_conv_refused(builder, unchanged, assert_refused):
    y = builder.conv("x", 8, 8, 1, name="/blk/pw/Conv")
    W = builder.const(builder.rand(8, 8, 3, 3))
    y = builder.op("Conv", [y, W], "/blk/dil/Conv", kernel_shape=[3, 3], pads=[2] * 4, dilations=[2, 2])
    builder.rename_output(y, "y")
    res = unchanged(builder.model({"x": (1, 8, 6, 6)}, {"y": None}), cost_model=MERGE_ALWAYS)
    assert_refused(res, "merge_conv_chain", "chain ends at a conv that cannot merge: /blk/dil/Conv: dilated conv")


def test_bias_through_padding_with_dynamic_shape_refused(builder, unchanged, assert_refused):
    y = builder.conv("x", 4, 4, 1)
    builder.rename_output(builder.conv(y, 4, 4, 3, pad=1), "y")
    m = builder.model({"x": (1, 4, "H", "W")}, {"y": None})
    res = unchanged(m, cost_model=MERGE_ALWAYS)
    assert_refused(res, "merge_conv_chain", "dynamic spatial shape: a bias through zero padding needs static H, W")


# ------------------------------------------------------------------ matmul chains


def test_matmul_chain_merges(builder, optimized, op_counts):
    y = builder.matmul("x", 8, 8, name="/mlp/fc1")
    builder.rename_output(builder.matmul(y, 8, 8, name="/mlp/fc2"), "y")
    res = optimized(builder.model({"x": (1, 4, 8)}, {"y": None}))
    assert res.applied["merge_matmul_chain"] == 1
    assert op_counts(res.model) == {"MatMul": 1, "Add": 1}
    assert any("fc1\u2192fc2" in d and "linear 8x8" in d for d in res.decisions), res.decisions


def test_gemm_chain_merges_into_one_gemm(builder, optimized, op_counts):
    y = builder.op("Gemm", ["x", builder.const(builder.rand(8, 6)), builder.const(builder.rand(6))])
    builder.rename_output(builder.op("Gemm", [y, builder.const(builder.rand(5, 6))], transB=1), "y")
    res = optimized(builder.model({"x": (4, 8)}, {"y": None}))
    assert res.applied["merge_matmul_chain"] == 1
    assert op_counts(res.model) == {"Gemm": 1}


def test_matmul_bottleneck_kept_separate(make_builder, optimized, op_counts):
    b = make_builder(10)
    y = b.matmul("x", 384, 32)
    b.rename_output(b.matmul(y, 32, 384), "y")
    res = optimized(b.model({"x": (1, 196, 384)}, {"y": None}))
    # the first bias moves into the second (b1 W2 + b2); the product is not formed
    assert op_counts(res.model) == {"MatMul": 2, "Add": 1}
    assert any("separate is cheapest" in r for r in res.refusals), res.refusals
