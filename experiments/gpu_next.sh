#!/usr/bin/env bash
# The GPU measurements still owed to issues #2 and #3, in one device call (no Ray/Optuna/MLflow needed).
#   bash experiments/gpu_next.sh OUT_DIR
# 1. CUDA graphs train like eager steps (check_cuda_graphs.py; exit 1 on a mismatch).
# 2. #3: esam.train's loop against bare steps, ResNet-18, batch 512 (target: within 10%, >= 55k img/s on an H200).
# 3. #2: the step benchmark at batch 128 and 512, eager and with CUDA graphs (ESAM's SWP from a pool of 8).
# 4. #2: the same on WRN-28-10 at batch 128, where convolutions, not BatchNorm, dominate.
# Expect about 6 minutes on one H100/H200.
set -uo pipefail
out=${1:-gpu_out}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/device.txt"
python -c "import torch; print('torch', torch.__version__)" | tee -a "$out/device.txt"
bench() {  # name, then esam bench arguments
  local name=$1; shift
  timeout 150 python -m esam.cli bench --dtype bf16 --channels-last --device cuda --out "$out/$name.md" "$@" \
    > "$out/$name.log" 2>&1; echo "$name: exit $?"; grep -E "^\| (SGD|SAM|ESAM)" "$out/$name.md" 2>/dev/null
}
timeout 120 python experiments/check_cuda_graphs.py 2>&1 | tee "$out/check_cuda_graphs.log"
timeout 150 python experiments/bench_loop.py --model resnet18 --batch-size 512 --device cuda --repeats 3 \
  2>&1 | tee "$out/bench_loop_b512.log"
bench resnet18_b128_eager --model resnet18 --batch-size 128 --repeats 5 --steps 30 --warmup 10
bench resnet18_b128_graphs --model resnet18 --batch-size 128 --repeats 5 --steps 30 --warmup 20 --cuda-graphs --swp-patterns 8
bench resnet18_b512_graphs --model resnet18 --batch-size 512 --repeats 3 --steps 20 --warmup 20 --cuda-graphs --swp-patterns 8
bench wrn28_10_b128_eager --model wrn28_10 --batch-size 128 --repeats 3 --steps 15 --warmup 5
bench wrn28_10_b128_graphs --model wrn28_10 --batch-size 128 --repeats 3 --steps 15 --warmup 20 --cuda-graphs --swp-patterns 8
