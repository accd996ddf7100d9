#!/usr/bin/env bash
# Every GPU number docs/benchmarks.md asks for, in one run of under 8 minutes on one
# H100/H200-class GPU (docs/benchmarks.md, "GPU / TPU", says how to run it and what it prints):
#   DeiT-S and DeiT-B bfloat16 train steps: images/s, MFU (XLA's FLOPs / time / the chip's peak)
#   and timm (bfloat16 autocast) side by side on the same GPU; slim S²ViTE and SViTE+ token
#   dropping inference speedups against dense.
# Needs jax with CUDA, flax, optax, orbax-checkpoint, absl-py, ml_collections; torch and timm
# for the side-by-side (skipped with a note when missing). TensorFlow is not needed.
#
#   PEAK_TFLOPS=989 bash tools/gpu_benchmarks.sh [OUT_DIR]     # 989: H100/H200 SXM bf16 dense
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_results}
PEAK=${PEAK_TFLOPS:-989}
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
python -c 'import jax; print(jax.devices())' | tee "$OUT/devices.txt"
TIMM=--vs_timm
python -c 'import torch, timm' 2>/dev/null || { TIMM=; echo 'torch/timm missing: JAX only'; }

bench() {  # NAME ARGS...: one measurement, its JSON kept and its summary printed
  local name=$1; shift
  echo "== $name"
  timeout 240 python tools/benchmark.py "$@" --json >"$OUT/$name.json" || echo "FAILED: $name"
  python - "$OUT/$name.json" <<'PY' || true
import json, sys
r = json.load(open(sys.argv[1]))
keys = ('images_per_sec', 'mfu', 'timm_images_per_sec', 'timm_mfu', 'ratio', 'time_saving',
        'flops_saving', 'compile_seconds')
print({k: round(r[k], 4) for k in keys if r.get(k) is not None})
PY
}

for model in deit_small_patch16_224 deit_base_patch16_224; do
  bench "train_${model%%_patch*}" train --model $model --batch 256 --dtype bfloat16 \
    --steps 20 --warmup 3 --block 5 --peak_tflops "$PEAK" $TIMM
done
bench infer_s2vite_base infer --config configs/s2vite.py:model=deit_base,head_density=0.7,neuron_density=0.6 \
  --batch 256 --dtype bfloat16 --steps 20 --block 5
bench infer_tokens_small infer --config configs/sviteplus.py:model=deit_small,density=1.0,keep_tokens=138 \
  --batch 256 --dtype bfloat16 --steps 20 --block 5
