"""experiments/tables.py end to end: the long-run table, in a short setting, on all of MNIST."""

import json
import os
import pathlib
import signal
import subprocess
import sys

import matplotlib.image

from vae_jax.evaluate import EVAL_FILE
from vae_jax.workdir import METRICS_FILE, read_metrics

REPO = pathlib.Path(__file__).resolve().parent.parent


def run_tables(*flags):
    return subprocess.run(
        [sys.executable, str(REPO / "experiments" / "tables.py"), *flags],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


def stop_in_first_epoch(*flags) -> subprocess.CompletedProcess:
    """Runs tables.py and sends it SIGTERM once its training has compiled."""
    command = [sys.executable, str(REPO / "experiments" / "tables.py"), *flags]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env
    ) as process:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("compiled in"):
                process.send_signal(signal.SIGTERM)
                break
        stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(command, process.returncode, "".join(lines) + stdout, stderr)


def test_long_table_scores_the_best_epoch_and_reuses_its_run(full_data, tmp_path):
    flags = [
        "long",
        "--runs=vae",
        "--nll_samples=5",
        f"--workdir={tmp_path}",
        f"--data_dir={full_data / 'mnist_idx'}",
    ]
    table_dir, run_dir = tmp_path / "long", tmp_path / "long" / "vae"
    # SIGTERM (a time limit's) stops the run after its first epoch with a checkpoint ...
    stopped = stop_in_first_epoch(*flags, "--epochs=2")
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"{run_dir} stopped with a checkpoint; the same command resumes it"
    )
    assert [r["epoch"] for r in read_metrics(str(run_dir / METRICS_FILE))] == [1]
    assert not (table_dir / "table.md").exists()
    # ... and the same command resumes it, then scores it.
    first = run_tables(*flags, "--epochs=2")
    assert first.returncode == 0, first.stderr
    assert "resuming from the checkpoint of epoch 1" in first.stdout

    history = read_metrics(str(run_dir / METRICS_FILE))
    best = min(history, key=lambda record: record["valid_elbo"])
    results = json.loads((run_dir / EVAL_FILE).read_text())
    assert results["protocol"]["params"] == "best"  # chosen on held-out training images
    assert results["num_images"] == 10_000
    assert sorted(results["bounds"], key=int) == ["1", "5", "50"]
    rows = [line for line in (table_dir / "table.md").read_text().splitlines() if "VAE" in line]
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert cells[1:4] == ["2", str(best["epoch"]), f"{best['valid_elbo']:.2f}"]
    nll = results["bounds"]["50"]  # the largest k is the NLL estimate
    assert cells[6] == f"**{nll['neg_bound']:.2f} ± {nll['stderr']:.2f}**"
    assert rows[0] in first.stdout
    assert matplotlib.image.imread(table_dir / "curves.png").ndim == 3

    # Run again: the finished run and its eval.json are reused, not redone.
    outputs = {path: path.read_bytes() for path in (run_dir / METRICS_FILE, run_dir / EVAL_FILE)}
    again = run_tables(*flags, "--epochs=2")
    assert again.returncode == 0, again.stderr
    assert rows[0] in again.stdout
    assert {path: path.read_bytes() for path in outputs} == outputs

    # Other settings in the same folder are refused in one line, not silently reused.
    other = run_tables(*flags, "--epochs=3")
    assert other.returncode == 2
    assert other.stderr.strip().splitlines() == [
        f"error: {run_dir} holds a finished run with other epochs; delete it to retrain, "
        "or name another --workdir"
    ]
