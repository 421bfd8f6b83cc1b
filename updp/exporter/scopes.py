"""Which ONNX nodes belong to which block of the source network, by the module scope in their names.

The TorchScript exporter names every node `/<scope>/<scope>/.../<OpType>`, one scope per module
from the root down (`/stages/stages.0/blocks/blocks.3/conv_dw/Conv`), and ORT keeps those names (or
the scoped names of output values) through its optimizations. So per-node quantities, measured
kernel times (`updp.latency.profile`) or estimated costs (`updp.exporter.selection`), can be summed
per block without any other bookkeeping.

Attribution rule (in `attribute_nodes`, summed per block by `aggregate_by_block`): a node whose
name contains a block's fragment goes to that block (longest fragment wins, so nested blocks work).
A node whose name has no "/" at all has no scope (the ORT-created nodes above, or exporter nodes
outside any module such as `Identity_15`); it inherits the block of the node executed just before
it. That is exact for fusions inside a block
(the GELU runs between its block's fc1 and fc2) and puts a layout reorder between two blocks on the
earlier one, which consumes or produces it. Scoped nodes outside every block (stem, downsamples,
head) go to `OTHER`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from updp.core.errors import InputError

OTHER = "other (stem/head/...)"


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


def block_label(index: int, path: str) -> str:
    """The one label of a block in per-block tables and profiles: `"<index> <module path>"`."""
    return f"{int(index)} {path}"


def label_index(label: str) -> int:
    """The block index of a `block_label`."""
    return int(label.split(" ", 1)[0])


def scopes_of(blocks: Iterable[tuple[int, str]]) -> dict[str, str]:
    """`{block_label(i, path): scope_fragment(path)}` for (index, module path) pairs, in order."""
    return {block_label(i, p): scope_fragment(p) for i, p in blocks}


def block_scopes(module_paths: list[str]) -> dict[str, str]:
    """`scopes_of` for a list of block module paths, indexed in order."""
    return scopes_of(enumerate(module_paths))


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


def attribute_nodes(node_times: list[NodeTime], block_scopes: dict[str, str], *,
                    inherit_unscoped: bool = True) -> list[tuple[NodeTime, str, bool]]:
    """The block of each node, by the attribution rule of the module docstring.

    Args:
        node_times: from `profile_nodes`.
        block_scopes: block label -> node-name fragment (see `scope_fragment`).
        inherit_unscoped: give a node without any "/" in its name (ORT-created fusion or layout
            node, see the module docstring) the block of the node executed before it; if False
            such nodes go to `OTHER`.

    Returns:
        (node, block label or `OTHER`, whether the label was inherited), in execution order.
    """
    if OTHER in block_scopes:
        raise InputError(f"{OTHER!r} is reserved for nodes outside every block")
    if not all(block_scopes.values()):
        raise InputError("block scope fragments must be non-empty")
    # longest fragment first: a node of a nested block belongs to the innermost one
    by_length = sorted(block_scopes.items(), key=lambda kv: len(kv[1]), reverse=True)
    attributed: list[tuple[NodeTime, str, bool]] = []
    previous = OTHER
    for t in sorted(node_times, key=lambda t: t.order):
        label = next((lb for lb, frag in by_length if frag in t.name), None)
        inherited = label is None and inherit_unscoped and "/" not in t.name
        if label is None:
            label = previous if inherited else OTHER
        attributed.append((t, label, inherited))
        previous = label
    return attributed


def aggregate_by_block(node_times: list[NodeTime], block_scopes: dict[str, str], *,
                       inherit_unscoped: bool = True) -> BlockProfile:
    """Sum node times per block by module scope (`attribute_nodes`, whose arguments these are).

    Returns:
        Each block's total µs and share of the total, with `OTHER` last; shares sum to 1.
    """
    attributed = attribute_nodes(node_times, block_scopes, inherit_unscoped=inherit_unscoped)
    totals = {label: 0.0 for label in block_scopes} | {OTHER: 0.0}
    counts = dict.fromkeys(totals, 0)
    for t, label, _ in attributed:
        totals[label] += t.mean_us
        counts[label] += 1
    total = sum(totals.values())
    blocks = [BlockTime(label=lb, fragment=block_scopes.get(lb, ""), total_us=us,
                        share=us / total if total > 0 else 0.0, n_nodes=counts[lb])
              for lb, us in totals.items()]
    inherited = [t.name for t, _, was_inherited in attributed if was_inherited]
    return BlockProfile(blocks=blocks, total_us=total, inherited=inherited)


__all__ = ["OTHER", "BlockProfile", "BlockTime", "NodeTime", "aggregate_by_block", "attribute_nodes", "block_label",
           "block_scopes", "label_index", "scope_fragment", "scopes_of"]
