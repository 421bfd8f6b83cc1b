"""Latency measurement: one A/B runner that records its setup, and per-block ORT profiling."""

from updp.latency.profile import (
    OTHER,
    BlockProfile,
    BlockTime,
    NodeTime,
    aggregate_by_block,
    block_scopes,
    median_block_us,
    parse_trace,
    profile_blocks_alternating,
    profile_nodes,
    scope_fragment,
)
from updp.latency.runner import BenchReport, LatencySetup, ModelTiming, benchmark

__all__ = [
    "OTHER", "BenchReport", "BlockProfile", "BlockTime", "LatencySetup", "ModelTiming", "NodeTime",
    "aggregate_by_block", "benchmark", "block_scopes", "median_block_us", "parse_trace",
    "profile_blocks_alternating", "profile_nodes", "scope_fragment",
]
