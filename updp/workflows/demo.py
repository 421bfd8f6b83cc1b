"""`updp demo --latency-only`: the 30-second what-if of depth pruning, on random weights.

timm ConvNeXt-T at 224×224, 6 blocks pruned at λ = 1 by the default rule: export both, merge and
verify the pruned one, and time them interleaved on ORT CPU. (The full demo, `updp demo`, is
`updp run` on the embedded default: `updp.pipeline.config.demo_config`.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from updp.core.constants import DEFAULT_THREADS
from updp.core.io import write_text_atomic
from updp.exporter.export import ExportResult
from updp.latency.runner import BenchReport
from updp.workflows.bench import bench
from updp.workflows.config import BenchConfig, ExportConfig
from updp.workflows.export import export

WHAT_IF_MODEL = "timm:convnext_tiny"
WHAT_IF_PRUNE = 6


@dataclass
class WhatIfResult:
    """The latency what-if: both exports and their interleaved timing."""

    out_dir: Path
    base: ExportResult
    pruned: ExportResult
    report: BenchReport

    def headline(self) -> str:
        fast = self.report.get(Path(self.pruned.out).name, "all")
        return (f"headline: ConvNeXt-T P{WHAT_IF_PRUNE} (merged) runs {fast.speedup:.2f}x faster than the unpruned "
                f"model under ORT_ENABLE_ALL (median {fast.median_ms:.1f} ms, CPU, {DEFAULT_THREADS} threads, "
                f"batch 1); merge verified, max abs diff {self.pruned.max_abs_diff:.1e}")


def latency_what_if(out_dir: str | Path, *, quick: bool = False,
                    echo: Callable[[str], None] | None = None) -> WhatIfResult:
    """Export, merge, verify and time ConvNeXt-T P6 against its unpruned export (random weights)."""
    echo = echo or (lambda line: None)
    out = Path(out_dir)
    echo(f"updp demo: {WHAT_IF_MODEL} at 224x224, random weights (no hub downloads here), {WHAT_IF_PRUNE} blocks "
         "pruned at lambda=1")
    base = export(ExportConfig(model=WHAT_IF_MODEL, out=str(out / "convnext_tiny_base.onnx")))
    echo(base.format_summary())
    pruned = export(ExportConfig(model=WHAT_IF_MODEL, prune=WHAT_IF_PRUNE, out=str(out / "convnext_tiny_p6.onnx")))
    echo(pruned.format_summary())
    report = bench(BenchConfig(models=[base.out, pruned.out], warmup=5 if quick else 10,
                               repeats=15 if quick else 40))
    write_text_atomic(out / "bench.json", report.to_json())
    return WhatIfResult(out_dir=out, base=base, pruned=pruned, report=report)


__all__ = ["WhatIfResult", "latency_what_if"]
