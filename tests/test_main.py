"""The command line end to end, in a subprocess, on a small slice of real MNIST."""

import contextlib
import gc
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import flax
import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from vae_jax import bounds, data
from vae_jax.models import VAE
from vae_jax.train import run_keys
from vae_jax.workdir import LOCK_FILE, OUTPUTS

QUICK = ["--num_train=600", "--batch_size=128", "--epochs=2", "--latent=4", "--hidden_sizes=32,16"]


def run_main(*flags, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "vae_jax.main", *flags],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, idx_dir):
    workdir = tmp_path_factory.mktemp("run") / "w"
    result = run_main(*QUICK, f"--data_dir={idx_dir}", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr
    return workdir, result


@pytest.mark.slow
def test_writes_every_output(finished_run, idx_dir):
    workdir, result = finished_run
    assert sorted(os.listdir(workdir)) == sorted(
        (*OUTPUTS, "checkpoints", "tensorboard", LOCK_FILE)
    )
    assert (workdir / LOCK_FILE).read_text() == ""  # released
    assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "2"]
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for record in records:
        for key in ("train_objective", "train_loss", "grad_norm", "test_elbo", "test_loss"):
            assert np.isfinite(record[key]), key
        assert record["learning_rate"] == 1e-3 and record["beta"] == 1.0
    assert "compile_time_s" in records[0] and "compile_time_s" not in records[1]
    assert records[1]["test_elbo"] < records[0]["test_elbo"]  # it learns
    # One progress line per epoch.
    assert sum(line.startswith("epoch ") for line in result.stdout.splitlines()) == 2

    config = json.loads((workdir / "config.json").read_text())
    assert config["num_train"] == 600 and config["hidden_sizes"] == [32, 16]
    assert config["beta"] == 1.0 and config["seed"] == 0 and config["workdir"] == str(workdir)

    model = VAE(latent=4, hidden_sizes=(32, 16))
    template = model.init(jax.random.key(0), jnp.zeros((1, 784)), jax.random.key(0))["params"]
    params = flax.serialization.from_bytes(template, (workdir / "params.msgpack").read_bytes())
    assert jax.tree.structure(params) == jax.tree.structure(template)
    # The last test ELBO is that of the saved parameters, on the run's fixed eval draws.
    test_images = data.load_dataset("mnist", str(idx_dir), num_train=1).test_images
    terms = bounds.elbo_terms(
        model, params, data.eval_inputs(test_images, "none"), run_keys(0).eval
    )
    assert records[-1]["test_elbo"] == pytest.approx(float(np.mean(terms.loss)), rel=1e-6)

    # 8x8 grid and 2x16 grid of 28-pixel digits with 2-pixel gaps, upscaled 3 times.
    assert matplotlib.image.imread(workdir / "samples.png").shape[:2] == (3 * 242, 3 * 242)
    assert matplotlib.image.imread(workdir / "reconstructions.png").shape[:2] == (3 * 62, 3 * 482)
    assert (workdir / "loss_curves.png").stat().st_size > 10_000


def _modification_times(folder):
    return {
        path: os.stat(os.path.join(path, name)).st_mtime_ns
        for path, _, names in os.walk(folder)
        for name in names
    }


@pytest.mark.slow
def test_a_finished_run_is_answered_from_its_config_and_left_untouched(finished_run, idx_dir):
    workdir, _ = finished_run
    before = _modification_times(workdir)
    again = run_main(*QUICK, f"--data_dir={idx_dir}", f"--workdir={workdir}")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines() == [
        f"finished: epoch 2 of 2 in {workdir}; --epochs=N to train longer, --overwrite to "
        "start again"
    ]
    # A flag that changes the model: refused in one line, before the data are read.
    flags = [f for f in QUICK if not f.startswith("--latent")]
    refused = run_main(*flags, "--latent=8", "--data_dir=/nonexistent", f"--workdir={workdir}")
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "--latent (checkpoint 4, now 8)" in refused.stderr
    assert _modification_times(workdir) == before


@pytest.mark.slow
def test_same_flags_same_numbers(finished_run, idx_dir, tmp_path):
    workdir, _ = finished_run
    again = tmp_path / "again"
    assert run_main(*QUICK, f"--data_dir={idx_dir}", f"--workdir={again}").returncode == 0

    def losses(folder):
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        return [
            {k: v for k, v in json.loads(line).items() if "time" not in k and "per_s" not in k}
            for line in lines
        ]

    assert losses(workdir) == losses(again)
    assert (workdir / "params.msgpack").read_bytes() == (again / "params.msgpack").read_bytes()


@pytest.mark.slow
def test_idx_folder_and_dynamic_binarization(idx_dir, tmp_path):
    result = run_main(
        *QUICK,
        f"--data_dir={idx_dir}",
        f"--workdir={tmp_path / 'w'}",
        "--binarization=dynamic",
        "--epochs=1",
    )
    assert result.returncode == 0, result.stderr
    assert "IDX files in" in result.stdout


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--beta=-1"], "--beta must be >= 0"),
        (["--latent=0"], "--latent must be one or more sizes of at least 1"),
        (
            ["--num_train=100", "--batch_size=256"],
            "--batch_size=256 is larger than --num_train=100",
        ),
        (["--hidden_sizes=512,x"], "--hidden_sizes must be comma-separated integers"),
        (["--reconstruction=poisson"], "value should be one of"),
        (["--nosuchflag"], "Unknown command line flag 'nosuchflag'"),
        (["--batch_size=7.5"], "flag --batch_size=7.5: invalid literal for int()"),
        (["--epochs", "--latent=4"], "flag --epochs=--latent=4: invalid literal for int()"),
        (["stray"], "unexpected arguments ['stray']"),
    ],
)
def test_bad_flags_exit_2_with_one_line(flags, message, idx_dir, tmp_path):
    # absl's own parse errors included: one line and status 2, like every user mistake.
    result = run_main(*flags, f"--data_dir={idx_dir}", f"--workdir={tmp_path / 'w'}")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert message in result.stderr
    assert not (tmp_path / "w").exists()


def test_an_unknown_tfds_dataset_is_one_line(tfds_dir, tmp_path):
    result = run_main("--dataset=not_a_dataset", f"--data_dir={tfds_dir}", f"--workdir={tmp_path}")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--dataset=not_a_dataset is not a TFDS dataset name" in result.stderr


def test_unwritable_workdir(idx_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = run_main(f"--data_dir={idx_dir}", f"--workdir={blocker / 'w'}")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "is not a writable folder" in result.stderr


def test_missing_data_is_one_line(tmp_path):
    data_dir = tmp_path / "nothing_here"
    result = run_main(f"--data_dir={data_dir}", f"--workdir={tmp_path / 'w'}", "--nodownload")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert f"t10k-labels-idx1-ubyte.gz missing in {data_dir} and downloads are off" in (
        result.stderr
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither folder was made


def test_an_earlier_run_is_kept(idx_dir, tmp_path):
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "metrics.jsonl").write_text('{"epoch": 1}\n')
    before = hashlib.sha256((workdir / "metrics.jsonl").read_bytes()).hexdigest()
    result = run_main(f"--data_dir={idx_dir}", f"--workdir={workdir}")
    assert result.returncode == 2
    assert "already holds a run" in result.stderr and "--overwrite" in result.stderr
    assert hashlib.sha256((workdir / "metrics.jsonl").read_bytes()).hexdigest() == before
    assert os.listdir(workdir) == ["metrics.jsonl"]


def test_an_interrupt_that_a_callback_swallowed_still_stops_before_training(capsys):
    from vae_jax.cli import InterruptBeforeTraining
    from vae_jax.errors import InputError

    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as stopped, InterruptBeforeTraining():
        # Dropped, as Python drops it when it lands in a garbage-collection callback.
        with contextlib.suppress(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        raise InputError("the download went on and failed")
    assert stopped.value.code == 130
    assert capsys.readouterr().err.startswith("interrupted before training began")
    assert signal.getsignal(signal.SIGINT) is previous  # restored


def test_an_interrupt_landing_in_a_gc_callback_is_delivered_again(capsys):
    from vae_jax.cli import InterruptBeforeTraining

    def interrupt_once(phase, info):
        del info
        if phase == "start" and not fired:
            fired.append(True)
            signal.raise_signal(signal.SIGINT)  # handled, and dropped, inside callbacks

    fired, reports = [], []
    start = time.perf_counter()
    try:
        with (
            pytest.MonkeyPatch.context() as patch,
            pytest.raises(SystemExit) as stopped,
        ):
            patch.setattr(sys, "unraisablehook", reports.append)  # Python's reports
            with InterruptBeforeTraining():
                # Armed inside the block: a collection before it would spend the signal.
                gc.callbacks.append(interrupt_once)
                gc.collect()
                time.sleep(5)  # The signal comes again here, and stops the block at once.
    finally:
        if interrupt_once in gc.callbacks:
            gc.callbacks.remove(interrupt_once)
    assert stopped.value.code == 130 and fired
    assert time.perf_counter() - start < 2
    # One line: the dropped KeyboardInterrupt's "Exception ignored in ..." stays unsaid.
    assert capsys.readouterr().err.startswith("interrupted before training began")
    assert reports == []
