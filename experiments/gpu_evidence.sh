#!/usr/bin/env bash
# The GPU evidence of experiments/RESULTS.md in one call: step benchmark (batch 128 and 512, bf16)
# and the CIFAR-10 / ResNet-18 table. Runs without Ray, Optuna or MLflow (torch + pyyaml only).
#   bash experiments/gpu_evidence.sh OUT_DIR CIFAR10_JPEG_TARBALL EPOCHS
# Expect on one H100/H200: about 6 minutes at 20 epochs.
set -uo pipefail
out=${1:-gpu_out}; tarball=${2:-.devdata/cifar10-jpeg.tar.xz}; epochs=${3:-20}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
mkdir -p "$out" /tmp/esam-data
tar -xJf "$tarball" -C /tmp/esam-data
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/device.txt"
python -c "import torch; print('torch', torch.__version__)" | tee -a "$out/device.txt"
python experiments/bench_step.py --model resnet18 --batch-size 128 --dtype bf16 --channels-last --device cuda \
  --repeats 5 --steps 30 --warmup 10 --out "$out/bench_resnet18_b128_bf16.md" 2>&1 | tee "$out/bench_b128.log"
python experiments/bench_step.py --model resnet18 --batch-size 512 --dtype bf16 --channels-last --device cuda \
  --repeats 3 --steps 20 --warmup 5 --out "$out/bench_resnet18_b512_bf16.md" 2>&1 | tee "$out/bench_b512.log"
python experiments/paper_table.py --dataset imagefolder --data-root /tmp/esam-data/cifar10-jpeg \
  --epochs "$epochs" --batch-size 256 --out "$out/paper_table.md" 2>&1 | tee "$out/paper_table.log"
