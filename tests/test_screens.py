"""experiments/screens.py end to end, one short epoch on the repository's slice of MNIST."""

import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_a_screen_trains_scores_and_prints_what_it_writes(idx_dir, tmp_path):
    out = tmp_path / "screens.jsonl"
    flags = [
        "--runs=elbo_b256_1e-3",
        "--epochs=1",
        "--num_test=64",
        "--nll_samples=20",
        f"--data_dir={idx_dir}",
        f"--out={out}",
    ]
    done = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "screens.py"), *flags],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    (result,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert result["screen"] == "elbo_b256_1e-3"
    # More importance samples give a tighter bound: -L_20 below the ELBO's -L_1.
    assert 0 < result["L_20"] < result["L_1"]
    row = f"| elbo_b256_1e-3 | 1 | {result['training_min']:.1f} min | "
    row += f"{result['L_1']:.2f} | {result['L_20']:.2f} |"
    assert row in done.stdout.splitlines()

    unknown = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "screens.py"), "--runs=nope"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert unknown.returncode != 0
    assert "unknown --runs nope" in unknown.stderr
