"""`updp bench`: interleaved A/B latency of ONNX files under one recorded setup; and the per-block
profile comparison of a baseline and its pruned export (the report of `updp run`)."""

from __future__ import annotations

import json
from pathlib import Path

from updp.core.errors import InputError
from updp.core.io import check_outputs
from updp.exporter.scopes import scopes_of
from updp.exporter.torch_export import get_metadata
from updp.latency.profile import median_block_us, profile_blocks_alternating
from updp.latency.runner import BenchReport, LatencySetup, benchmark
from updp.ort import load_onnx
from updp.workflows.config import BenchConfig


def bench(cfg: BenchConfig) -> BenchReport:
    """Time `cfg.models` interleaved at each optimization level; speedups relative to the first.

    Raises:
        InputError: a missing or malformed file (before any timing starts), bad settings.
    """
    check_outputs([cfg.save], list(cfg.models))
    models = []
    for k, p in enumerate(cfg.models):
        load_onnx(p)  # one-line error for a missing or malformed file before any timing starts
        name = cfg.names[k] if cfg.names else Path(p).name
        if any(name == m[0] for m in models):
            name = str(p)
        if any(name == m[0] for m in models):
            raise InputError(f"updp bench: {p} is given twice")
        models.append((name, str(p)))
    setup = LatencySetup(device=cfg.device, threads=cfg.threads, warmup=cfg.warmup, repeats=cfg.repeats,
                         batch=cfg.batch, opt_level=cfg.opt_levels[0])
    report = benchmark(models, setup, opt_levels=cfg.opt_levels, max_seconds=cfg.max_seconds)
    if cfg.save:
        report.to_json(cfg.save)
    return report


def block_labels(path: str | Path) -> dict[str, str]:
    """`{"<i> <module path>": scope fragment}` from an export's `updp.block_scopes` metadata."""
    scopes = json.loads(get_metadata(load_onnx(path)).get("updp.block_scopes", "{}"))
    return scopes_of(sorted((int(i), name) for i, name in scopes.items()))


def block_profiles(files: dict[str, Path], setup: LatencySetup, *, runs: int, rounds: int = 5) -> dict[str, dict]:
    """Per-block kernel time of each file, profiled in alternating rounds, median per block.

    The first file's `updp.block_scopes` label the blocks of all of them: pruning replaces modules
    in place, so the module paths (and the node-name scopes) of a baseline and its pruned export
    are the same.

    Why rounds: the kernels of a small model take microseconds, and one profiling session of a
    model right after another drifts by 10-30 % (frequency, caches, thread wake-ups), which showed
    up as unpruned blocks getting "faster". Alternating the files, `rounds` sessions each, and
    taking each block's median over the rounds puts the drift on both alike.
    """
    scopes = block_labels(next(iter(files.values())))
    per_round = max(1, runs // rounds)
    samples = profile_blocks_alternating({k: str(v) for k, v in files.items()}, scopes, setup, rounds=rounds,
                                         runs_per_round=per_round)
    out = {}
    for key, profs in samples.items():
        med = median_block_us(profs)
        total = sum(med.values())
        out[key] = {"total_us": total, "rounds": rounds, "runs_per_round": per_round,
                    "inherited": list(profs[0].inherited),
                    "blocks": [{"label": lb, "fragment": profs[0].get(lb).fragment, "total_us": med[lb],
                                "share": med[lb] / total if total > 0 else 0.0,
                                "n_nodes": profs[0].get(lb).n_nodes} for lb in med]}
    return out


__all__ = ["bench", "block_labels", "block_profiles"]
