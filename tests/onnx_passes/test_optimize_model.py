"""The `optimize_model` contract (updp/onnx_passes/pipeline.py): validated input, untouched input
model, clean output (no stale value_info or dead initializers), idempotence."""

import numpy as np
import onnx
import pytest
from onnx import helper

from updp.core.errors import InputError
from updp.onnx_passes import optimize_model
from updp.verify import check_equivalence


def test_pipeline_contract_idempotent_and_clean(mbv2_block, optimized):
    m = mbv2_block(c=8, t=6)
    m.graph.value_info.append(
        helper.make_tensor_value_info("/blk/dw/Conv_out0", onnx.TensorProto.FLOAT, [1, 48, 5, 6])
    )
    res = optimized(m)
    d = res.to_dict()
    for k in (
        "changed",
        "nodes_before",
        "nodes_after",
        "ops_before",
        "ops_after",
        "applied",
        "refusals",
        "decisions",
    ):
        assert k in d
    assert res.nodes_after < res.nodes_before
    assert [i.name for i in res.model.graph.input] == ["x"]
    assert [o.name for o in res.model.graph.output] == ["y"]
    produced = {o for n in res.model.graph.node for o in n.output}
    assert all(v.name in produced for v in res.model.graph.value_info)
    used = {i for n in res.model.graph.node for i in n.input}
    assert all(t.name in used for t in res.model.graph.initializer)
    again = optimize_model(res.model)
    assert not again.changed
    assert len(m.graph.node) == res.nodes_before  # the input model is untouched


def test_refusals_are_reported_once(make_builder):
    """A refusal repeated over iterations (and passes) appears once, from the last iteration."""
    b = make_builder(10)
    y = b.op("Conv", ["x", "w"], kernel_shape=[1, 1])
    b.rename_output(b.bn(y, 4), "y")
    res = optimize_model(b.model({"x": (1, 4, 3, 3), "w": (4, 4, 1, 1)}, {"y": None}))
    assert len(res.refusals) == len(set(res.refusals)) >= 1
    assert res.iterations == 1


@pytest.mark.parametrize("case", ["no_nodes", "old_opset"])
def test_unsupported_models_are_rejected(case, builder):
    if case == "no_nodes":
        m = builder.model({"x": (2,)}, {"x": (2,)}, check=False)
        match = "no nodes"
    else:
        builder.rename_output(builder.op("Relu", ["x"]), "y")
        m = builder.model({"x": (2,)}, {"y": (2,)})
        m.opset_import[0].version = 11
        match = "opset 11 is too old"
    with pytest.raises(InputError, match=match):
        optimize_model(m)


def _branch(name: str, op: str, t: str, local: str | None = None) -> onnx.GraphProto:
    """A one- or two-node If branch reading the main graph's `t` (optionally via a local tensor)."""
    nodes = [helper.make_node(op, [t], [local or f"{name}_out"], name=f"/{name}/{op}")]
    if local:
        nodes.append(helper.make_node("Neg", [local], [f"{name}_out"], name=f"/{name}/Neg"))
    out = helper.make_tensor_value_info(f"{name}_out", onnx.TensorProto.FLOAT, [1, 4, 5, 5])
    return helper.make_graph(nodes, name, [], [out])


def test_if_reading_a_main_graph_tensor(make_builder):
    """The passes optimize the main graph around an If and leave its subgraphs alone: the branches
    read `t`, the output of a conv chain that merges into one new node, so the If must still come
    after t's (new) producer; the then-branch defines a tensor named like the merged weight the
    main graph would otherwise create (a subgraph may not shadow an outer name)."""
    b = make_builder(30)
    t = b.bn(b.conv(b.conv("x", 4, 4, 1, name="/conv1"), 4, 4, 1), 4)
    b.nodes.append(
        helper.make_node(
            "If",
            ["cond"],
            ["z"],
            name="/if",
            then_branch=_branch("then", "Relu", t, local="/conv1_merged_weight"),
            else_branch=_branch("else", "Sigmoid", t),
        )
    )
    b.rename_output(b.op("Add", ["z", t]), "y")
    m = b.model({"x": (1, 4, 5, 5), "cond": ()}, {"y": (1, 4, 5, 5)}, check=False)
    m.graph.input[1].type.tensor_type.elem_type = onnx.TensorProto.BOOL
    onnx.checker.check_model(m, full_check=True)
    res = optimize_model(m)
    assert res.applied["merge_conv_chain"] == 1 and res.applied["fold_affine_after_linear"] == 1
    onnx.checker.check_model(res.model, full_check=True)
    assert [n.op_type for n in res.model.graph.node] == ["Conv", "If", "Add"]
    (before,) = [n for n in m.graph.node if n.op_type == "If"]
    (after,) = [n for n in res.model.graph.node if n.op_type == "If"]
    assert after.SerializeToString() == before.SerializeToString()
    x = np.random.default_rng(0).standard_normal((1, 4, 5, 5)).astype(np.float32)
    check_equivalence(m, res.model, feeds=[{"x": x, "cond": np.array(c)} for c in (True, False)])
