"""Blocks: the PyTorch side of UPDP's step "a residual block becomes a linear one".

The λ-modules blend a block's nonlinear parts with their linear replacements (λ = 0 the original
function, λ = 1 the exactly mergeable linear form); the registry maps block types to the
handlers that build that form, one module per family (ConvNeXt, ViT/DeiT, inverted residual,
ResNet; users can register their own); discovery lists a model's blocks with stable indices;
conversion applies the pruned form in place; a `PrunePlan` says which blocks of which model, as
versioned JSON, and owns the one check that a plan fits a model.

    blocks = find_blocks(model, (1, 3, 32, 32))
    apply_pruning(model, [1, 3], lam=0.0)
    PrunePlan.load("plan.json").apply(fresh_model)
"""

from updp.blocks.convert import (
    apply_pruning,
    calibrate_bn,
    drop_blocks,
    indices_of,
    pruned_blocks,
    randomize_norm_stats,
    set_lam,
)
from updp.blocks.discover import BlockInfo, count_macs, find_blocks, prunable_candidates
from updp.blocks.modules import BlendedNorm, ChannelBatchNorm, EndAct, LambdaAct
from updp.blocks.plan import PrunePlan
from updp.blocks.registry import BlockHandler, PrunedBlock, get_handler, register_block, registered_types

__all__ = [
    "BlendedNorm", "BlockHandler", "BlockInfo", "ChannelBatchNorm", "EndAct", "LambdaAct", "PrunePlan",
    "PrunedBlock", "apply_pruning", "calibrate_bn", "count_macs", "drop_blocks", "find_blocks", "get_handler",
    "indices_of", "prunable_candidates", "pruned_blocks", "randomize_norm_stats", "register_block",
    "registered_types", "set_lam",
]
