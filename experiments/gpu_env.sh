# Sourced by the GPU scripts (gpu_check.sh, gpu_ladder.sh): runs the checkout's vae_jax with
# the image's own CUDA JAX, installs the wheels waiting beside DATA (packages the image
# lacks), and records the versions and the GPU in OUT/versions.txt. Needs OUT and DATA.
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
if compgen -G "$(dirname "$DATA")/*.whl" >/dev/null; then
  python3 -m pip install -q --no-deps --target /tmp/site "$(dirname "$DATA")"/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
mkdir -p "$OUT"
python3 -c 'import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__, jax.devices())' \
  >"$OUT/versions.txt" 2>&1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >>"$OUT/versions.txt" 2>&1
git log -1 --format='commit %h %cs' >>"$OUT/versions.txt" 2>&1

step() {  # step NAME SECONDS COMMAND...: runs COMMAND under a time limit, logs it
  # SIGTERM at the limit, SIGKILL KILL_AFTER_S later.
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout -k "${KILL_AFTER_S:-10}" "$limit" "$@" >"$OUT/$name.log" 2>&1
  local status=$?
  echo "$name: exit $status in $((SECONDS - start)) s (limit $limit s)" >>"$OUT/summary.txt"
  return $status
}
