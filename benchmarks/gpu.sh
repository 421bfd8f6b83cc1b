#!/usr/bin/env bash
# CUDA (and TensorRT, where present) latency of a baseline, its merged model and their float16 and
# int8 files, at batch 1 and 128: the GPU half of the deployment claim, prepared for a machine with
# an NVIDIA GPU and onnxruntime-gpu (this project's CI and developer machines have none).
#
#   bash benchmarks/gpu.sh                                  # timm convnext_tiny, P6
#   MODEL=timm:deit_tiny_patch16_224 PRUNE=6 bash benchmarks/gpu.sh
#
# Files (random weights: a latency what-if; int8 calibrated on random inputs, recorded as such):
#   base.onnx, p.onnx            fp32 baseline and merged (exported with a dynamic batch)
#   base.fp16.onnx, p.fp16.onnx  float16 inside, float32 inputs/outputs (one shared input for all)
#   base.int8.onnx, p.int8.onnx  ONNX Runtime static QDQ int8 (the CUDA provider runs few int8
#                                kernels and hands the rest to the CPU: TensorRT is where QDQ pays)
# Timing: updp bench, ORT_ENABLE_ALL, interleaved rounds, speedups against base.onnx; each run
# includes the host<->device copies of its input and output (no IO binding). Reports in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/gpu}
MODEL=${MODEL:-timm:convnext_tiny}
PRUNE=${PRUNE:-6}
REPEATS=${REPEATS:-100}
BATCHES=${BATCHES:-1 128}

providers=$("$PY" -c "import onnxruntime as o; print(' '.join(o.get_available_providers()))")
echo "# onnxruntime providers: $providers"
case " $providers " in
  *" CUDAExecutionProvider "*) ;;
  *) echo "benchmarks/gpu.sh: onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu on a GPU machine)" >&2
     exit 2 ;;
esac
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
mkdir -p "$OUT"
export_all() {  # $1 = output file, rest = export flags
  local out=$1; shift
  [ -f "${out%.onnx}.int8.onnx" ] || "$PY" -m updp export "$MODEL" --dynamic-batch --out "$out" "$@" \
      --quantize int8 --calib random --fp16 --fp16-keep-io
}
export_all "$OUT/base.onnx"
export_all "$OUT/p.onnx" --prune "$PRUNE"
files=("$OUT/base.onnx" "$OUT/p.onnx" "$OUT/base.fp16.onnx" "$OUT/p.fp16.onnx" "$OUT/base.int8.onnx" "$OUT/p.int8.onnx")
# shellcheck disable=SC2086  # BATCHES is a list of numbers
"$PY" -m updp bench "${files[@]}" --device cuda --batch $BATCHES --opt-level all --repeats "$REPEATS" \
    --save "$OUT/cuda.json"
case " $providers " in
  *" TensorrtExecutionProvider "*)
    # shellcheck disable=SC2086
    "$PY" -m updp bench "${files[@]}" --device tensorrt --batch $BATCHES --opt-level all --repeats "$REPEATS" \
        --save "$OUT/tensorrt.json" ;;
  *) echo "# no TensorrtExecutionProvider: TensorRT not measured" ;;
esac
echo "# reports: $OUT/cuda.json$( [ -f "$OUT/tensorrt.json" ] && echo " $OUT/tensorrt.json")"
