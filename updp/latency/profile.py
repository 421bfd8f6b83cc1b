"""Per-node ONNX Runtime profiling, and the time of each block of the source network.

`profile_nodes` runs a model under ORT's profiler and returns the mean kernel time of every node
that ORT executed (after its graph optimizations, so at `all` these are the fused nodes).
`updp.exporter.scopes.aggregate_by_block` sums those node times per block of the source
network, using the module scopes that the torch exporter writes into node names.

What ORT's trace looks like (onnxruntime 1.31, CPU EP; checked on timm convnext_atto and torchvision
resnet18 exported with `torch.onnx.export(..., dynamo=False, opset_version=18)`):

* Events with `cat == "Node"` and names `<node name>_kernel_time` carry `dur` in µs and
  `args.op_name`, `args.node_index`, `args.provider`. Each `session.run` is one `cat == "Session"`,
  `name == "model_run"` event whose [ts, ts + dur] window holds that run's node events; warm-up
  runs are in the trace too and are dropped by window.
* `disable` and `basic`: node names are the exporter's, e.g.
  `/stages/stages.0/blocks/blocks.3/conv_dw/Conv` (basic only removes nodes: constant folding,
  Identity elimination).
* `extended`: fused nodes keep the name of the first node of the fused pattern
  (`/layer1/layer1.0/conv1/Conv` with `op_name == "FusedConv"` for Conv+Relu).
* `all` (CPU): the NCHWc layout transformer replaces convolutions and pools by nodes named after
  their *output value* plus `_nchwc`: `/layer1/layer1.0/conv2/Conv_output_0_nchwc` (Conv with the
  residual Add and Relu fused in), `/relu/Relu_output_0_nchwc` (stem Conv+Relu: the output is the
  Relu's). Exporter value names carry the same scope, so these still attribute correctly.
  Nodes ORT creates from scratch carry no scope at all: layout reorders (`ReorderInput`,
  `ReorderOutput_token_24`) and some fusions (`Gelu_token_8`, the Div/Erf/Add/Mul GELU of a
  ConvNeXt MLP).

Attribution of node times to blocks: `updp.exporter.scopes`.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
from pathlib import Path
from typing import Any

import onnx

from updp.core.constants import OPT_LEVELS
from updp.core.errors import InputError
from updp.core.io import scratch_dir
from updp.exporter.scopes import BlockProfile, NodeTime, aggregate_by_block
from updp.latency.runner import LatencySetup
from updp.ort import make_session, random_inputs

logger = logging.getLogger(__name__)

_KERNEL_SUFFIX = "_kernel_time"


def parse_trace(events: list[dict[str, Any]], skip_runs: int = 0) -> tuple[list[NodeTime], int]:
    """Per-node mean kernel time from an ORT profile trace.

    Args:
        events: the trace (a JSON list of Chrome trace events).
        skip_runs: leading `model_run`s to drop (the warm-up).

    Returns:
        The node times in execution order, and the number of runs averaged.
    """
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")
    runs = runs[skip_runs:]
    if not runs:
        raise InputError("the ORT profile holds no measured run (model_run events)")
    nodes = sorted((e for e in events if e.get("cat") == "Node"
                    and str(e.get("name", "")).endswith(_KERNEL_SUFFIX)), key=lambda e: e["ts"])
    total: dict[str, float] = {}
    meta: dict[str, tuple[str, int, str]] = {}
    order: dict[str, int] = {}
    r = 0
    for e in nodes:
        while r < len(runs) and e["ts"] > runs[r][1]:
            r += 1
        if r == len(runs):
            break
        if e["ts"] < runs[r][0]:
            continue  # a warm-up run
        name = e["name"][: -len(_KERNEL_SUFFIX)]
        args = e.get("args", {})
        total[name] = total.get(name, 0.0) + float(e["dur"])
        meta.setdefault(name, (str(args.get("op_name", "")), int(args.get("node_index", -1)),
                               str(args.get("provider", ""))))
        order.setdefault(name, len(order))
    n = len(runs)
    out = [NodeTime(name=k, op_type=meta[k][0], mean_us=total[k] / n, order=order[k],
                    node_index=meta[k][1], provider=meta[k][2]) for k in total]
    return sorted(out, key=lambda t: t.order), n


def profile_nodes(model: onnx.ModelProto | str | os.PathLike, setup: LatencySetup | None = None, *,
                  runs: int = 20, opt_level: str | None = None, seed: int = 0) -> list[NodeTime]:
    """Mean kernel time of each node ORT executes, under the setup's providers and threads.

    The session runs `setup.warmup` untimed runs, then `runs` profiled ones; the trace is written
    to a temporary directory and removed.

    Args:
        model: a ModelProto or a path.
        setup: providers, threads, warm-up, batch; defaults to `LatencySetup()`.
        runs: profiled runs to average.
        opt_level: graph optimization level; defaults to `setup.opt_level`.
        seed: seed of the random input.

    Returns:
        One `NodeTime` per executed node, in execution order.
    """
    setup = setup or LatencySetup()
    level = opt_level or setup.opt_level
    if level not in OPT_LEVELS:
        raise InputError(f"unknown optimization level {level!r}; choose from {', '.join(OPT_LEVELS)}")
    if runs < 1:
        raise InputError(f"runs must be >= 1 (got {runs})")
    with scratch_dir("profile") as tmp:
        sess = make_session(model, opt_level=level, threads=setup.threads, providers=setup.providers,
                            profile_prefix=str(Path(tmp) / "ort"), spinning=setup.spinning)
        try:
            feeds = random_inputs(sess, batch=setup.batch, seed=seed, dims=setup.dims)
            for _ in range(setup.warmup + runs):
                sess.run(None, feeds)
        finally:
            trace_path = Path(sess.end_profiling())
        try:
            events = json.loads(trace_path.read_text())
        finally:
            trace_path.unlink(missing_ok=True)  # ORT may resolve the prefix outside `tmp`
    times, n = parse_trace(events, skip_runs=setup.warmup)
    logger.info("profiled %d nodes over %d runs at opt level %s", len(times), n, level)
    return times


def profile_blocks_alternating(models: dict[str, onnx.ModelProto | str | os.PathLike], block_scopes: dict[str, str],
                               setup: LatencySetup | None = None, *, rounds: int = 5,
                               runs_per_round: int = 4) -> dict[str, list[BlockProfile]]:
    """Per-block profiles of several models, taken in alternating rounds.

    Why rounds: one profiling session of a small model right after another drifts by 10-30 %
    (frequency, caches, thread wake-ups; seen as unpruned blocks getting "faster" after pruning,
    and as one block at 10x its usual time on a busy machine). Each round profiles every model once
    (`runs_per_round` runs, seed = round), the order reversed on odd rounds, so drift hits all
    models alike; `median_block_us` then takes each block's median over the rounds.

    Returns:
        model key -> one `BlockProfile` per round.
    """
    keys = list(models)
    samples: dict[str, list[BlockProfile]] = {k: [] for k in keys}
    for r in range(rounds):
        for key in (keys if r % 2 == 0 else keys[::-1]):
            nodes = profile_nodes(models[key], setup, runs=runs_per_round, seed=r)
            samples[key].append(aggregate_by_block(nodes, block_scopes))
    return samples


def median_block_us(profiles: list[BlockProfile]) -> dict[str, float]:
    """Each block's median total µs over several profiles of one model (labels of the first)."""
    return {b.label: float(statistics.median(p.get(b.label).total_us for p in profiles))
            for b in profiles[0].blocks}


__all__ = ["median_block_us", "parse_trace", "profile_blocks_alternating", "profile_nodes"]
