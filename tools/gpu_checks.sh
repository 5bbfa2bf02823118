#!/usr/bin/env bash
# The prepared GPU checks, as one script for a lent CUDA machine (see docs/benchmarks.md):
# the GPU tests, the deformable-attention kernel benchmark, the bfloat16 batch-8 benchmark
# and an AMP training step. Runs from the repository root without installing the package
# (PYTHONPATH=src), so it works with the machine's own torch. Logs go to $OUT (or ./gpu_out).
set -uo pipefail
out="${OUT:-gpu_out}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
step() { echo; echo "=== $*"; }
{
  step "machine"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"
  step "pytest -m gpu"
  timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu -o addopts="" \
    tests/test_deformable_attention_triton.py tests/test_trainer.py tests/test_denoising.py \
    tests/test_visualize.py
  step "deformable attention kernel, float32 and bfloat16, batch 8"
  timeout 90 python3 benchmarks/bench_deformable_attention.py --device cuda --dtype float32 --batch 8 --runs 20
  timeout 90 python3 benchmarks/bench_deformable_attention.py --device cuda --dtype bfloat16 --batch 8 --runs 20
  step "focus-detr benchmark --device cuda --dtype bfloat16 --batch 8"
  timeout 240 python3 -m focus_detr.cli benchmark --preset focus_detr_r50_4scale_12ep \
    --size 800x1333 --device cuda --dtype bfloat16 --batch-size 8 --keep-ratio 0.5 0.3 \
    --runs 10 --warmup 3 --train-step --json "$out/r50_cuda_bf16_b8.json"
} 2>&1 | tee "$out/gpu_checks.log"
