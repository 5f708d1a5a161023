"""Data parallelism: 8 devices, and 2 processes, train the same model as 1 device.

Each run is a subprocess, since the device count is fixed when JAX starts
(XLA_FLAGS=--xla_force_host_platform_device_count=N splits the CPU into N devices).

Why the tolerance is not zero: with N devices each computes the gradient sum of its
256/N images and an all-reduce adds the N partial sums, while one device adds all 256
in one order; float32 addition is not associative, so the sums differ in their last
bits. The random draws do not differ (jax_threefry_partitionable: a sharded draw has
the same values as an unsharded one). Adam divides by sqrt(v), which magnifies these
last-bit differences for weights whose gradient is almost zero (e.g. pixels that are
almost never lit), so a few weights drift by a few learning-rate steps while the
losses agree closely. Hence: losses to rtol 1e-6, parameters to 1e-3 in relative L2
norm per array. Measured for these runs (8 steps): 1.1e-7 and 1.4e-5. The drift grows
with training (3 epochs of 4,096 images: 4e-5 and 2e-3), so the runs here are short.
"""

import json
import os
import socket
import subprocess
import sys

import flax
import jax
import numpy as np
import pytest

RUN = ["--num_train=1024", "--batch_size=256", "--epochs=2", "--checkpoint_every=100"]
LOSSES = ("train_loss", "train_recon", "train_kl", "test_loss", "test_recon", "test_kl")


def _environment(num_devices: int) -> dict[str, str]:
    return {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={num_devices}",
        "JAX_PLATFORMS": "cpu",
    }


def _main(workdir, data_dir, num_devices, *flags, **popen):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vae_jax.main",
            *RUN,
            f"--data_dir={data_dir}",
            f"--workdir={workdir}",
            *flags,
        ],
        env=_environment(num_devices),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def _finish(process) -> str:
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    return stdout


def _read_run(workdir):
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    params = flax.serialization.msgpack_restore((workdir / "params.msgpack").read_bytes())
    return records, params


def _assert_same_training(run, reference):
    (records, params), (expected_records, expected_params) = run, reference
    assert [r["epoch"] for r in records] == [r["epoch"] for r in expected_records] == [1, 2]
    for record, expected in zip(records, expected_records, strict=True):
        for name in LOSSES:
            np.testing.assert_allclose(record[name], expected[name], rtol=1e-6, err_msg=name)

    def assert_close(leaf, expected):
        assert np.linalg.norm(leaf - expected) <= 1e-3 * np.linalg.norm(expected)

    jax.tree.map(assert_close, params, expected_params)  # Also checks the trees match.


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory, idx_dir):
    workdir = tmp_path_factory.mktemp("one") / "w"
    stdout = _finish(_main(workdir, idx_dir, 1))
    assert "devices: 1 x cpu in 1 process(es), 256 images per device" in stdout
    return _read_run(workdir)


@pytest.mark.slow
def test_eight_devices_train_like_one(tmp_path, idx_dir, one_device_run):
    stdout = _finish(_main(tmp_path / "w", idx_dir, 8))
    assert "devices: 8 x cpu in 1 process(es), 32 images per device" in stdout
    _assert_same_training(_read_run(tmp_path / "w"), one_device_run)


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path, idx_dir, one_device_run):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    processes = [
        _main(
            tmp_path / "w",
            idx_dir,
            1,
            "--distributed",
            f"--coordinator_address=localhost:{port}",
            "--num_processes=2",
            f"--process_id={rank}",
        )
        for rank in range(2)
    ]
    stdouts = [_finish(process) for process in processes]
    assert "devices: 2 x cpu in 2 process(es), 128 images per device" in stdouts[0]
    assert "epoch   2/2" in stdouts[0]
    # Process 1 neither prints nor writes: process 0 does. (Gloo's C++ logs its connection.)
    assert [line for line in stdouts[1].splitlines() if not line.startswith("[Gloo]")] == []
    _assert_same_training(_read_run(tmp_path / "w"), one_device_run)
    assert sorted(os.listdir(tmp_path / "w" / "checkpoints")) == ["2"]


def test_batch_size_must_divide_over_the_devices(tmp_path, idx_dir):
    process = _main(tmp_path / "w", idx_dir, 8, "--batch_size=100")
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 2
    assert stderr.strip().splitlines() == [
        "error: --batch_size=100 does not divide evenly over the 8 devices (cpu); "
        "use a multiple of 8, e.g. 96 or 104"
    ]
    assert not (tmp_path / "w").exists()


def _python_on_devices(num_devices: int, code: str) -> list[str]:
    """Runs `code` in a Python with `num_devices` CPU devices; its stdout's words."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=_environment(num_devices),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


SPLIT_CHECK = """
import jax, jax.numpy as jnp, optax
from vae_jax import parallel
from vae_jax.models import VAE
from vae_jax.train import create_train_state, train_epoch
mesh = parallel.data_mesh()
state = create_train_state(VAE(), jax.random.key(0), optax.adam(1e-3))
state = parallel.put_replicated(state, mesh)
images = parallel.put_replicated(jnp.zeros((1024, 784), jnp.uint8), mesh)
key = parallel.put_replicated(jax.random.key(1), mesh)
hlo = train_epoch.lower(state, images, key, 1.0, batch_size=256, mesh=mesh).compile().as_text()
print("all-reduce" in hlo, "f32[32,784]" in hlo, "f32[256,784]" in hlo)
"""


def test_each_device_computes_its_slice_of_the_batch():
    """The compiled epoch works on 32-image slices of each 256-image batch, then all-reduces."""
    assert _python_on_devices(8, SPLIT_CHECK) == ["True", "True", "False"]


SHARDED_EVAL = """
import jax, jax.numpy as jnp, numpy as np
from vae_jax import bounds, parallel
from vae_jax.models import VAE
mesh = parallel.data_mesh()
model = VAE(latent=4, hidden_sizes=(32,))
params = model.init(jax.random.key(0), jnp.zeros((1, 784)), jax.random.key(1))["params"]
images = jax.random.bernoulli(jax.random.key(2), 0.3, (37, 784)).astype(jnp.float32)
key = jax.random.key(3)
alone = bounds.elbo_terms(model, params, images, key)
split = bounds.elbo_terms(model, parallel.put_replicated(params, mesh), images, key, mesh=mesh)
np.testing.assert_allclose(split.loss, alone.loss, rtol=1e-6)
host = np.asarray(images)
alone = bounds.estimate_negative_bound(model, params, host, key, 30, max_rows=64)
split = bounds.estimate_negative_bound(
    model, parallel.put_replicated(params, mesh), host, key, 30, max_rows=64, mesh=mesh,
    progress=True,
)
np.testing.assert_allclose(split, alone, rtol=1e-6)
print(mesh.devices.size, split.shape)
"""


def test_evaluation_over_eight_devices_gives_the_numbers_of_one():
    """37 images (not a multiple of 8) over 8 devices, in chunks: the same bounds."""
    assert _python_on_devices(8, SHARDED_EVAL) == ["8", "(37,)"]
