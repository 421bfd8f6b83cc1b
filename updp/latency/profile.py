"""Per-node ONNX Runtime profiling, and the time of each block of the source network.

`profile_nodes` runs a model under ORT's profiler and returns the mean kernel time of every node
that ORT executed (after its graph optimizations, so at `all` these are the fused nodes).
`aggregate_by_block` sums those node times per block of the source network, using the module
scopes that the torch exporter writes into node names; `scope_fragment` builds the scope
fragment of a module path.

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

Attribution rule (in `aggregate_by_block`): a node whose name contains a block's fragment goes to
that block (longest fragment wins, so nested blocks work). A node whose name has no "/" at all has
no scope (the ORT-created nodes above, or exporter nodes outside any module such as `Identity_15`);
it inherits the block of the node executed just before it. That is exact for fusions inside a block
(the GELU runs between its block's fc1 and fc2) and puts a layout reorder between two blocks on the
earlier one, which consumes or produces it. Scoped nodes outside every block (stem, downsamples,
head) go to `OTHER`.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx

from updp.errors import InputError
from updp.latency.runner import LatencySetup
from updp.ort import OPT_LEVELS, make_session, random_inputs

logger = logging.getLogger(__name__)

OTHER = "other (stem/head/...)"
_KERNEL_SUFFIX = "_kernel_time"


@dataclass(frozen=True)
class NodeTime:
    """Mean kernel time of one executed node.

    Attributes:
        name: node name in the session's optimized graph.
        op_type: `args.op_name` of the trace (e.g. Conv, FusedConv, ReorderInput).
        mean_us: mean over the measured runs of the node's summed kernel time per run, µs.
        order: position of the node's first execution in the first measured run.
        node_index: ORT's node index in the optimized graph (-1 if absent).
        provider: execution provider that ran it.
    """

    name: str
    op_type: str
    mean_us: float
    order: int
    node_index: int = -1
    provider: str = ""


def scope_fragment(module_path: str) -> str:
    """Node-name scope fragment that the TorchScript ONNX exporter gives a module path.

    The exporter names nodes `/<scope>/<scope>/.../<OpType>`, one scope per module from the root
    down. A module's scope is its unqualified name: the last non-numeric atom of its dotted path
    plus any numeric atoms after it (torch `_unqualified_variable_name`), so `Sequential`/`ModuleList`
    children keep their parent's attribute name:

        stages.0.blocks.3    -> /stages/stages.0/blocks/blocks.3/
        layer2.0.downsample.0 -> /layer2/layer2.0/downsample/downsample.0/

    The trailing "/" keeps `blocks.1` from matching `blocks.10`.
    """
    atoms = module_path.split(".") if module_path else []
    if not atoms or any(not a for a in atoms):
        raise InputError(f"not a module path: {module_path!r} (expected e.g. 'stages.0.blocks.3')")
    scopes = []
    for k in range(1, len(atoms) + 1):
        prefix = atoms[:k]
        cut = next((i for i in range(k - 1, -1, -1) if not prefix[i].isnumeric()), 0)
        scopes.append(".".join(prefix[cut:]))
    return "/" + "/".join(scopes) + "/"


def block_scopes(module_paths: list[str]) -> dict[str, str]:
    """`{"<i> <path>": scope_fragment(path)}` for a list of block module paths, in order."""
    return {f"{i} {p}": scope_fragment(p) for i, p in enumerate(module_paths)}


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
    with tempfile.TemporaryDirectory(prefix="updp_profile_") as tmp:
        sess = make_session(model, opt_level=level, threads=setup.threads, providers=setup.providers,
                            profile_prefix=str(Path(tmp) / "ort"), spinning=setup.spinning)
        try:
            feeds = random_inputs(sess, batch=setup.batch, seed=seed)
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


@dataclass
class BlockTime:
    """Time of one block: the sum of its nodes' mean kernel times."""

    label: str
    fragment: str
    total_us: float
    share: float
    n_nodes: int


@dataclass
class BlockProfile:
    """Kernel time per block; `blocks` follows the order of `block_scopes`, then `OTHER`.

    Attributes:
        blocks: one entry per block, plus `OTHER` for scoped nodes outside every block.
        total_us: summed mean kernel time of all nodes (per run). Kernel time excludes the
            executor's own overhead, so it is below the wall-clock latency.
        inherited: names of unscoped nodes that took the block of the node run before them.
    """

    blocks: list[BlockTime]
    total_us: float
    inherited: list[str]

    def get(self, label: str) -> BlockTime:
        for b in self.blocks:
            if b.label == label:
                return b
        raise KeyError(label)

    def to_dict(self) -> dict[str, Any]:
        return {"total_us": self.total_us, "inherited": list(self.inherited),
                "blocks": [asdict(b) for b in self.blocks]}

    def format_table(self) -> str:
        cols = ["block", "nodes", "total us", "share"]
        rows = [[b.label, str(b.n_nodes), f"{b.total_us:.1f}", f"{100 * b.share:.1f}%"] for b in self.blocks]
        rows.append(["total", str(sum(b.n_nodes for b in self.blocks)), f"{self.total_us:.1f}", "100.0%"])
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]

        def fmt(row: list[str]) -> str:
            cells = enumerate(zip(row, widths, strict=True))
            return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in cells)

        sep = "  ".join("-" * w for w in widths)
        note = (f"# {len(self.inherited)} unscoped nodes (no '/' in the name: ORT fusions and layout "
                "reorders, exporter Identity) attributed to the block run before them")
        return "\n".join([fmt(cols), sep, *map(fmt, rows[:-1]), sep, fmt(rows[-1]), note])


def aggregate_by_block(node_times: list[NodeTime], block_scopes: dict[str, str], *,
                       inherit_unscoped: bool = True) -> BlockProfile:
    """Sum node times per block by module scope.

    Args:
        node_times: from `profile_nodes`, in execution order.
        block_scopes: block label -> node-name fragment (see `scope_fragment`).
        inherit_unscoped: give a node without any "/" in its name (ORT-created fusion or layout
            node, see the module docstring) the block of the node executed before it; if False
            such nodes go to `OTHER`.

    Returns:
        Each block's total µs and share of the total, with `OTHER` last; shares sum to 1.
    """
    if OTHER in block_scopes:
        raise InputError(f"{OTHER!r} is reserved for nodes outside every block")
    if not all(block_scopes.values()):
        raise InputError("block scope fragments must be non-empty")
    # longest fragment first: a node of a nested block belongs to the innermost one
    by_length = sorted(block_scopes.items(), key=lambda kv: len(kv[1]), reverse=True)
    totals = {label: 0.0 for label in block_scopes} | {OTHER: 0.0}
    counts = dict.fromkeys(totals, 0)
    inherited: list[str] = []
    previous = OTHER
    for t in sorted(node_times, key=lambda t: t.order):
        label = next((lb for lb, frag in by_length if frag in t.name), None)
        if label is None:
            if inherit_unscoped and "/" not in t.name:
                label = previous
                inherited.append(t.name)
            else:
                label = OTHER
        totals[label] += t.mean_us
        counts[label] += 1
        previous = label
    total = sum(totals.values())
    blocks = [BlockTime(label=lb, fragment=block_scopes.get(lb, ""), total_us=us,
                        share=us / total if total > 0 else 0.0, n_nodes=counts[lb])
              for lb, us in totals.items()]
    return BlockProfile(blocks=blocks, total_us=total, inherited=inherited)


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


__all__ = ["OTHER", "NodeTime", "BlockTime", "BlockProfile", "scope_fragment", "block_scopes",
           "parse_trace", "profile_nodes", "aggregate_by_block", "profile_blocks_alternating", "median_block_us"]
