"""The Graph view's edit methods and the rule framework (updp/onnx_passes/_graph.py).

The framework's contract, checked for every rule: `match` returns a frozen dataclass, `check`
returns a refusal reason or a frozen plan and edits neither the graph nor the match.
"""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import helper

from updp.onnx_passes import canonicalize, channels_last, fold_affine, fold_layernorm, fold_residual
from updp.onnx_passes._graph import PROCEED, Graph, Proceed, RewriteTally, Rule, run_rules
from updp.onnx_passes.merge_linear_chain import MergeConvChain, MergeMatMulChain

ALL_RULES = [
    *canonicalize.RULES,
    *channels_last.RULES,
    *fold_affine.RULES,
    *fold_layernorm.RULES,
    *fold_residual.RULES,
    MergeConvChain(),
    MergeMatMulChain(),
]


# ------------------------------------------------------------------ one graph per rule where it fires


def _constant(b):
    c = b.op("Constant", [], value_float=2.0)
    b.rename_output(b.op("Max", ["x", c]), "y")
    return b.model({"x": (2, 4)}, {"y": None})


def _identity(b):
    b.rename_output(b.op("Relu", [b.op("Identity", [b.op("Relu", ["x"])])]), "y")
    return b.model({"x": (2, 4)}, {"y": None})


def _neutral(b):
    h = b.op("Add", [b.op("Relu", ["x"]), b.const(np.zeros(4))])
    b.rename_output(b.op("Relu", [h]), "y")
    return b.model({"x": (2, 4)}, {"y": None})


def _const_arith(b):
    b.rename_output(b.op("Sub", [b.op("Relu", ["x"]), b.const(b.rand(4))]), "y")
    return b.model({"x": (2, 4)}, {"y": None})


def _transpose_pair(b):
    y = b.op("Transpose", [b.op("Relu", ["x"])], perm=[0, 2, 1])
    b.rename_output(b.op("Relu", [b.op("Transpose", [y], perm=[0, 2, 1])]), "y")
    return b.model({"x": (2, 3, 4)}, {"y": None})


def _transposed_bn(b):
    y = b.bn(b.op("Transpose", ["x"], perm=[0, 2, 1]), 16)
    b.rename_output(b.op("Relu", [b.op("Transpose", [y], perm=[0, 2, 1])]), "y")
    return b.model({"x": (2, 5, 16)}, {"y": None})


def _sandwich(b):
    y = b.matmul(b.op("Transpose", ["x"], perm=[0, 2, 3, 1]), 8, 8)
    y = b.op("Mul", [y, b.const(b.rand(8))])
    b.rename_output(b.op("Transpose", [y], perm=[0, 3, 1, 2]), "y")
    return b.model({"x": (1, 8, 3, 4)}, {"y": None})


def _affine_after(b):
    b.rename_output(b.bn(b.conv("x", 4, 4, 3), 4), "y")
    return b.model({"x": (1, 4, 5, 6)}, {"y": None})


def _affine_before(b):  # a shift before a padded conv: the plan carries the border padding
    b.rename_output(b.conv(b.bn("x", 4), 4, 4, 3), "y")
    return b.model({"x": (1, 4, 5, 6)}, {"y": None})


def _layernorm(b):
    y = b.op("LayerNormalization", ["x", b.const(1 + b.rand(8)), b.const(b.rand(8))], axis=-1)
    b.rename_output(b.matmul(y, 8, 6), "y")
    return b.model({"x": (2, 3, 8)}, {"y": None})


def _residual(b):
    b.rename_output(b.op("Add", ["x", b.conv("x", 8, 8, 3)]), "y")
    return b.model({"x": (1, 8, 5, 6)}, {"y": None})


def _conv_chain(b):
    b.rename_output(b.conv(b.conv("x", 8, 64, 1), 64, 8, 3), "y")
    return b.model({"x": (1, 8, 5, 6)}, {"y": None})


def _matmul_chain(b):
    b.rename_output(b.matmul(b.matmul("x", 8, 8), 8, 8), "y")
    return b.model({"x": (1, 4, 8)}, {"y": None})


def _gelu_half_first(b):  # the erf GELU as torch.export writes it below opset 20
    h = b.op("Relu", ["x"])
    e = b.op("Erf", [b.op("Div", [h, b.const(np.array(1.4142135))])])
    half = b.op("Mul", [b.const(np.array(0.5)), b.op("Add", [e, b.const(np.array(1.0))])])
    b.rename_output(b.op("Mul", [h, half]), "y")
    return b.model({"x": (2, 4)}, {"y": None})


FIRING = {
    "ConstantToInitializer": _constant,
    "RemoveIdentity": _identity,
    "RemoveNeutralElementwise": _neutral,
    "ConstArithmetic": _const_arith,
    "CancelTransposes": _transpose_pair,
    "GeluConstantLast": _gelu_half_first,
    "TransposedBatchNorm": _transposed_bn,
    "ChannelsLastSandwich": _sandwich,
    "FoldAffineAfter": _affine_after,
    "FoldAffineBefore": _affine_before,
    "FoldLayerNormAffine": _layernorm,
    "FoldResidual": _residual,
    "MergeConvChain": _conv_chain,
    "MergeMatMulChain": _matmul_chain,
}


def _graph_state(g: Graph):
    """Everything a check could change: the protobuf, and the view's indexes and name sets."""
    return (
        g.model.SerializeToString(deterministic=True),
        [None if n is None else n.SerializeToString(deterministic=True) for n in g.nodes],
        {k: t.SerializeToString(deterministic=True) for k, t in g.inits.items()},
        dict(g.producer),
        {k: list(v) for k, v in g.consumers.items()},
        set(g.names),
        set(g.touched),
    )


def _is_frozen_dataclass(obj) -> bool:
    return dataclasses.is_dataclass(obj) and type(obj).__dataclass_params__.frozen


def _package_rule_classes(cls=Rule):
    for sub in cls.__subclasses__():
        if sub.__module__.startswith("updp."):
            yield sub
        yield from _package_rule_classes(sub)


def test_every_rule_has_a_firing_graph():
    """A new rule must be added to ALL_RULES and FIRING, so the contract tests cover it."""
    listed = {type(r).__name__ for r in ALL_RULES}
    assert listed == set(FIRING)
    assert {cls.__name__ for cls in _package_rule_classes()} == listed


@pytest.mark.parametrize("rule", ALL_RULES, ids=lambda r: type(r).__name__)
def test_match_is_frozen_and_check_mutates_nothing(rule, builder):
    model = FIRING[type(rule).__name__](builder)
    original = model.SerializeToString(deterministic=True)
    work = onnx.ModelProto()
    work.CopyFrom(model)
    g = Graph(work)
    plans = []
    for idx in g.alive():
        if rule.anchors and g.node(idx).op_type not in rule.anchors:
            continue
        m = rule.match(g, idx)
        if m is None:
            continue
        assert _is_frozen_dataclass(m), type(m)
        before, m_bytes = _graph_state(g), pickle.dumps(m)
        plan = rule.check(g, m)
        assert _graph_state(g) == before, "check edited the graph"
        assert pickle.dumps(m) == m_bytes, "check edited the match"
        if isinstance(plan, str):
            continue
        assert _is_frozen_dataclass(plan), type(plan)
        assert pickle.dumps(rule.check(g, m)) == pickle.dumps(plan), "check is not deterministic"
        plans.append(plan)
    assert plans, f"{rule.name} does not fire on its graph"
    assert model.SerializeToString(deterministic=True) == original


@pytest.mark.parametrize("rule", ALL_RULES, ids=lambda r: type(r).__name__)
def test_rule_rewrite_is_exact(rule, builder, op_counts):
    """Run the rule alone (one run_rules sweep): it fires, the graph stays valid and equivalent."""
    from updp.verify import check_equivalence

    model = FIRING[type(rule).__name__](builder)
    work = onnx.ModelProto()
    work.CopyFrom(model)
    g = Graph(work)
    tally = RewriteTally()
    run_rules(g, [rule], tally)
    out = g.finish()
    assert tally.applied[rule.name] >= 1, tally.refusals
    assert tally.changed
    onnx.checker.check_model(out, full_check=True)
    check_equivalence(model, out)


# ------------------------------------------------------------------ run_rules


@dataclass(frozen=True)
class _ReluMatch:
    idx: int


@dataclass(frozen=True)
class _ReluPlan:
    op: str


class _ReluToSigmoid(Rule[_ReluMatch, _ReluPlan]):
    """A toy rule: Relu named "/keep" refuses, other Relus become the op its plan names."""

    name = "toy"
    anchors = ("Relu",)

    def match(self, g, idx):
        return _ReluMatch(idx)

    def check(self, g, m):
        return "named keep" if g.node(m.idx).name == "/keep" else _ReluPlan("Sigmoid")

    def rewrite(self, g, m, plan, tally):
        g.set_op_type(m.idx, plan.op)
        tally.decisions.append(f"{g.label(m.idx)} -> {plan.op}")


def test_run_rules_passes_the_plan_and_reports_refusals(builder):
    y = builder.op("Relu", ["x"], "/keep")
    builder.rename_output(builder.op("Relu", [y], "/change"), "y")
    g = Graph(builder.model({"x": (2,)}, {"y": None}))
    tally = RewriteTally()
    run_rules(g, [_ReluToSigmoid()], tally)
    assert [g.node(i).op_type for i in g.alive()] == ["Relu", "Sigmoid"]
    assert tally.refusals == ["toy @ /keep: named keep"]
    assert tally.decisions == ["/change -> Sigmoid"]
    assert tally.applied == {"toy": 1} and tally.changed


def test_tally_merge():
    a, b = RewriteTally(), RewriteTally(changed=True)
    a.applied["x"] += 1
    b.applied["x"] += 2
    b.refusals.append("r")
    b.decisions.append("d")
    a.merge(b)
    assert a.changed and a.applied == {"x": 3} and a.refusals == ["r"] and a.decisions == ["d"]
    assert isinstance(PROCEED, Proceed)


# ------------------------------------------------------------------ Graph edit methods


def test_set_initializer_replaces_a_removed_constant(builder):
    c = builder.op("Constant", [], "/c", value_float=2.0)
    builder.rename_output(builder.op("Max", ["x", c]), "y")
    g = Graph(builder.model({"x": (2,)}, {"y": None}))
    with pytest.raises(AssertionError, match="still produced"):
        g.set_initializer(c, np.array(3.0, np.float32))
    g.remove(0)
    g.set_initializer(c, np.array(3.0, np.float32))
    assert g.const(c) == 3.0
    out = g.finish()
    assert [t.name for t in out.graph.initializer] == [c]
    assert onnx.numpy_helper.to_array(out.graph.initializer[0]) == 3.0
    onnx.checker.check_model(out, full_check=True)


def test_set_op_type_keeps_value_info(builder):
    builder.rename_output(builder.op("Relu", [builder.op("Relu", ["x"], "/a")]), "y")
    m = builder.model({"x": (2,)}, {"y": None})
    m.graph.value_info.append(helper.make_tensor_value_info("/a_out0", onnx.TensorProto.FLOAT, [2]))
    g = Graph(m)
    g.set_op_type(0, "Sigmoid")
    out = g.finish()
    assert [n.op_type for n in out.graph.node] == ["Sigmoid", "Relu"]
    assert [v.name for v in out.graph.value_info] == ["/a_out0"]


def test_set_attribute_replaces_in_place_or_appends(builder):
    builder.rename_output(
        builder.op("Gemm", ["x", builder.const(builder.rand(3, 2))], alpha=2.0, beta=3.0, transB=0), "y"
    )
    g = Graph(builder.model({"x": (4, 3)}, {"y": None}))
    g.set_attribute(0, "alpha", 1.0)
    g.set_attribute(0, "transA", 0)
    n = g.node(0)
    assert [a.name for a in n.attribute] == ["alpha", "beta", "transB", "transA"]
    assert helper.get_attribute_value(n.attribute[0]) == 1.0


def test_release_name_lets_fresh_reuse_it(builder):
    builder.rename_output(builder.op("Relu", ["x"], "/act"), "y")
    g = Graph(builder.model({"x": (2,)}, {"y": None}))
    assert g.fresh("/act") == "/act_1"
    g.remove(0)
    g.release_name("/act")
    assert g.fresh("/act") == "/act"


def test_release_name_keeps_a_name_still_in_use(builder):
    """A name a live node or a tensor still carries stays taken (node and tensor names share
    one pool in the view), so `fresh` cannot hand out a duplicate."""
    y = builder.op("Relu", ["x"], "/act")
    builder.rename_output(builder.op("Relu", [y], "Relu"), "y")
    g = Graph(builder.model({"x": (2,)}, {"y": None}))
    g.remove(0)
    g.release_name("Relu")  # the other node's name: kept
    g.release_name(y)  # a tensor that is still read: kept
    assert g.fresh("Relu") == "Relu_1"
    assert g.fresh(y) == f"{y}_1"


def test_add_init_keeps_0d_constants_0d(builder):
    builder.rename_output(builder.op("Relu", ["x"]), "y")
    g = Graph(builder.model({"x": (2,)}, {"y": None}))
    name = g.add_init(np.array(2.5, np.float32), "c")
    assert list(g.inits[name].dims) == [] and g.const(name).shape == ()
    g.set_const_input(0, 0, np.array(1.0, np.float32))
    assert [list(g.inits[i].dims) for i in g.node(0).input] == [[]]


def test_protected_is_recomputed_after_an_edit(builder):
    """Removing an Identity between Erf and its Add completes the GELU pattern: the Add and Muls
    after it must be protected for the rest of the sweep, not only from the next one."""
    h = builder.op("Relu", ["x"])
    e = builder.op("Identity", [builder.op("Erf", [builder.op("Div", [h, builder.const(np.array(1.4142135))])])])
    a = builder.op("Add", [e, builder.const(np.array(1.0))], "/act/Add")
    m = builder.op("Mul", [h, a], "/act/Mul")
    builder.rename_output(builder.op("Mul", [m, builder.const(np.array(0.5))], "/act/Mul_1"), "y")
    g = Graph(builder.model({"x": (2, 4)}, {"y": None}))
    labels = lambda: {g.label(i) for i in g.protected()}  # noqa: E731
    assert "/act/Add" not in labels()
    ident = next(i for i in g.alive() if g.node(i).op_type == "Identity")
    assert g.bypass(ident, g.node(ident).input[0])
    assert {"/act/Add", "/act/Mul", "/act/Mul_1"} <= labels()


def _if_reading(t: str, local: str) -> onnx.NodeProto:
    """An If whose branches read the outer tensor `t`; the then-branch defines `local`."""
    then = helper.make_graph(
        [helper.make_node("Relu", [t], [local], name="/then/relu"), helper.make_node("Neg", [local], ["o1"])],
        "then",
        [],
        [helper.make_tensor_value_info("o1", onnx.TensorProto.FLOAT, [2])],
    )
    other = helper.make_graph(
        [helper.make_node("Sigmoid", [t], ["o2"], name="/else/sigmoid")],
        "else",
        [],
        [helper.make_tensor_value_info("o2", onnx.TensorProto.FLOAT, [2])],
    )
    return helper.make_node("If", ["cond"], ["z"], name="/if", then_branch=then, else_branch=other)


def _with_if(b) -> onnx.ModelProto:
    """x -> Relu "/act" -> t; z = If(cond) reading t; y = z + t (cond a bool graph input)."""
    t = b.op("Relu", ["x"], "/act")
    b.nodes.append(_if_reading(t, "local"))
    b.rename_output(b.op("Add", ["z", t]), "y")
    m = b.model({"x": (2,), "cond": ()}, {"y": (2,)}, check=False)
    m.graph.input[1].type.tensor_type.elem_type = onnx.TensorProto.BOOL
    onnx.checker.check_model(m, full_check=True)
    return m


def test_subgraph_reads_are_uses_and_its_names_are_taken(builder):
    g = Graph(_with_if(builder))
    t = g.node(0).output[0]
    assert g.uses(t) == 2 and g.single_consumer(t) is None
    assert g.fresh("local") == "local_1"  # a subgraph may not shadow an outer name


def test_finish_orders_a_node_after_the_producers_its_subgraphs_read(builder):
    """Regression: the topological sort looked only at a node's inputs, so an If whose branch reads
    a tensor produced by a node a rewrite had just appended was placed before that node."""
    g = Graph(_with_if(builder))
    t = g.node(0).output[0]
    g.remove(0)
    g.make_node("Sigmoid", ["x"], [t], "/act")  # a rewrite re-creating t, appended last
    out = g.finish()
    assert [n.op_type for n in out.graph.node] == ["Sigmoid", "If", "Add"]
    onnx.checker.check_model(out, full_check=True)
