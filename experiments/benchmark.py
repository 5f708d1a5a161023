"""Training throughput on the current device: images/s, epoch time, achieved GFLOP/s.

    python experiments/benchmark.py --data_dir=../shared/data/tensorflow_datasets
    python experiments/benchmark.py --synthetic --batch_sizes=256,1024,4096

Times `train_epoch` (one compiled program per epoch) after compilation, the same code
path as `python -m vae_jax.main`. GFLOP/s counts the matrix multiplies of the forward
and backward passes (2 FLOPs per multiply-add), the work that bounds an MLP VAE; the
peak line is a large square matmul on the same device, for scale.
"""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from vae_jax import data
from vae_jax.models import VAE
from vae_jax.train import create_train_state, train_epoch

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir or IDX folder with MNIST.")
_SYNTHETIC = flags.DEFINE_bool(
    "synthetic", False, "Use 60,000 random 28x28 images instead of MNIST (same speed)."
)
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["256"], "Batch sizes to time.")
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


def peak_matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of a chain of size^3 float32 matmuls (a dependent chain, so XLA can't hoist it)."""
    a = jnp.full((size, size), 1e-3, jnp.float32)

    @jax.jit
    def chain(a):
        return jax.lax.fori_loop(0, repeats, lambda _, x: x @ a * 0.5, a)

    chain(a).block_until_ready()
    start = time.perf_counter()
    chain(a).block_until_ready()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def main(argv):
    del argv
    if _SYNTHETIC.value:
        train_images = np.random.default_rng(0).integers(0, 256, (60000, 784), np.uint8)
        image_size = 784
    else:
        dataset = data.load_dataset("mnist", _DATA_DIR.value)
        train_images, image_size = dataset.train_images, dataset.train_images.shape[1]
    hidden_sizes = tuple(int(w) for w in _HIDDEN.value)
    model = VAE(_LATENT.value, hidden_sizes, image_size)
    images = jax.device_put(train_images)
    flops_per_image = matmul_flops_per_image(image_size, hidden_sizes, _LATENT.value)
    device = jax.devices()[0]
    print(
        f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}; "
        f"peak float32 matmul {peak_matmul_gflops():.0f} GFLOP/s"
    )
    key = jax.random.key(0)
    for batch_size in (int(b) for b in _BATCH_SIZES.value):
        state = create_train_state(model, key, 1e-3)
        compile_start = time.perf_counter()
        run_epoch = train_epoch.lower(state, images, key, 1.0, batch_size=batch_size).compile()
        compile_time_s = time.perf_counter() - compile_start
        state, _ = run_epoch(state, images, key, 1.0)  # Warm-up epoch.
        jax.block_until_ready(state)
        times = []
        for epoch in range(_EPOCHS.value):
            start = time.perf_counter()
            state, metrics = run_epoch(state, images, jax.random.fold_in(key, epoch), 1.0)
            jax.block_until_ready((state, metrics))
            times.append(time.perf_counter() - start)
        epoch_time_s = float(np.median(times))
        print(
            json.dumps(
                {
                    "device": device.device_kind,
                    "batch_size": batch_size,
                    "epoch_time_s": round(epoch_time_s, 4),
                    "epoch_time_s_min": round(min(times), 4),
                    "images_per_s": round(len(train_images) / epoch_time_s),
                    "matmul_gflop_per_s": round(
                        flops_per_image * len(train_images) / epoch_time_s / 1e9, 1
                    ),
                    "compile_time_s": round(compile_time_s, 2),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    app.run(main)
