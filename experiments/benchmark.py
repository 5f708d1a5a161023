"""Training throughput on this machine's devices: images/s, epoch time, FLOP/s, % of peak.

    python experiments/benchmark.py --data_dir=DATA_DIR
    python experiments/benchmark.py --synthetic --dtype=bfloat16   # GPU / TPU

Times `train_epoch` (one compiled program per epoch, data parallel over every device)
after compilation, the same code path as `python -m vae_jax.main`. GFLOP/s counts the
matrix multiplies of the forward and backward passes (2 FLOPs per multiply-add), the
work that bounds an MLP VAE. The peak is measured, not quoted: a chain of large square
matmuls in the same dtype on every device, so "% of peak" is of what this device
really reaches on matmuls.
"""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from vae_jax import data, parallel
from vae_jax.config import DTYPES
from vae_jax.models import VAE
from vae_jax.train import create_train_state, train_epoch

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS or IDX folder; unset: TFDS's, else cache.")
_SYNTHETIC = flags.DEFINE_bool(
    "synthetic", False, "Use 60,000 random 28x28 images instead of MNIST (same speed)."
)
_BATCH_SIZES = flags.DEFINE_list(
    "batch_sizes", ["256", "1024", "2048", "4096", "8192"], "Global batch sizes to time."
)
_DTYPE = flags.DEFINE_enum("dtype", "float32", DTYPES, "Matrix-multiply dtype.")
_EPOCHS = flags.DEFINE_integer("epochs", 5, "Timed epochs per batch size (after a warm-up).")
_LATENT = flags.DEFINE_integer("latent", 64, "Latent dimension.")
_HIDDEN = flags.DEFINE_list("hidden_sizes", ["512", "256"], "Encoder widths.")


def matmul_flops_per_image(image_size: int, hidden_sizes, latent: int) -> int:
    """FLOPs of the matmuls of one training image: forward, then backward.

    Backward multiplies twice per layer (weight and input gradients) except for the
    input gradient of the first encoder layer, which nothing needs.
    """
    encoder = [image_size, *hidden_sizes, 2 * latent]
    decoder = [latent, *reversed(hidden_sizes), image_size]
    layers = list(zip(encoder[:-1], encoder[1:], strict=True)) + list(
        zip(decoder[:-1], decoder[1:], strict=True)
    )
    forward = sum(n_in * n_out for n_in, n_out in layers)
    first_layer = encoder[0] * encoder[1]
    return 2 * (forward + forward + (forward - first_layer))


def peak_matmul_gflops(mesh, dtype, size: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of all devices together on chains of size^3 matmuls in `dtype`.

    Each device multiplies its own chain (a dependent one, so XLA can't hoist it); the
    chain is timed three times and the fastest counts.
    """
    num_devices = mesh.devices.size
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(parallel.DATA_AXIS))
    a = jax.device_put(jnp.full((num_devices, size, size), 1e-3, dtype), sharding)

    @jax.jit
    def chain(a):
        step = lambda _, x: jnp.einsum("dij,djk->dik", x, a) * 0.5  # noqa: E731
        return jax.lax.fori_loop(0, repeats, step, a)

    chain(a).block_until_ready()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        chain(a).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * size**3 * repeats * num_devices / min(times) / 1e9


def main(argv):
    del argv
    if _SYNTHETIC.value:
        train_images = np.random.default_rng(0).integers(0, 256, (60000, 784), np.uint8)
        image_size = 784
    else:
        dataset = data.load_dataset("mnist", _DATA_DIR.value)
        train_images, image_size = dataset.train_images, dataset.train_images.shape[1]
    hidden_sizes = tuple(int(w) for w in _HIDDEN.value)
    dtype = jnp.dtype(_DTYPE.value)
    model = VAE(_LATENT.value, hidden_sizes, image_size, dtype)
    mesh = parallel.data_mesh()
    images = parallel.put_replicated(train_images, mesh)
    flops_per_image = matmul_flops_per_image(image_size, hidden_sizes, _LATENT.value)
    device = jax.devices()[0]
    peak_gflops = peak_matmul_gflops(mesh, dtype)
    print(
        f"devices: {mesh.devices.size} x {device.device_kind} ({device.platform}), "
        f"jax {jax.__version__}; measured peak {_DTYPE.value} matmul {peak_gflops:.0f} GFLOP/s"
    )
    key = jax.random.key(0)
    for batch_size in (int(b) for b in _BATCH_SIZES.value):
        parallel.check_batch_size(batch_size, mesh)
        state = parallel.put_replicated(create_train_state(model, key, optax.adam(1e-3)), mesh)
        epoch_key = parallel.put_replicated(key, mesh)
        compile_start = time.perf_counter()
        run_epoch = train_epoch.lower(
            state, images, epoch_key, 1.0, batch_size=batch_size, mesh=mesh
        ).compile()
        compile_time_s = time.perf_counter() - compile_start
        state, _ = run_epoch(state, images, epoch_key, 1.0)  # Warm-up epoch.
        jax.block_until_ready(state)
        times = []
        for epoch in range(_EPOCHS.value):
            start = time.perf_counter()
            state, metrics = run_epoch(state, images, jax.random.fold_in(epoch_key, epoch), 1.0)
            jax.block_until_ready((state, metrics))
            times.append(time.perf_counter() - start)
        epoch_time_s = float(np.median(times))
        gflops = flops_per_image * len(train_images) / epoch_time_s / 1e9
        print(
            json.dumps(
                {
                    "device": device.device_kind,
                    "num_devices": mesh.devices.size,
                    "dtype": _DTYPE.value,
                    "batch_size": batch_size,
                    "epoch_time_s": round(epoch_time_s, 4),
                    "epoch_time_s_min": round(min(times), 4),
                    "images_per_s": round(len(train_images) / epoch_time_s),
                    "matmul_gflop_per_s": round(gflops, 1),
                    "fraction_of_peak": round(gflops / peak_gflops, 3),
                    "compile_time_s": round(compile_time_s, 2),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    app.run(main)
