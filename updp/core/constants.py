"""Values that several layers must agree on, each defined once.

Standard-library only: the CLI reads these to build its flags without importing torch or ONNX.
"""

from __future__ import annotations

# ONNX Runtime graph optimization levels, by the short name users type, to the name of the
# `onnxruntime.GraphOptimizationLevel` member. ORT already folds Conv+BN and fuses activations
# at its basic/extended levels, so a speedup only counts when it survives "all".
OPT_LEVELS: dict[str, str] = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}

# Mixed precision of the training forwards: "off" (float32) or "bf16" (bfloat16 autocast; the
# weights, the loss, validation and the export stay float32).
AMP_MODES: tuple[str, ...] = ("off", "bf16")

# The opset of updp's exports. LayerNormalization needs 17.
DEFAULT_OPSET = 18
MIN_EXPORT_OPSET = 17

# Which torch exporter writes updp's exports: "torchscript" (`dynamo=False`, the default: faster here
# and scoped node names) or "dynamo" (torch.export-based, torch's own default; needs onnxscript).
EXPORTERS: tuple[str, ...] = ("torchscript", "dynamo")
DEFAULT_EXPORTER = "torchscript"

# Where ONNX Runtime runs ("cuda" needs onnxruntime-gpu; "tensorrt" its TensorRT provider and the
# TensorRT libraries), and where torch trains ("auto" is CUDA when present, else the CPU; also "cuda:N").
ORT_DEVICES: tuple[str, ...] = ("cpu", "cuda", "tensorrt")
DEFAULT_TORCH_DEVICE = "auto"

# The data splits (`updp.data`): train / holdout (the search scores on it) / val (reporting only).
SPLITS: tuple[str, ...] = ("val", "holdout", "train")

# The latency runner's setup when nobody asks for another: intra-op threads, warm-up runs per
# session, interleaved timed rounds. 100 rounds: a 30-round run on a loaded 2-core machine has
# shown a peer ahead where a quiet 60-round run did not.
DEFAULT_THREADS = 2
DEFAULT_WARMUP = 10
DEFAULT_REPEATS = 100

# How `updp prune` makes a block linear: UPDP's progressive lambda, DepthShrinker-style at once,
# Layer-Folding's learned slopes, or removing the block.
PRUNE_METHODS = ("updp", "abrupt", "layerfold", "drop")
