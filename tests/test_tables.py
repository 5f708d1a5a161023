"""experiments/tables.py end to end: the long-run table, in a short setting, on all of MNIST."""

import json
import pathlib
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


def test_long_table_scores_the_best_epoch_and_reuses_its_run(full_data, tmp_path):
    flags = [
        "long",
        "--runs=vae",
        "--nll_samples=5",
        f"--workdir={tmp_path}",
        f"--data_dir={full_data / 'mnist_idx'}",
    ]
    first = run_tables(*flags, "--epochs=2")
    assert first.returncode == 0, first.stderr
    table_dir, run_dir = tmp_path / "long", tmp_path / "long" / "vae"

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
