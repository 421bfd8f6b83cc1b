"""updp: Unified Progressive Depth Pruner and ONNX deployment optimizer.

The PyTorch side (`updp.pruning`) turns chosen residual blocks into linear, mergeable blocks; the
deployment side exports to ONNX (`updp.exporter`), merges the linearized blocks exactly
(`updp.onnx_passes`) and proves the speedup with ONNX Runtime (`updp.latency`).

The short Python API (`updp.train`, `updp.search`, `updp.prune`, `updp.export`, `updp.evaluate`,
`updp.bench`, `updp.run`) lives in `updp.api` and is imported on first use, so `import updp` stays
cheap (no torch, no onnx).
"""

__version__ = "0.1.0"

_API = ("train", "search", "prune", "export", "evaluate", "bench", "run")


def __getattr__(name: str):
    if name in _API:
        from updp import api

        return getattr(api, name)
    raise AttributeError(f"module 'updp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__all__ = ["__version__", *_API]
