#!/usr/bin/env bash
# A shipped model trained, shipped and scored on a lent GPU, in one 10-minute command
# (docs/pretrained.md): by default mnist_vamp_hierarchy, whose 200 epochs take hours on
# 2 CPU cores and about a minute on an H200 (0.253 s an epoch measured for its settings,
# 2026-12-04). From the repository root, on an image with its own CUDA JAX, carrying
# .gpu (the four MNIST IDX files in .gpu/mnist_idx; see gpu_check.sh for wheels):
#
#     OUT=/some/folder bash experiments/gpu_zoo.sh
#
# Runs `zoo.py train`, `ship` and `score` for MODEL, each under a time limit, and copies
# the weights and card (vae_jax/pretrained/MODEL.msgpack and .json) into OUT: put them in
# vae_jax/pretrained/ here, run the zoo's tests and commit them. The card names the GPU.
# OUT/<step>.log are the steps' consoles; OUT/summary.txt says how each ended.
# QUICK=1 rehearses it on a CPU: 2 epochs, k = 10, into a scratch copy of the package.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder for the logs}
DATA=${DATA:-.gpu/mnist_idx}
MODEL=${MODEL:-mnist_vamp_hierarchy}
WORK=${WORK:-/tmp/zoo}
source experiments/gpu_env.sh

if [ "${QUICK:-0}" = 1 ]; then
  train_limit=300 score_limit=300
  quick=(--epochs=2) scoring=(--nll_samples=10)
  # A rehearsal ships into a copy of the package, never into the checkout's.
  rm -rf /tmp/zoo_package && mkdir -p /tmp/zoo_package && cp -r vae_jax /tmp/zoo_package/
  export PYTHONPATH=/tmp/zoo_package:${PYTHONPATH:-}
  shipped=/tmp/zoo_package/vae_jax/pretrained
else
  train_limit=330 score_limit=180
  quick=() scoring=()
  shipped=vae_jax/pretrained
fi
zoo=(python3 experiments/zoo.py --workdir="$WORK" --data_dir="$DATA")
step train "$train_limit" "${zoo[@]}" train "$MODEL" "${quick[@]}" &&
  step ship 60 "${zoo[@]}" ship "$MODEL" &&
  step score "$score_limit" "${zoo[@]}" score "$MODEL" "${scoring[@]}" &&
  cp "$shipped/$MODEL.msgpack" "$shipped/$MODEL.json" "$OUT/"
cat "$OUT/summary.txt"
