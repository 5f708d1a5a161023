#!/usr/bin/env bash
# The GPU checks of one lent machine, as one prepared script (docs/testing.md#on-a-gpu):
# the test suite, then the figures of docs/performance.md, each step under its own time
# limit so the whole fits a 10-minute command. Run from the repository root, on an image
# that has its own CUDA JAX (run from source, not installed), with the four MNIST IDX
# files in a git-ignored folder carried along:
#
#     OUT=/some/folder DATA=.gpu/mnist_idx bash experiments/gpu_check.sh
#
# Each step writes OUT/<step>.log; OUT/summary.txt says how each step ended. Wheels of
# the packages the image lacks wait in $(dirname DATA)/*.whl; made beforehand, where a
# registry answers (one image seen had no tensorboardX, which the runs' TensorBoard files
# need):
#     pip download --no-deps --only-binary=:all: --python-version 3.12 -d .gpu tensorboardX==2.6.4
# QUICK=1 runs every step in a tiny setting, to rehearse the script on a CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder for the logs}
DATA=${DATA:-.gpu/mnist_idx}
QUICK=${QUICK:-0}
source experiments/gpu_env.sh

if [ "$QUICK" = 1 ]; then
  tests=(tests/test_losses.py tests/test_precision.py)
  batches=256 epochs=2 torch_epochs=2 device=cpu workers=2
else
  tests=(tests)
  batches=256,4096 epochs=20 torch_epochs=5 device=cuda workers=8
fi
step tests 300 python3 -m pytest -q -n "$workers" -m "not slow" -p no:cacheprovider "${tests[@]}"
step benchmark 60 python3 experiments/benchmark.py --data_dir="$DATA" --batch_sizes="$batches" --epochs=3
step benchmark_highest 40 env JAX_DEFAULT_MATMUL_PRECISION=highest \
  python3 experiments/benchmark.py --data_dir="$DATA" --batch_sizes=256 --epochs=3
step reference_run 80 python3 -m vae_jax.main --data_dir="$DATA" --workdir=/tmp/gpu_reference \
  --overwrite --notensorboard --epochs="$epochs"
if python3 -c 'import torch' 2>/dev/null; then
  for variant in eager compiled; do
    step "torch_$variant" 60 python3 experiments/torch_reference.py --data_dir="$DATA" \
      --device="$device" --variant="$variant" --epochs="$torch_epochs"
  done
fi
cat "$OUT/summary.txt"
