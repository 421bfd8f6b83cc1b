"""updp: Unified Progressive Depth Pruner and ONNX deployment optimizer.

The PyTorch side (`updp.pruning`) turns chosen residual blocks into linear, mergeable blocks; the
deployment side exports to ONNX (`updp.exporter`), merges the linearized blocks exactly
(`updp.onnx_passes`) and proves the speedup with ONNX Runtime (`updp.latency`).
"""

__version__ = "0.1.0"
