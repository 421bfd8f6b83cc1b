"""updp.ort's model walks: the subgraphs of a node, and the checks that reach into them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from updp.core.errors import InputError
from updp.ort import check_names, check_tensor_data, subgraphs


def _branch(name: str, value: np.ndarray) -> onnx.GraphProto:
    const = helper.make_node("Constant", [], [f"{name}_out"], value=numpy_helper.from_array(value, f"{name}_c"))
    return helper.make_graph([const], name, [], [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)])


def _if_model(then_value: np.ndarray) -> onnx.ModelProto:
    node = helper.make_node("If", ["cond"], ["y"], then_branch=_branch("then", then_value),
                            else_branch=_branch("else", np.zeros(3, np.float32)))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_subgraphs_lists_graph_and_graphs_attributes_in_order():
    node = _if_model(np.ones(3, np.float32)).graph.node[0]  # make_node sorts attributes by name
    assert [a.name for a in node.attribute] == ["else_branch", "then_branch"]
    assert [g.name for g in subgraphs(node)] == ["else", "then"]
    many = helper.make_node("Custom", [], ["z"], domain="x.y")
    many.attribute.append(helper.make_attribute("bodies", [_branch("a", np.ones(1, np.float32)),
                                                           _branch("b", np.ones(1, np.float32))]))
    assert many.attribute[0].type == onnx.AttributeProto.GRAPHS
    assert [g.name for g in subgraphs(many)] == ["a", "b"]
    assert subgraphs(helper.make_node("Relu", ["x"], ["y"])) == []


def test_a_tensor_inside_a_branch_whose_dims_do_not_match_its_data_is_named():
    model = _if_model(np.ones(3, np.float32))
    check_tensor_data(model, "m.onnx")  # a well-formed model passes
    const = next(g for g in subgraphs(model.graph.node[0]) if g.name == "then").node[0]
    const.attribute[0].t.dims[:] = [4]
    with pytest.raises(InputError, match=r"'then_c' \(attribute 'value' of Constant .*holds 3 elements.*need 4"):
        check_tensor_data(model, "m.onnx")


def test_a_tensors_attribute_is_checked_too():
    model = _if_model(np.ones(3, np.float32))
    custom = helper.make_node("Custom", [], ["z"], domain="x.y")
    bad = numpy_helper.from_array(np.ones(2, np.float32), "packed")
    bad.dims[:] = [5]
    custom.attribute.append(helper.make_attribute("tables", [numpy_helper.from_array(np.ones(1, np.float32), "ok"),
                                                             bad]))
    model.graph.node.append(custom)
    with pytest.raises(InputError, match=r"'packed' \(attribute 'tables' of Custom .*holds 2 elements.*need 5"):
        check_tensor_data(model, "m.onnx")


def test_a_name_that_is_not_utf8_inside_a_branch_is_found():
    model = _if_model(np.ones(3, np.float32))
    data = model.SerializeToString().replace(b"then_out", b"then\xd6out")
    broken = onnx.ModelProto.FromString(data)
    with pytest.raises(InputError, match="not UTF-8"):
        check_names(broken, "m.onnx")
