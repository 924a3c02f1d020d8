#!/usr/bin/env bash
# The GPU measurements still owed (RESULTS.md, sections 4 and 5), in one device call (no Ray/Optuna/MLflow needed).
#   bash experiments/gpu_next.sh OUT_DIR
# 1. CUDA graphs train like eager steps (check_cuda_graphs.py; exit 1 on a mismatch).
# 2. train()'s loop against bare steps, ResNet-18, batch 512 (target: within 10%, >= 55k img/s on an H200).
# 3. The step benchmark at batch 128 and 512, eager and with CUDA graphs (ESAM's SWP from a pool of 8).
# 4. The same on WRN-28-10 at batch 128, where convolutions, not BatchNorm, dominate.
# Each step has its own time limit (500 s in all), so a slow one cannot eat the rest; expect about 6 minutes.
set -uo pipefail
out=${1:-gpu_out}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/device.txt"
python -c "import torch; print('torch', torch.__version__)" | tee -a "$out/device.txt"
bench() {  # seconds allowed, name, then esam bench arguments
  local seconds=$1 name=$2; shift 2
  timeout "$seconds" python -m esam.cli bench --dtype bf16 --channels-last --device cuda --out "$out/$name.md" "$@" \
    > "$out/$name.log" 2>&1; echo "$name: exit $?"; grep -E "^\| (SGD|SAM|ESAM)" "$out/$name.md" 2>/dev/null
}
timeout 80 python experiments/check_cuda_graphs.py 2>&1 | tee "$out/check_cuda_graphs.log"
timeout 100 python experiments/bench_loop.py --model resnet18 --batch-size 512 --device cuda --repeats 3 \
  2>&1 | tee "$out/bench_loop_b512.log"
bench 50 resnet18_b128_eager --model resnet18 --batch-size 128 --repeats 5 --steps 30 --warmup 10
bench 70 resnet18_b128_graphs --model resnet18 --batch-size 128 --repeats 5 --steps 30 --warmup 10 --cuda-graphs --swp-patterns 8
bench 70 resnet18_b512_graphs --model resnet18 --batch-size 512 --repeats 3 --steps 20 --warmup 10 --cuda-graphs --swp-patterns 8
bench 50 wrn28_10_b128_eager --model wrn28_10 --batch-size 128 --repeats 3 --steps 15 --warmup 5
bench 80 wrn28_10_b128_graphs --model wrn28_10 --batch-size 128 --repeats 3 --steps 15 --warmup 10 --cuda-graphs --swp-patterns 8
