"""The default block-selection rule for `--prune N` (of `updp export` and `updp prune`).

Rule: prune the N prunable blocks whose merge saves the most estimated time.

The saving of block i is `cost_i(baseline) - cost_i(pruned and merged)`, where `cost_i` sums the
FLOP/byte cost model (`updp.onnx_passes.cost`) over the ONNX nodes in block i's module scope. Both
graphs are real: the baseline export, and one export with every prunable block at λ = 1 run through
the same merge passes as the final file. So the estimate reflects what the planner actually does
(e.g. a ResNet basic block whose 3×3 convs cannot merge exactly saves ~nothing and is ranked last).
Ties (equal estimated saving to 0.1 %) go to the later block: later blocks see smaller feature maps
and their removal has the least effect on what earlier layers learned. With data and a trained
baseline, `updp search` replaces this rule with measured accuracy and latency.
"""

from __future__ import annotations

import copy
import logging

import torch

from updp.blocks.convert import apply_pruning
from updp.core.errors import InputError
from updp.exporter.scopes import NodeTime, aggregate_by_block, label_index, scopes_of
from updp.exporter.torch_export import simplify, torch_to_onnx
from updp.onnx_passes import optimize_model
from updp.onnx_passes.cost import estimate_node_costs

logger = logging.getLogger(__name__)

RULE_NAME = "largest estimated saving (cost model, ties to later blocks)"


def estimate_block_savings(module: torch.nn.Module, blocks, input_shape) -> dict[int, float]:
    """Estimated ns saved per prunable block by pruning + merging it (see the module docstring)."""
    prunable = [b for b in blocks if b.prunable]
    base_graph = simplify(torch_to_onnx(module, input_shape), optimize=False)
    pruned_module = copy.deepcopy(module).eval()
    apply_pruning(pruned_module, [b.index for b in prunable], lam=1.0)
    merged = optimize_model(simplify(torch_to_onnx(pruned_module, input_shape), optimize=False)).model

    scopes = scopes_of((b.index, b.name) for b in prunable)

    def per_block(graph) -> dict[int, float]:
        # Estimated ns per node, attributed to blocks the same way measured profiles are.
        nodes = [NodeTime(name=name, op_type="", mean_us=ns, order=k)
                 for k, (name, ns) in enumerate(estimate_node_costs(graph).items())]
        prof = aggregate_by_block(nodes, scopes, inherit_unscoped=False)
        return {label_index(label): prof.get(label).total_us for label in scopes}

    before, after = per_block(base_graph), per_block(merged)
    return {i: before[i] - after[i] for i in before}


def rank_by_saving(savings: dict[int, float]) -> list[int]:
    """Block indices, largest estimated saving first; savings equal to 0.1 % of the largest go to
    the later block (see the module docstring)."""
    top = max(savings.values()) if savings else 0.0
    quantum = max(abs(top) * 1e-3, 1e-9)
    return sorted(savings, key=lambda i: (round(savings[i] / quantum), i), reverse=True)


def select_blocks(module: torch.nn.Module, blocks, n: int, input_shape) -> tuple[list[int], str]:
    """Indices of the N blocks to prune by the default rule, and the rule's name."""
    prunable = [b for b in blocks if b.prunable]
    if n < 1:
        raise InputError(f"--prune expects N >= 1, got {n}")
    if n > len(prunable):
        raise InputError(f"--prune {n}: the model has only {len(prunable)} prunable blocks")
    savings = estimate_block_savings(module, blocks, input_shape)
    ranked = rank_by_saving(savings)
    chosen = sorted(ranked[:n])
    for i in ranked:
        logger.info("block %d: estimated saving %.1f us%s", i, savings[i] / 1e3, " (chosen)" if i in chosen else "")
    return chosen, RULE_NAME
