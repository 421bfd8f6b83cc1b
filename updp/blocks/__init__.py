"""PyTorch side of UPDP: block families, their pruned training form, discovery and plans.

Public API:
    find_blocks(model, input_size=None) -> list[BlockInfo]
    apply_pruning(model, indices, lam=1.0, **options) -> list[BlockInfo]
    set_lam(model, lam), pruned_blocks(model), calibrate_bn(model, batches)
    randomize_norm_stats(model, seed)
    register_block(*types, family=...) / BlockHandler / PrunedBlock
    PrunePlan
"""

from updp.pruning.convert import (
    apply_pruning,
    calibrate_bn,
    indices_of,
    pruned_blocks,
    randomize_norm_stats,
    set_lam,
)
from updp.pruning.discover import BlockInfo, count_macs, find_blocks
from updp.pruning.modules import BlendedNorm, ChannelBatchNorm, EndAct, LambdaAct
from updp.pruning.plan import PrunePlan
from updp.pruning.registry import BlockHandler, PrunedBlock, get_handler, register_block, registered_types

__all__ = [
    "BlendedNorm", "BlockHandler", "BlockInfo", "ChannelBatchNorm", "EndAct", "LambdaAct", "PrunePlan",
    "PrunedBlock", "apply_pruning", "calibrate_bn", "count_macs", "find_blocks", "get_handler",
    "indices_of", "pruned_blocks", "randomize_norm_stats", "register_block", "registered_types", "set_lam",
]
