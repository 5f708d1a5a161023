#!/usr/bin/env bash
# ./run.sh [FLAGS...]   create .venv, install vae_jax, train and evaluate (20 epochs of MNIST)
# ./run.sh test [ARGS]  install with the test extra, lint, run the test suite on every core
#                       (ARGS go to pytest; -n 0 runs it in one process)
set -euo pipefail
cd "$(dirname "$0")"

venv=${VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
python="$venv/bin/python"

# Use the workspace's shared copy of MNIST when there is one beside this checkout: as
# TFDS's data dir for a run, and as the full data of the tests that need all of it.
# Without it a run downloads MNIST into ~/.cache/vae_jax (once), and those tests skip.
shared="$(cd .. && pwd)/shared/data"
if [ -d "$shared/tensorflow_datasets" ]; then
  export TFDS_DATA_DIR="${TFDS_DATA_DIR:-$shared/tensorflow_datasets}"
  export VAE_JAX_SHARED_DATA="${VAE_JAX_SHARED_DATA:-$shared}"
fi

if [ "${1:-}" = "test" ]; then
  shift
  "$python" -m pip install --quiet --disable-pip-version-check -e ".[test]"
  "$python" -m ruff check vae_jax tests experiments
  # One worker more than the cores this process may use: the end-to-end tests spend part
  # of their time starting processes and waiting on them (docs/testing.md).
  workers=$("$python" -c 'import os; print(len(os.sched_getaffinity(0)) + 1 if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1) + 1)')
  "$python" -m pytest -q -n "$workers" --dist worksteal --durations=10 "$@"
else
  "$python" -m pip install --quiet --disable-pip-version-check -e ".[all]"
  "$python" -m vae_jax.main --workdir="runs/$(date +%Y%m%d-%H%M%S)" "$@"
fi
