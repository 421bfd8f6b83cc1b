"""A file exported at a fixed batch, made to run at other batches, and checked to compute the same
thing per sample.

    model8 = at_batch(model, 8)    # raises when the batch is baked into the graph beyond repair

updp (like most exporters) writes a static batch by default: ORT plans a fixed-shape graph a
little better. To time such a file at batch 8 or 32 without going back to the checkpoint:

* the batch axis of every graph input and output whose first dimension is the fixed batch B
  becomes symbolic;
* a `Reshape` whose target shape is a constant starting with B gets 0 there (ONNX's "copy this
  dimension from the input", with `allowzero` 0), which is how a dynamic-batch export spells it;
* the shapes recorded between nodes are dropped (they would say B) and inferred again.

Nothing guarantees that the first axis of every such Reshape's input is the batch, or that no
other constant carries B (a class token expanded to batch B and folded into a constant is one):
so the result is verified. It runs at batch N on N samples, and its outputs must match the
original's on the same samples B at a time, with the strict float32 tolerance of
`updp.verify`. A miss is refused with what to do instead (re-export with a dynamic batch).
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper

from updp.core.errors import InputError, first_line
from updp.feeds import graph_inputs
from updp.ort import make_session, random_inputs
from updp.verify import compare_outputs

BATCH_SYMBOL = "batch"


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The static first dimension shared by the graph's inputs, or None when it is symbolic (or the
    model has no tensor input with a first dimension)."""
    dims = []
    for slot in graph_inputs(model):
        if slot.kind == "tensor" and slot.shape:
            dims.append(slot.shape[0])
    static = {d for d in dims if isinstance(d, int) and d > 0}
    if not static or len(static) != len(dims):
        return None
    if len(static) > 1:
        raise InputError(f"the graph inputs have different fixed first dimensions {sorted(static)}: no batch axis")
    return static.pop()


def _symbolic_first_dim(values, batch: int) -> int:
    changed = 0
    for vi in values:
        if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == batch:
            dims[0].dim_param = BATCH_SYMBOL
            changed += 1
    return changed


def with_symbolic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose fixed batch is symbolic (see the module docstring); unchecked: `at_batch` checks it."""
    batch = fixed_batch(model)
    if batch is None:
        return model
    out = copy.deepcopy(model)
    g = out.graph
    _symbolic_first_dim(g.input, batch)
    _symbolic_first_dim(g.output, batch)
    inits = {t.name: t for t in g.initializer}
    constants = {n.output[0]: n for n in g.node if n.op_type == "Constant" and n.attribute
                 and n.attribute[0].name == "value"}
    for node in g.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        if any(a.name == "allowzero" and a.i == 1 for a in node.attribute):
            continue  # 0 would mean an empty dimension there, not "copy"
        name = node.input[1]
        tensor = inits.get(name) if name in inits else (constants[name].attribute[0].t if name in constants
                                                          else None)
        if tensor is None:
            continue
        shape = numpy_helper.to_array(tensor)
        if shape.ndim == 1 and shape.size and shape[0] == batch:
            new = shape.copy()
            new[0] = 0
            if sum(1 for n in g.node for i in n.input if i == name) > 1:  # shared: give this Reshape its own
                name = f"{name}__batch_copy_{node.name or len(g.initializer)}"
                node.input[1] = name
                g.initializer.append(numpy_helper.from_array(new.astype(shape.dtype), name))
            else:
                tensor.CopyFrom(numpy_helper.from_array(new.astype(shape.dtype), tensor.name))
    del g.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(out)
    except Exception:  # inference is an aid here; the check below runs the graph
        return out


def at_batch(model: onnx.ModelProto, batch: int, *, where: str = "the model", seed: int = 0,
             dims: dict[str, int] | None = None) -> onnx.ModelProto:
    """`model` made to run at `batch` and verified per sample against itself (module docstring).

    A model whose batch is already symbolic, or already `batch`, comes back unchanged. `dims`:
    values of its other symbolic input dimensions, by name.

    Raises:
        InputError: the batch cannot be made symbolic (the graph bakes it in elsewhere): re-export
            with a dynamic batch.
    """
    fixed = fixed_batch(model)
    if fixed is None or fixed == batch:
        return model
    candidate = with_symbolic_batch(model)
    advice = (f"{where} is exported at a fixed batch of {fixed} that its graph uses beyond the input shape, so it "
              f"cannot be timed at batch {batch}; re-export it with a dynamic batch (`updp export --dynamic-batch`)")
    try:
        sess = make_session(candidate, opt_level="disable")
        feed = random_inputs(sess, batch=batch, seed=seed, dims=dims)
        got = sess.run(None, feed)
    except Exception as exc:  # ORT: a shape that no longer fits
        raise InputError(f"{advice} ({first_line(exc)})") from None
    ref_sess = make_session(model, opt_level="disable")
    # the original runs `fixed` samples at a time; the last chunk is filled up with other samples
    # of the same feed, whose outputs are dropped
    padded = {k: np.concatenate([v] * (-(-fixed // batch) + 1))[:batch + (-batch) % fixed] for k, v in feed.items()}
    chunks = [ref_sess.run(None, {k: v[i:i + fixed] for k, v in padded.items()}) for i in range(0, len(
        next(iter(padded.values()))), fixed)]
    expected = [np.concatenate([c[k] for c in chunks])[:batch] for k in range(len(chunks[0]))]
    if any(np.asarray(g).shape != e.shape for g, e in zip(got, expected, strict=True)):
        raise InputError(f"{advice} (its outputs change shape)")
    rep = compare_outputs(expected, got, [o.name for o in ref_sess.get_outputs()])
    if not rep.passed:
        raise InputError(f"{advice} (per-sample outputs differ: {rep.failures[0]})")
    return candidate


__all__ = ["BATCH_SYMBOL", "at_batch", "fixed_batch", "with_symbolic_batch"]
