#!/usr/bin/env bash
# GPU packing (Ray Tune fractional GPUs), then the step profile, in one device call.
#   pip wheel -w .wheelhouse 'ray[tune]' optuna mlflow   # once, on a machine with network and the GPU machine's Python;
#                                                       # carry .wheelhouse to the GPU machine (it may have no network)
#   bash experiments/gpu_packing.sh OUT_DIR
set -uo pipefail
out=${1:-gpu_out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target .site .wheelhouse/*.whl || exit 1
export PYTHONPATH=$PWD/.site:$PWD PYTHONUNBUFFERED=1
python experiments/gpu_packing.py --packings 1,2,4 --epochs 3 --samples 7680 --out "$out/packing.md" > "$out/packing.log" 2>&1
tail -8 "$out/packing.log"
python experiments/profile_step.py --batch-size 512 --out "$out/profile_b512.txt" > "$out/profile.log" 2>&1
grep "==" "$out/profile_b512.txt"
