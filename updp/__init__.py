"""updp: Unified Progressive Depth Pruner and ONNX deployment optimizer.

The PyTorch side (`updp.blocks`, `updp.training`) turns chosen residual blocks into linear,
mergeable blocks; the deployment side exports to ONNX (`updp.exporter`), merges the linearized
blocks exactly (`updp.onnx_passes`) and proves the speedup with ONNX Runtime (`updp.latency`).
`updp.workflows` holds one function per command, which the CLI, this API and `updp run`
(`updp.pipeline`) all call. `docs/architecture.md` draws the layers.

The short Python API (`updp.train`, `updp.search`, `updp.prune`, `updp.export`, `updp.evaluate`,
`updp.bench`, `updp.run`, `updp.list_blocks`, `updp.optimize`) lives in `updp.api` and is imported on
first use, so `import updp` stays cheap (no torch, no onnx).
"""

from updp.core.version import __version__

_API = ("train", "search", "prune", "export", "evaluate", "bench", "run", "list_blocks", "optimize")


def __getattr__(name: str):
    if name in _API:
        from updp import api  # lazy: `import updp` stays free of torch and onnx

        return getattr(api, name)
    raise AttributeError(f"module 'updp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__all__ = ["__version__", *_API]
