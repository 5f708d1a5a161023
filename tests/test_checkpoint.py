"""Runs that survive: exact resume after SIGKILL or SIGTERM, the divergence guard, and
clear refusals of corrupt checkpoints and mismatched flags (files left untouched)."""

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

# A run of a few seconds: big enough to be killed mid-epoch, small enough for CI.
QUICK = ["--num_train=2048", "--batch_size=128", "--latent=8", "--hidden_sizes=256,128"]
LOSS_KEYS = ("epoch", "train_loss", "train_recon", "train_kl", "test_loss", "test_recon", "test_kl")


def command(idx_dir, workdir, *flags):
    return [
        sys.executable,
        "-m",
        "vae_jax.main",
        f"--data_dir={idx_dir}",
        f"--workdir={workdir}",
        *QUICK,
        *flags,
    ]


def run(idx_dir, workdir, *flags):
    return subprocess.run(
        command(idx_dir, workdir, *flags), capture_output=True, text=True, timeout=300
    )


def losses(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: json.loads(line)[k] for k in LOSS_KEYS} for line in lines]


def assert_same_run(workdir, uninterrupted):
    """Same per-epoch losses and the same final parameters, bit for bit."""
    assert losses(workdir) == losses(uninterrupted)
    assert (workdir / "params.msgpack").read_bytes() == (
        uninterrupted / "params.msgpack"
    ).read_bytes()


def tree_hashes(folder):
    return {
        os.path.relpath(os.path.join(root, name), folder): hashlib.sha256(
            open(os.path.join(root, name), "rb").read()
        ).hexdigest()
        for root, _, names in os.walk(folder)
        for name in names
    }


def wait_for_epochs(workdir, count, process, timeout_s=120):
    deadline = time.time() + timeout_s
    metrics = workdir / "metrics.jsonl"
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"no {count} epochs in time; exit {process.poll()}")


@pytest.fixture(scope="module")
def uninterrupted(idx_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("whole") / "w"
    result = run(idx_dir, workdir, "--epochs=8")
    assert result.returncode == 0, result.stderr
    return workdir


@pytest.mark.slow
def test_sigkill_then_resume_is_identical(idx_dir, tmp_path, uninterrupted):
    workdir = tmp_path / "w"
    for kill_after in (2, 5):  # killed twice, at different points
        process = subprocess.Popen(
            command(idx_dir, workdir, "--epochs=8"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_epochs(workdir, kill_after, process)
        time.sleep(0.05)  # into the next epoch, or its checkpoint
        process.send_signal(signal.SIGKILL)
        process.wait()
    result = run(idx_dir, workdir, "--epochs=8")
    assert result.returncode == 0, result.stderr
    assert "resuming from the checkpoint of epoch" in result.stdout
    assert_same_run(workdir, uninterrupted)
    # The newest checkpoints only.
    assert sorted(os.listdir(workdir / "checkpoints")) == ["6", "7", "8"]


@pytest.mark.slow
def test_ema_resumes_after_sigkill_to_the_same_numbers(idx_dir, tmp_path, uninterrupted):
    ema = ("--epochs=5", "--ema_decay=0.99")
    whole = tmp_path / "whole"
    assert run(idx_dir, whole, *ema).returncode == 0
    workdir = tmp_path / "w"
    process = subprocess.Popen(
        command(idx_dir, workdir, *ema), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_epochs(workdir, 2, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    result = run(idx_dir, workdir, *ema)
    assert result.returncode == 0, result.stderr
    assert "resuming from the checkpoint of epoch" in result.stdout
    # The test losses are those of the average, and params.msgpack is the average: both
    # would differ if the restored average were not the saved one.
    assert_same_run(workdir, whole)
    # The average is what was scored: the same run's epochs without it (the first 5 of
    # the uninterrupted 8, at a constant learning rate) score otherwise.
    without = losses(uninterrupted)[:5]
    assert [r["train_loss"] for r in without] == [r["train_loss"] for r in losses(whole)]
    assert without[-1]["test_loss"] != losses(whole)[-1]["test_loss"]


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_resumes(idx_dir, tmp_path, uninterrupted):
    workdir = tmp_path / "w"
    process = subprocess.Popen(
        command(idx_dir, workdir, "--epochs=8", "--checkpoint_every=100"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Sent once the run has compiled, before or during its first epoch (epochs take a
    # fraction of a second here, so waiting for one to be logged could miss them all).
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith("compiled in"):
            break
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    stdout = "".join(seen) + stdout
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "SIGTERM: finishing this epoch" in stderr and "run the same command" in stdout
    assert len(losses(workdir)) == 1
    # Only the stop wrote a checkpoint (--checkpoint_every=100).
    assert os.listdir(workdir / "checkpoints") == ["1"]
    result = run(idx_dir, workdir, "--epochs=8")
    assert result.returncode == 0, result.stderr
    assert_same_run(workdir, uninterrupted)


@pytest.mark.slow
def test_divergence_stops_and_keeps_the_last_good_checkpoint(idx_dir, tmp_path):
    workdir = tmp_path / "w"
    assert run(idx_dir, workdir, "--epochs=2").returncode == 0
    before = tree_hashes(workdir / "checkpoints")
    result = run(idx_dir, workdir, "--epochs=4", "--learning_rate=1e12")
    assert result.returncode == 2
    assert "training diverged" in result.stderr and "at epoch 3, step" in result.stderr
    assert "the checkpoint of epoch 2 is kept" in result.stderr
    assert "Traceback" not in result.stderr
    assert tree_hashes(workdir / "checkpoints") == before
    # The kept checkpoint resumes, at a sane learning rate.
    result = run(idx_dir, workdir, "--epochs=3")
    assert result.returncode == 0, result.stderr
    assert [r["epoch"] for r in losses(workdir)] == [1, 2, 3]


@pytest.mark.slow
def test_skip_batch_trains_through(idx_dir, tmp_path):
    workdir = tmp_path / "w"
    result = run(idx_dir, workdir, "--epochs=1", "--learning_rate=1e12", "--on_nan=skip_batch")
    assert result.returncode == 0, result.stderr
    record = json.loads((workdir / "metrics.jsonl").read_text())
    assert record["skipped_batches"] > 0


@pytest.mark.slow
def test_corrupt_checkpoint_and_mismatched_flags_are_refused(idx_dir, tmp_path):
    workdir = tmp_path / "w"
    assert run(idx_dir, workdir, "--epochs=2").returncode == 0
    before = tree_hashes(workdir)

    result = run(idx_dir, workdir, "--epochs=3", "--latent=16", "--binarization=dynamic")
    assert result.returncode == 2
    assert "--latent (checkpoint 8, now 16)" in result.stderr
    assert "--binarization (checkpoint none, now dynamic)" in result.stderr
    assert tree_hashes(workdir) == before

    # Truncate the largest file of the newest checkpoint.
    newest = workdir / "checkpoints" / "2"
    victim = max((p for p in newest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    before = tree_hashes(workdir)
    result = run(idx_dir, workdir, "--epochs=3")
    assert result.returncode == 2
    assert (
        "does not match its manifest" in result.stderr and "corrupt or truncated" in result.stderr
    )
    assert result.stderr.strip().count("\n") == 0
    assert tree_hashes(workdir) == before


def test_a_run_killed_before_its_first_checkpoint_starts_again(idx_dir, tmp_path):
    workdir = tmp_path / "w"
    workdir.mkdir()
    flags = ["--epochs=1"]  # QUICK's programs: the module's other runs have compiled them
    # What such a run leaves: its config, an empty metrics file, no checkpoint.
    assert run(idx_dir, workdir, *flags).returncode == 0
    first = losses(workdir)
    for name in ("checkpoints", "params.msgpack"):
        path = workdir / name
        subprocess.run(["rm", "-rf", str(path)], check=True)
    (workdir / "metrics.jsonl").write_text("")
    result = run(idx_dir, workdir, *flags)
    assert result.returncode == 0, result.stderr
    assert losses(workdir) == first
    # Another run's folder is still refused.
    result = run(idx_dir, workdir, *flags, "--latent=3", "--overwrite=false")
    assert result.returncode == 2 and "holds a checkpoint of another run" in result.stderr


def test_a_save_cut_short_before_its_manifest_is_redone(idx_dir, tmp_path, uninterrupted):
    # SIGKILL between orbax finishing a step folder and our manifest: that epoch is redone.
    workdir = tmp_path / "w"
    assert run(idx_dir, workdir, "--epochs=3").returncode == 0
    (workdir / "checkpoints" / "3" / "vae_jax_sha256.json").unlink()
    result = run(idx_dir, workdir, "--epochs=8")
    assert result.returncode == 0, result.stderr
    assert "resuming from the checkpoint of epoch 2" in result.stdout
    assert_same_run(workdir, uninterrupted)


@contextlib.contextmanager
def small_filesystem(folder, size_mb):
    """A tmpfs of `size_mb` at `folder` (root only: skipped with the reason otherwise)."""
    folder.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"needs a tmpfs mount, which this machine refuses: {mount.stderr.strip()}")
    try:
        yield lambda new_size_mb: subprocess.run(
            ["mount", "-o", f"remount,size={new_size_mb}m", str(folder)], check=True
        )
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_same_command_resumes(idx_dir, tmp_path):
    # The reference network's checkpoint (parameters and Adam's moments) is 12 MB, so a
    # 24 MB filesystem fills at the third. The grids go to TensorBoard every epoch.
    with small_filesystem(tmp_path / "small", 24) as resize:
        workdir = tmp_path / "small" / "w"
        args = [
            sys.executable, "-m", "vae_jax.main", f"--data_dir={idx_dir}",
            f"--workdir={workdir}", "--num_train=1024", "--epochs=6",
            "--tensorboard_images_every=1",
        ]  # fmt: skip
        full = subprocess.run(args, capture_output=True, text=True, timeout=300)
        assert full.returncode == 1
        assert full.stderr.count("\n") == 1 and "Traceback" not in full.stderr, full.stderr
        assert "No space left on device" in full.stderr
        assert "is intact" in full.stderr
        names = os.listdir(workdir / "checkpoints")
        assert not [name for name in names if "tmp" in name], names
        resize(200)
        again = subprocess.run(args, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        lines = (workdir / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4, 5, 6]


def test_a_failed_checkpoint_write_leaves_no_temporary_folder(tmp_path, monkeypatch):
    import jax
    import optax

    from vae_jax import checkpoint
    from vae_jax.config import Config
    from vae_jax.errors import WriteError
    from vae_jax.models import VAE
    from vae_jax.train import create_train_state

    state = create_train_state(VAE(latent=2, hidden_sizes=(8,)), jax.random.key(0), optax.sgd(0.1))
    manager = checkpoint.manager(str(tmp_path))
    checkpoint.save(manager, 1, state, jax.random.key(1), Config())

    def fail_midway(epoch, args, force):  # as orbax does on a full disk
        (tmp_path / "checkpoints" / f"{epoch}.orbax-checkpoint-tmp").mkdir()
        raise ValueError("RESOURCE_EXHAUSTED: Error writing ...: No space left on device")

    monkeypatch.setattr(manager, "save", fail_midway)
    with pytest.raises(WriteError, match=r"epoch 2 .*No space left on device.*epoch 1 is intact"):
        checkpoint.save(manager, 2, state, jax.random.key(1), Config())
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]
    assert checkpoint.complete_epochs(str(tmp_path)) == [1]
