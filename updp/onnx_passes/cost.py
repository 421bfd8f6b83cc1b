"""A FLOP/byte cost model for the linear ops the planner chooses between, and model-level estimates.

    cost_ns = macs / macs_per_ns(kind) + bytes / bytes_per_ns + op_overhead_ns

`kind` is "dense" (im2col/GEMM-backed conv, pointwise conv, MatMul/Gemm: compute bound) or
"depthwise" (one filter per channel: memory bound, few MACs per byte, so a low MAC rate).
`bytes` counts fp32 input + output activations + weights once each.

The default constants were calibrated on the reference machine (2-core x86-64, ONNX Runtime
1.31 CPU, 2 intra-op threads, ORT_ENABLE_ALL) with `benchmarks/cost_model_check.py`; they only need
to *rank* alternatives correctly, and that script reports whether they do. What they must get right:
  * ConvNeXt block: DW7x7 + PW(CxC) is far cheaper than one dense 7x7 (49x the MACs);
  * MobileNetV2 t=6: one dense 3x3 (9 C^2 MACs/px) beats PW-DW-PW (12 C^2 + 54 C MACs/px plus a
    6x wider intermediate through memory); t=1: DW -> PW stays separate (9C + C^2 vs 9 C^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from updp.onnx_passes._graph import Graph, attr


@dataclass(frozen=True)
class CostModel:
    """Per-op latency estimate in nanoseconds. Constants: see the module docstring."""

    # Fitted on single ops (ORT 1.31, 2 threads, ENABLE_ALL; NCHWc layout after ORT's transforms):
    # dense 3x3/7x7 and 1x1 convs ran at 150-210 MACs/ns; depthwise 3x3 convs are bound by the
    # activation traffic (~25-35 B/ns) with the MAC term small, 7x7 depthwise ~100 MACs/ns overall.
    dense_macs_per_ns: float = 170.0  # im2col/NCHWc conv, pointwise conv, SGEMM
    depthwise_macs_per_ns: float = 100.0  # per-channel filters: few MACs per byte moved
    bytes_per_ns: float = 30.0  # effective activation + weight traffic
    op_overhead_ns: float = 5000.0  # per node: dispatch, layout reorders, thread fork/join
    dtype_bytes: int = 4

    def conv_ns(
        self,
        cin: int,
        cout: int,
        kh: int,
        kw: int,
        groups: int,
        in_hw: tuple[int, int],
        out_hw: tuple[int, int],
        batch: int = 1,
    ) -> float:
        """Cost of one 2-D conv. W: (cout, cin/groups, kh, kw)."""
        macs = batch * out_hw[0] * out_hw[1] * cout * (cin // groups) * kh * kw
        depthwise = groups > 1 and cin // groups == 1
        rate = self.depthwise_macs_per_ns if depthwise else self.dense_macs_per_ns
        nbytes = self.dtype_bytes * (
            batch * cin * in_hw[0] * in_hw[1]
            + batch * cout * out_hw[0] * out_hw[1]
            + cout * (cin // groups) * kh * kw
        )
        return macs / rate + nbytes / self.bytes_per_ns + self.op_overhead_ns

    def matmul_ns(self, rows: int, k: int, n: int) -> float:
        """Cost of (rows, k) @ (k, n) (+ bias)."""
        macs = rows * k * n
        nbytes = self.dtype_bytes * (rows * k + rows * n + k * n)
        return macs / self.dense_macs_per_ns + nbytes / self.bytes_per_ns + self.op_overhead_ns

    def elementwise_ns(self, numel: int, inputs: int = 2) -> float:
        """Cost of an elementwise op (e.g. the Add of a border-correction field)."""
        return self.dtype_bytes * numel * (inputs + 1) / self.bytes_per_ns + self.op_overhead_ns


DEFAULT_COST_MODEL = CostModel()


# ------------------------------------------------------------------------- model-level estimate


def estimate_node_costs(
    model: onnx.ModelProto, cost_model: CostModel = DEFAULT_COST_MODEL, batch: int = 1
) -> dict[str, float]:
    """Estimated ns per node (keyed by node name, or op_type#index when unnamed).

    Conv/MatMul/Gemm use the MAC/byte model; other nodes are charged for their output bytes.
    Unknown (symbolic) dims count as 1 except the batch dim, which counts as `batch`.
    """
    g = Graph(model)
    costs: dict[str, float] = {}

    def dims(name):
        s = g.shapes.get(name)
        if s is None:
            c = g.const(name)
            return tuple(c.shape) if c is not None else None
        return tuple(
            (d if isinstance(d, int) and d > 0 else (batch if i == 0 else 1)) for i, d in enumerate(s)
        )

    for idx in g.alive():
        n = g.node(idx)
        key = n.name or f"{n.op_type}#{idx}"
        out = dims(n.output[0]) if n.output else None
        if n.op_type == "Conv":
            xi, w = dims(n.input[0]), dims(n.input[1])
            if xi is None or w is None or out is None or len(w) != 4:
                costs[key] = cost_model.op_overhead_ns
                continue
            groups = int(attr(n, "group", 1))
            costs[key] = cost_model.conv_ns(xi[1], w[0], w[2], w[3], groups, xi[2:4], out[2:4], xi[0])
        elif n.op_type in ("MatMul", "Gemm"):
            xa, w = dims(n.input[0]), dims(n.input[1])
            if xa is None or w is None or len(w) != 2:
                costs[key] = cost_model.op_overhead_ns
                continue
            k = xa[-1] if not (n.op_type == "Gemm" and attr(n, "transA", 0)) else xa[0]
            nn_ = w[0] if (n.op_type == "Gemm" and attr(n, "transB", 0)) else w[1]
            rows = int(np.prod(xa)) // max(k, 1)
            costs[key] = cost_model.matmul_ns(rows, k, nn_)
        else:
            numel = int(np.prod(out)) if out else 1
            costs[key] = cost_model.elementwise_ns(numel, inputs=max(1, len(n.input)))
    return costs


def estimate_model_cost(
    model: onnx.ModelProto,
    cost_model: CostModel = DEFAULT_COST_MODEL,
    prefix: str | None = None,
    batch: int = 1,
) -> float:
    """Total estimated ns, optionally only over nodes whose name starts with `prefix` (a block
    scope such as ``/stages/stages.0/blocks/blocks.3/``)."""
    costs = estimate_node_costs(model, cost_model, batch)
    return math.fsum(v for k, v in costs.items() if prefix is None or k.startswith(prefix))


def estimate_saving(
    before: onnx.ModelProto,
    after: onnx.ModelProto,
    prefix: str | None = None,
    cost_model: CostModel = DEFAULT_COST_MODEL,
) -> dict[str, float]:
    """Estimated cost before/after optimization (whole model or one block scope) and the ratio."""
    b = estimate_model_cost(before, cost_model, prefix)
    a = estimate_model_cost(after, cost_model, prefix)
    return {"before_ns": b, "after_ns": a, "speedup": (b / a) if a > 0 else float("inf")}
