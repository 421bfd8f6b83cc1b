"""Latency: one A/B runner that records its setup, per-node ORT profiling, and the per-block
latency table that the subnet search uses.

    report = benchmark([("base", "base.onnx"), ("pruned", "pruned.onnx")], LatencySetup(threads=2))
"""

from updp.latency.profile import median_block_us, parse_trace, profile_blocks_alternating, profile_nodes
from updp.latency.runner import BenchReport, LatencySetup, ModelTiming, benchmark

__all__ = ["BenchReport", "LatencySetup", "ModelTiming", "benchmark", "median_block_us", "parse_trace",
           "profile_blocks_alternating", "profile_nodes"]
