#!/usr/bin/env bash
# The ladder's GPU rows (tables.py: vamp_gpu, vamp_two_layers_gpu, conv_vamp_two_layers) on a
# lent GPU, one 10-minute command at a time (docs/results.md, "On a GPU"). From the
# repository root, on an image with its own CUDA JAX, carrying .gpu (see gpu_check.sh):
#
#     OUT=/some/folder RUNS=vamp_gpu bash experiments/gpu_ladder.sh
#
# Runs `tables.py ladder --runs=$RUNS` for at most BUDGET_S seconds (default 480): at the
# limit SIGTERM stops the run in training after its epoch, with a checkpoint, or stops its
# scoring, keeping the parts that finished (eval_partial.npz). A row that finished leaves
# OUT/table.md and OUT/curves.png. A row cut short leaves what resumes it,
# OUT/ladder.tar.part-*: copy those into CARRY (default .gpu/ladder) and carry .gpu in the
# next command, which resumes where this one stopped; empty CARRY once the row is done.
# Only the newest checkpoint travels: about 47 MiB for vamp_two_layers_gpu, within the
# 64 MiB a command may carry. The ConvHVAE's training state (79 MiB) is not, so its
# training must finish inside one command; its scoring (32 MiB to carry) may span several.
# OUT/ladder.log is the table's console; OUT/summary.txt says how it ended.
# QUICK=1 rehearses the script on a CPU: 3 epochs a row, k = 2 for the NLL.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder for the logs}
DATA=${DATA:-.gpu/mnist_idx}
RUNS=${RUNS:?name the ladder rows, e.g. RUNS=vamp_gpu}
CARRY=${CARRY:-.gpu/ladder}
BUDGET_S=${BUDGET_S:-480}
WORK=${WORK:-/tmp/tables}
source experiments/gpu_env.sh

if [ "${QUICK:-0}" = 1 ]; then
  quick=(--epochs=3 --nll_samples=2)
else
  quick=()
fi
mkdir -p "$WORK"
rm -f "$WORK/ladder/table.md"  # an earlier command's, on a machine still warm
if compgen -G "$CARRY/ladder.tar.part-*" >/dev/null; then
  cat "$CARRY"/ladder.tar.part-* | tar -C "$WORK" -xf - && echo "restored from $CARRY" >>"$OUT/summary.txt"
fi
# SIGTERM at the budget; SIGKILL 60 s later if the epoch under way and its checkpoint
# have not ended by then (scoring stops at once, keeping its finished parts).
KILL_AFTER_S=60 step ladder "$BUDGET_S" python3 experiments/tables.py ladder --data_dir="$DATA" \
  --workdir="$WORK" --runs="$RUNS" "${quick[@]}"
if [ -f "$WORK/ladder/table.md" ]; then
  cp "$WORK/ladder/table.md" "$WORK/ladder/curves.png" "$OUT/"
fi

# What resumes each row: its settings, records and parameters, and the newest checkpoint of
# a run still training. Pictures and TensorBoard files stay behind.
(
  cd "$WORK" || exit
  for run in ladder/*/; do
    run=${run%/}
    [ -f "$run/config.json" ] || continue
    find "$run" -maxdepth 1 -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.msgpack' -o -name '*.npz' \)
    if [ ! -f "$run/params.msgpack" ] && [ -d "$run/checkpoints" ]; then
      newest=$(find "$run/checkpoints" -mindepth 1 -maxdepth 1 -name '[0-9]*' -printf '%f\n' | sort -n | tail -1)
      [ -n "$newest" ] && echo "$run/checkpoints/$newest"
    fi
  done
) >/tmp/ladder_files
if [ -s /tmp/ladder_files ] && [ ! -f "$WORK/ladder/table.md" ]; then
  tar -C "$WORK" -cf - -T /tmp/ladder_files | split -b 15M -d - "$OUT/ladder.tar.part-"
  echo "carry: $(du -ch "$OUT"/ladder.tar.part-* | tail -1 | cut -f1) in $(ls "$OUT"/ladder.tar.part-* | wc -l) parts" >>"$OUT/summary.txt"
fi
cat "$OUT/summary.txt"
