#!/usr/bin/env bash
# The GPU checks of issue 21, as one script for the device tool (an H200 with Python 3.12, torch,
# numpy, scipy, onnxruntime; no monai, SimpleITK, vtk or scikit-image):
#
#   here:        make gpu-bundle          # .cache/gpu: monai's wheel and the synthetic knee (~16 MB)
#   the device:  run(command="bash benchmarks/gpu.sh", carry=[".cache/gpu"], timeout_s=540)
#
# What it runs: benchmarks/train_step.py --device cuda for the demo's net and MedNeXt-S at 128^3
# batch 2 (fp32, bf16 and fp16 autocast, bf16 + torch.compile, bf16 + channels_last_3d): step time
# and peak GPU memory. Stubbed: the knee is synthesised here (the phantom needs scikit-image), so the
# device only reads knee.npz. Not run: DDP over NCCL needs two GPUs (one GPU is lent), so the
# multi-process path stays checked on CPU/gloo (tests/test_distributed.py) and on SLURM (test_cluster).
# Results: $OUT/gpu (train_step.json, the printed table, nvidia-smi).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-results/benchmarks}/gpu"
mkdir -p "$out"
test -f .cache/gpu/knee.npz || { echo "benchmarks/gpu.sh: .cache/gpu/knee.npz missing: run 'make gpu-bundle' and carry .cache/gpu" >&2; exit 2; }
python3 -m pip install -q --no-deps --target .cache/gpu/site .cache/gpu/*.whl
export PYTHONPATH="$PWD/src:$PWD/.cache/gpu/site"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$out/device.txt"
cp .cache/gpu/knee.npz "$out/knee.npz"
python3 benchmarks/train_step.py --device cuda --nets demo mednext_s --out "$out" 2>&1 | tee "$out/train_step.txt"
rm -f "$out/knee.npz"
