#!/usr/bin/env bash
# ./run.sh [FLAGS...]   create .venv, install vae_jax, train and evaluate (20 epochs of MNIST)
# ./run.sh test [ARGS]  install with the test extra, lint, run the test suite (ARGS go to pytest)
set -euo pipefail
cd "$(dirname "$0")"

venv=${VENV:-.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
python="$venv/bin/python"

# The data are never downloaded: use the workspace's shared copy when there is one.
shared_tfds="$(cd .. && pwd)/shared/data/tensorflow_datasets"
if [ -z "${TFDS_DATA_DIR:-}" ] && [ -d "$shared_tfds" ]; then
  export TFDS_DATA_DIR="$shared_tfds"
fi

if [ "${1:-}" = "test" ]; then
  shift
  "$python" -m pip install --quiet --disable-pip-version-check -e ".[test]"
  "$python" -m ruff check vae_jax tests experiments
  "$python" -m pytest -q "$@"
else
  "$python" -m pip install --quiet --disable-pip-version-check -e .
  "$python" -m vae_jax.main --workdir="runs/$(date +%Y%m%d-%H%M%S)" "$@"
fi
