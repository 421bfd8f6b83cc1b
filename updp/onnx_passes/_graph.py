"""A small mutable view of an ONNX graph that the rewrite rules share, and the rule framework.

The view keeps producer/consumer maps up to date as rules edit the graph, so a rule never rescans
the whole graph; finds constants held by initializers or `Constant` nodes; creates unique names;
writes new weights without touching initializers shared with nodes outside the match; and at the
end (`finish`) restores a topological node order, drops unused initializers and stale value_info.
Rules edit only through its methods, so those indexes and caches cannot drift from the protobuf.

Subgraphs (If/Loop/Scan bodies) are left as they are: a main-graph tensor a subgraph reads counts
as a use (it keeps its name and value), a name a subgraph uses or defines is never handed out for
a new tensor, and `finish` orders a node after the producers of what its subgraphs read.

The framework: a `Rule` has `match` (cheap: is this the anchor of the pattern?), `check` (every
precondition, each refusal with a reason; pure) and `rewrite`; `run_rules` drives them and records
what happened in a `RewriteTally`.
"""

from __future__ import annotations

import heapq
import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeAlias, TypeVar

import ml_dtypes
import numpy as np
import onnx
from onnx import helper, numpy_helper

from updp.core.errors import InputError
from updp.ort import subgraphs

logger = logging.getLogger(__name__)

LINEAR_OPS = ("Conv", "Gemm", "MatMul")


def attr(node: onnx.NodeProto, name: str, default=None):
    """The value of attribute `name` of `node`, or `default` when the node does not set it."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def const_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a `Constant` node, or None for the forms the passes do not handle."""
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    return None  # sparse_value / string values: not handled, treated as non-constant


def _tensor(arr: np.ndarray, name: str) -> onnx.TensorProto:
    """`arr` as a TensorProto of the same shape.

    Not through `np.ascontiguousarray`, which returns at least 1-D: a 0-d constant written as
    shape (1,) changes the rank of what it broadcasts with (`from_array` copies any layout).
    """
    return numpy_helper.from_array(np.asarray(arr), name)


def _subgraph_refs(node: onnx.NodeProto) -> tuple[set[str], set[str]]:
    """(reads, names) of the subgraphs (If/Loop/Scan bodies) of `node`, nested ones included.

    `reads`: every name a subgraph node reads or a subgraph returns as an output, which covers
    the main-graph tensors it uses (a subgraph may read any tensor of its enclosing scopes without
    listing it as an input). `names`: every tensor name a subgraph uses or defines, which the main
    graph must not reuse for a new tensor (a subgraph may not shadow an outer name).
    """
    reads: set[str] = set()
    names: set[str] = set()
    for sg in subgraphs(node):
        reads.update(o.name for o in sg.output)
        names.update(v.name for v in (*sg.input, *sg.output, *sg.value_info))
        names.update(t.name for t in sg.initializer)
        for n in sg.node:
            reads.update(i for i in n.input if i)
            names.update(o for o in n.output if o)
            inner_reads, inner_names = _subgraph_refs(n)
            reads |= inner_reads
            names |= inner_names
    names |= reads
    return reads, names


class Graph:
    """Mutable graph with incremental producer/consumer maps. Nodes are addressed by index."""

    def __init__(self, model: onnx.ModelProto, *, infer: bool = True):
        self.model = model
        g = model.graph
        self.nodes: list[onnx.NodeProto | None] = [n for n in g.node]
        self.inits: dict[str, onnx.TensorProto] = {t.name: t for t in g.initializer}
        self._arrays: dict[str, np.ndarray] = {}
        self.graph_inputs = {i.name for i in g.input}
        self.graph_outputs = {o.name for o in g.output}
        self.sub_refs: set[str] = set()  # main-graph names a subgraph may read: they count as uses
        self.sub_names: set[str] = set()  # every name used or defined in a subgraph
        for n in g.node:
            reads, names = _subgraph_refs(n)
            self.sub_refs |= reads
            self.sub_names |= names
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = defaultdict(list)
        self.names: set[str] = set(self.inits) | self.graph_inputs | self.graph_outputs | self.sub_names
        for idx, n in enumerate(self.nodes):
            self._index(idx, n)
        self.touched: set[str] = set()  # tensors whose value_info may be stale
        self.shapes: dict[str, tuple | None] = infer_shapes(model) if infer else {}
        self._protected: set[int] | None = None

    def protected(self) -> set[int]:
        """Nodes of activation patterns that ONNX Runtime fuses into one kernel; rules leave them be.

        The erf form of GELU, `x * 0.5 * (1 + Erf(x / sqrt(2)))`, becomes one `Gelu` kernel under
        ORT_ENABLE_EXTENDED/ALL. Folding its `/ sqrt(2)` or `* 0.5` into a neighbouring linear op is
        exact algebra, but it breaks that fusion and measured ~7% slower on ConvNeXt-T (ORT 1.31,
        CPU). So these nodes are not rewritten: the erf's producer (a Div/Mul by a constant) and the
        Add/Mul nodes that follow it, up to the second multiply.

        Computed on first use and again after any structural edit (inputs, outputs, op types, nodes
        added or removed: those methods drop the cache), because a rewrite can complete the
        pattern, e.g. by removing an Identity between the Erf and its Add, and the rules after it
        in the same sweep must see those nodes as protected.
        """
        if self._protected is None:
            prot: set[int] = set()
            for idx, n in enumerate(self.nodes):
                if n is None or n.op_type != "Erf":
                    continue
                prot.add(idx)
                p = self.producer.get(n.input[0])
                if p is not None and self.nodes[p] is not None and self.nodes[p].op_type in ("Div", "Mul"):
                    prot.add(p)
                cur, muls = idx, 0
                for _ in range(3):
                    cons = self.consumers.get(self.nodes[cur].output[0], [])
                    if len(cons) != 1 or self.nodes[cons[0]] is None or \
                            self.nodes[cons[0]].op_type not in ("Add", "Mul"):
                        break
                    cur = cons[0]
                    prot.add(cur)
                    muls += self.nodes[cur].op_type == "Mul"
                    if muls == 2:
                        break
                # The `x * 0.5` may also come first: Mul(x, 0.5) feeding the final Mul.
                final = self.nodes[cur]
                for inp in final.input:
                    q = self.producer.get(inp)
                    if q is not None and q not in prot and self.nodes[q] is not None and \
                            self.nodes[q].op_type == "Mul" and any(self.const(i) is not None
                                                                   for i in self.nodes[q].input):
                        prot.add(q)
            self._protected = prot
        return self._protected

    # ----------------------------------------------------------------- indexing

    def _index(self, idx: int, n: onnx.NodeProto) -> None:
        if n.name:
            self.names.add(n.name)
        for i in n.input:
            if i:
                self.consumers[i].append(idx)
        for o in n.output:
            if o:
                self.producer[o] = idx
                self.names.add(o)

    def _unindex(self, idx: int, n: onnx.NodeProto) -> None:
        for i in n.input:
            if i and idx in self.consumers.get(i, ()):
                self.consumers[i].remove(idx)
        for o in n.output:
            if self.producer.get(o) == idx:
                del self.producer[o]

    def node(self, idx: int) -> onnx.NodeProto:
        n = self.nodes[idx]
        assert n is not None, f"node {idx} was removed"
        return n

    def alive(self) -> list[int]:
        return [i for i, n in enumerate(self.nodes) if n is not None]

    def label(self, idx: int) -> str:
        n = self.node(idx)
        return n.name or f"{n.op_type}#{idx}"

    # ----------------------------------------------------------------- queries

    def uses(self, name: str) -> int:
        """How many places read a tensor: node inputs, graph outputs and subgraph references."""
        return len(self.consumers.get(name, ())) + (name in self.graph_outputs) + (name in self.sub_refs)

    def single_consumer(self, name: str) -> int | None:
        """The index of the only reader of `name`, or None (several readers, or a graph output)."""
        cons = self.consumers.get(name, ())
        if len(cons) == 1 and self.uses(name) == 1:
            return cons[0]
        return None

    def producer_of(self, name: str) -> int | None:
        return self.producer.get(name)

    def is_const(self, name: str) -> bool:
        return self.const(name) is not None

    def const(self, name: str) -> np.ndarray | None:
        """Value of an initializer (not overridable as a graph input) or a Constant node output."""
        if not name:
            return None
        if name in self._arrays:
            return self._arrays[name]
        arr = None
        if name in self.inits and name not in self.graph_inputs:
            arr = numpy_helper.to_array(self.inits[name])
        else:
            p = self.producer.get(name)
            if p is not None and self.nodes[p].op_type == "Constant":
                arr = const_node_value(self.nodes[p])
        if arr is not None:
            self._arrays[name] = arr
        return arr

    def shape(self, name: str) -> tuple | None:
        """Static shape if fully known (ints), else None."""
        s = self.shapes.get(name)
        if s is None or any(not isinstance(d, int) or d < 0 for d in s):
            c = self.const(name)
            return tuple(c.shape) if c is not None else None
        return s

    def rank(self, name: str) -> int | None:
        s = self.shapes.get(name)
        if s is not None:
            return len(s)
        c = self.const(name)
        return c.ndim if c is not None else None

    # ----------------------------------------------------------------- edits

    def fresh(self, base: str) -> str:
        """A name not used by any tensor or node in the graph."""
        base = base or "updp"
        name, k = base, 1
        while name in self.names:
            name = f"{base}_{k}"
            k += 1
        self.names.add(name)
        return name

    def add_init(self, arr: np.ndarray, base: str) -> str:
        name = self.fresh(base)
        self.inits[name] = _tensor(arr, name)
        self._arrays[name] = arr
        return name

    def set_initializer(self, name: str, arr: np.ndarray) -> None:
        """Make `name` an initializer holding `arr`, replacing any value it had.

        For a tensor whose producer was just removed (a `Constant` turned into an initializer):
        the constant cache is updated too, so `const(name)` sees `arr` at once, and a name still
        produced by a live node is refused, since the graph would then define it twice.
        """
        assert name not in self.producer, f"{name!r} is still produced by a node"
        self.inits[name] = _tensor(arr, name)
        self._arrays[name] = arr
        self.names.add(name)

    def set_const_input(self, idx: int, pos: int, arr: np.ndarray, base: str | None = None) -> str:
        """Give input `pos` of node `idx` the constant `arr`.

        Rewrites the initializer in place (keeping its name) when this node is its only reader,
        otherwise creates a new one, so that a weight shared with nodes outside the match never
        changes under them.
        """
        n = self.node(idx)
        old = n.input[pos] if pos < len(n.input) else ""
        if old and old in self.inits and old not in self.graph_inputs and self.uses(old) == 1:
            self.inits[old] = _tensor(arr, old)
            self._arrays[old] = arr
            return old
        name = self.add_init(arr, base or old or f"{n.name or n.op_type}_w")
        self.set_input(idx, pos, name)
        return name

    def set_input(self, idx: int, pos: int, name: str) -> None:
        n = self.node(idx)
        while len(n.input) <= pos:
            n.input.append("")
        old = n.input[pos]
        if old and idx in self.consumers.get(old, ()):
            self.consumers[old].remove(idx)
        n.input[pos] = name
        if name:
            self.consumers[name].append(idx)
        self._protected = None

    def truncate_inputs(self, idx: int, count: int) -> None:
        n = self.node(idx)
        while len(n.input) > count:
            old = n.input[-1]
            if old and idx in self.consumers.get(old, ()):
                self.consumers[old].remove(idx)
            del n.input[-1]
        self._protected = None

    def set_output(self, idx: int, pos: int, name: str) -> None:
        n = self.node(idx)
        old = n.output[pos]
        if self.producer.get(old) == idx:
            del self.producer[old]
        n.output[pos] = name
        self.producer[name] = idx
        self.touched.add(name)
        self._protected = None

    def set_op_type(self, idx: int, op: str) -> None:
        """Change the operator of node `idx`, keeping its inputs, outputs and attributes.

        Meant for rewrites that keep the output's type and shape (`Sub(x, c)` -> `Add(x, -c)`), so
        the output's value_info stays valid and is kept. A cached constant value of the outputs
        (had the node been a `Constant`) is dropped, since the node no longer computes it.
        """
        n = self.node(idx)
        n.op_type = op
        for o in n.output:
            self._arrays.pop(o, None)
        self._protected = None

    def set_attribute(self, idx: int, name: str, value) -> None:
        """Set attribute `name` of node `idx` to `value`.

        An existing attribute is replaced where it stands, so the node's other attributes keep
        their order and an unchanged node serializes to the same bytes; a new one is appended.
        Like `set_op_type`, meant for edits that keep the output's type and shape; a cached
        constant value of the outputs is dropped.
        """
        n = self.node(idx)
        new = helper.make_attribute(name, value)
        for o in n.output:
            self._arrays.pop(o, None)
        for a in n.attribute:
            if a.name == name:
                a.CopyFrom(new)
                return
        n.attribute.append(new)

    def release_name(self, name: str) -> None:
        """Let `fresh` hand out `name` again, if nothing in the graph carries it any more.

        For a rewrite that replaces a removed node by a new one and wants the new node to keep the
        exported name (it names the model's scopes in reports). Node and tensor names share one
        pool here, so a name still carried by a live node or a tensor stays taken: freeing it
        would let `fresh` hand out a duplicate.
        """
        if any(n is not None and n.name == name for n in self.nodes):
            return
        if self._tensor_name_in_use(name):
            return
        self.names.discard(name)

    def _tensor_name_in_use(self, name: str) -> bool:
        """Is `name` a tensor of the graph or of one of its subgraphs?"""
        return (
            name in self.producer
            or bool(self.consumers.get(name))
            or name in self.inits
            or name in self.graph_inputs
            or name in self.graph_outputs
            or name in self.sub_refs
            or name in self.sub_names
        )

    def remove(self, idx: int) -> None:
        n = self.node(idx)
        self._unindex(idx, n)
        self.nodes[idx] = None
        self._protected = None

    def add(self, node: onnx.NodeProto) -> int:
        self.nodes.append(node)
        idx = len(self.nodes) - 1
        self._index(idx, node)
        self.touched.update(o for o in node.output if o)
        self._protected = None
        return idx

    def make_node(self, op: str, inputs: list[str], outputs: list[str], name: str, **attrs) -> int:
        return self.add(helper.make_node(op, inputs, outputs, name=self.fresh(name), **attrs))

    def replace_uses(self, old: str, new: str) -> None:
        """Point every reader of `old` at `new` (`old` must not be a graph output)."""
        for idx in list(self.consumers.get(old, ())):
            n = self.node(idx)
            for p, i in enumerate(n.input):
                if i == old:
                    self.set_input(idx, p, new)

    def bypass(self, idx: int, keep_input: str) -> bool:
        """Remove a single-input single-output node, connecting its readers to `keep_input`.

        Returns False (and changes nothing) if that is not possible without renaming a graph
        output or input.
        """
        n = self.node(idx)
        out = n.output[0]
        if out in self.graph_outputs or out in self.sub_refs:
            # keep the output name: rename the producer of keep_input instead
            p = self.producer.get(keep_input)
            if (
                p is None
                or keep_input in self.graph_outputs
                or keep_input in self.sub_refs
                or len(self.consumers.get(keep_input, ())) != 1
            ):
                return False
            self.remove(idx)
            pn = self.node(p)
            self.set_output(p, list(pn.output).index(keep_input), out)
            return True
        self.remove(idx)
        self.replace_uses(out, keep_input)
        return True

    # ----------------------------------------------------------------- finish

    def finish(self) -> onnx.ModelProto:
        """Write the edited graph back into the model: topological order, no dead initializers,
        no stale value_info."""
        g = self.model.graph
        order = self._topo_order()
        used: set[str] = set(self.sub_refs) | self.graph_outputs
        for idx in order:
            used.update(i for i in self.nodes[idx].input if i)
        new_nodes = [self.nodes[i] for i in order]
        del g.node[:]
        g.node.extend(new_nodes)
        inits = [t for name, t in self.inits.items() if name in used or name in self.graph_inputs]
        del g.initializer[:]
        for t in inits:  # one by one with CopyFrom: extend() serializes, which fails past protobuf's 2 GB
            g.initializer.add().CopyFrom(t)
        produced = {o for n in new_nodes for o in n.output}
        keep = [vi for vi in g.value_info if vi.name in produced and vi.name not in self.touched]
        del g.value_info[:]
        g.value_info.extend(keep)
        return self.model

    def _topo_order(self) -> list[int]:
        """Node indices in a topological order (ties by index, so a sorted graph keeps its order).

        A node with subgraphs also depends on the main-graph tensors those read, though they are
        not among its inputs.
        """
        alive = self.alive()
        avail = set(self.graph_inputs) | set(self.inits) | {""}
        indeg: dict[int, int] = {}
        waiting: dict[str, list[int]] = defaultdict(list)
        for idx in alive:
            n = self.nodes[idx]
            reads = [*n.input, *_subgraph_refs(n)[0]]
            missing = {i for i in reads if i not in avail and i in self.producer and self.producer[i] != idx}
            indeg[idx] = len(missing)
            for m in missing:
                waiting[m].append(idx)
        ready = [i for i in alive if indeg[i] == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            idx = heapq.heappop(ready)
            order.append(idx)
            for o in self.nodes[idx].output:
                for w in waiting.pop(o, ()):
                    indeg[w] -= 1
                    if indeg[w] == 0:
                        heapq.heappush(ready, w)
        if len(order) != len(alive):
            raise InputError("the graph has a cycle or a node reads a tensor nobody produces")
        return order


# --------------------------------------------------------------------- shapes


def infer_shapes(model: onnx.ModelProto) -> dict[str, tuple | None]:
    """Static shapes by ONNX shape inference on a light copy (large float weights left out).

    Dims are ints, or strings/None where symbolic. Failure only means "shapes unknown".
    """
    return {name: shape for name, (_, shape) in infer_types(model).items()}


def infer_types(model: onnx.ModelProto) -> dict[str, tuple[int, tuple | None]]:
    """(element type, static shape) of every tensor, as `infer_shapes` finds them (graph inputs,
    large weights among them, included; the element type is 0 where unknown)."""
    g = model.graph
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    lg = light.graph
    lg.node.extend(g.node)
    lg.input.extend(g.input)
    lg.output.extend(g.output)
    have_inputs = {i.name for i in g.input}
    for t in g.initializer:
        if t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) or np.prod(t.dims) <= 16:
            lg.initializer.append(t)
        elif t.name not in have_inputs:
            lg.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    shapes: dict[str, tuple[int, tuple | None]] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
    except Exception as exc:  # inference is best effort
        logger.debug("shape inference failed: %s", exc)
        inferred = light
    vis = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    for vi in vis:
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            shapes[vi.name] = (tt.elem_type, None)
            continue
        dims = []
        for d in tt.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
        shapes[vi.name] = (tt.elem_type, tuple(dims))
    return shapes


# --------------------------------------------------------------------- rules


@dataclass
class RewriteTally:
    """What the rules of one pass did: whether the graph changed, how often each rule fired, why
    others refused, and the chain planner's decisions.

    A tally of rule applications, not a pass result: the rewritten model lives in the `Graph`, and
    the pipeline merges the tallies of all passes of an iteration.
    """

    changed: bool = False
    applied: Counter = field(default_factory=Counter)
    refusals: list[str] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)

    def merge(self, other: RewriteTally) -> None:
        """Add `other`'s counts, refusals and decisions to this tally."""
        self.changed = self.changed or other.changed
        self.applied.update(other.applied)
        self.refusals.extend(other.refusals)
        self.decisions.extend(other.decisions)


Refusal: TypeAlias = str
"""Why a rule does not apply at a match; reported verbatim (users and tests read it)."""


@dataclass(frozen=True)
class Proceed:
    """The plan of a rule whose rewrite needs nothing beyond its match."""


PROCEED = Proceed()

MatchT = TypeVar("MatchT")
PlanT = TypeVar("PlanT")


class Rule(Generic[MatchT, PlanT]):
    """One rewrite in three steps, which `run_rules` calls in order at every anchor node.

    * ``match(g, idx) -> MatchT | None``: cheap; is node `idx` the anchor of the pattern? Returns a
      frozen dataclass specific to the rule (the node indices and parsed operands it found), or
      None when the node is not the pattern at all (no refusal is reported then).
    * ``check(g, m) -> Refusal | PlanT``: every precondition. Returns a refusal reason (a `str`)
      or the plan: a frozen dataclass with what check computed and `rewrite` needs (the folded
      scale and shift, the chain planner's segments and decision), so nothing is computed twice;
      `PROCEED` when the rewrite needs nothing beyond the match. Check is pure: it edits neither
      the graph nor the match, because after a refusal the other rules still run at that node and
      must see the graph as it was (and a check can then be run on its own to explain a refusal).
    * ``rewrite(g, m, plan, tally)``: edits the graph, only through `Graph` methods (which keep
      the producer/consumer maps, the constant cache and the stale-value_info set consistent),
      and adds anything beyond the application count to `tally` (e.g. a planner decision).

    Subclasses set `name` (how the tally reports the rule) and `anchors` (op types of the anchor
    node; empty means every node). Before/After/Conditions of each rule are in its module's
    docstring.
    """

    name: str = "rule"
    anchors: tuple[str, ...] = ()

    def match(self, g: Graph, idx: int) -> MatchT | None:
        raise NotImplementedError

    def check(self, g: Graph, m: MatchT) -> Refusal | PlanT:
        raise NotImplementedError

    def rewrite(self, g: Graph, m: MatchT, plan: PlanT, tally: RewriteTally) -> None:
        raise NotImplementedError


def run_rules(g: Graph, rules: Sequence[Rule], tally: RewriteTally) -> None:
    """Try each rule at each live node once (nodes created by a rewrite are visited too).

    Rules are tried in list order at a node, so an earlier rule's rewrite decides what the later
    ones see; a node removed by a rewrite is not tried further.
    """
    idx = 0
    while idx < len(g.nodes):
        for rule in rules:
            n = g.nodes[idx]
            if n is None:
                break
            if rule.anchors and n.op_type not in rule.anchors:
                continue
            m = rule.match(g, idx)
            if m is None:
                continue
            plan = rule.check(g, m)
            if isinstance(plan, str):
                tally.refusals.append(f"{rule.name} @ {g.label(idx)}: {plan}")
                logger.debug("%s @ %s refused: %s", rule.name, g.label(idx), plan)
                continue
            logger.debug("%s @ %s", rule.name, g.label(idx))
            rule.rewrite(g, m, plan, tally)
            tally.applied[rule.name] += 1
            tally.changed = True
        idx += 1


# --------------------------------------------------------------------- helpers for affine ops


# The float dtypes whose math the passes rewrite. bfloat16 comes from ml_dtypes (numpy has none)
# and is not an np.floating; the float8/float4 types are left alone: ONNX defines no Conv, MatMul
# or Gemm on them, so there is nothing of theirs to merge.
REWRITTEN_FLOATS = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float32), np.dtype(np.float64))


def float_dtype(arr: np.ndarray) -> bool:
    """Whether `arr` holds float math the passes may rewrite (computed in float64, cast back once)."""
    return arr.dtype in REWRITTEN_FLOATS


def channel_vector(c: np.ndarray, rank: int, axis: int, channels: int) -> np.ndarray | None:
    """If constant `c` broadcast against a rank-`rank` tensor varies only along `axis` (with
    `channels` entries), return it as a (channels,) vector; else None."""
    if c.ndim > rank:
        return None
    shape = (1,) * (rank - c.ndim) + tuple(c.shape)
    ax = axis % rank
    for i, d in enumerate(shape):
        if i != ax and d != 1:
            return None
    if shape[ax] not in (1, channels):
        return None
    return np.broadcast_to(c.reshape(-1), (channels,)).astype(np.float64) if c.size in (1, channels) else None
