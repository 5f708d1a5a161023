"""A beta sweep trained as one vmapped program: rate-distortion curve and samples per beta.

    python experiments/beta_sweep.py --data_dir=DATA_DIR

Trains S = len(--betas) models at once (`vae_jax.sweep`: vmap over parameters, Adam
state, beta and seed inside one jitted epoch), evaluates each on the test set (negative
ELBO with one z per image, split into reconstruction and KL, beta = 1), and writes to
--outdir: rate_distortion.png, samples.png (a grid per beta, side by side) and
results.json; it prints a Markdown table. With --time_separate it also times S separate
runs of the same models (the plain `train_epoch`, one after another) over
--timing_epochs epochs, and prints the speed-up of the sweep.
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from vae_jax import data, plots
from vae_jax.bounds import elbo_terms
from vae_jax.models import VAE, sample_images
from vae_jax.sweep import create_sweep_state, train_sweep_epoch
from vae_jax.train import create_train_state, run_keys, train_epoch

_BETAS = flags.DEFINE_list("betas", ["0.25", "0.5", "1", "2", "4", "8"], "KL weights.")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "One seed for all models, or one per beta.")
_EPOCHS = flags.DEFINE_integer("epochs", 20, "Training epochs.")
_LATENT = flags.DEFINE_integer("latent", 64, "Latent dimension.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Images per step.")
_BINARIZATION = flags.DEFINE_enum("binarization", "none", ["none", "dynamic"], "Pixels.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS or IDX folder; unset: TFDS's, else cache.")
_OUTDIR = flags.DEFINE_string("outdir", "runs/beta_sweep", "Where pictures and JSON go.")
_TIME_SEPARATE = flags.DEFINE_bool("time_separate", True, "Also time S separate runs.")
_TIMING_EPOCHS = flags.DEFINE_integer("timing_epochs", 3, "Epochs per timing.")


def time_epochs(run_epoch, state, num_epochs):
    """Median seconds per epoch of `run_epoch(state, epoch) -> (state, metrics)`."""
    times = []
    for epoch in range(1, num_epochs + 1):
        start = time.perf_counter()
        state, metrics = run_epoch(state, epoch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), state


def main(argv):
    del argv
    betas = [float(b) for b in _BETAS.value]
    seeds = [int(s) for s in _SEEDS.value]
    seeds = seeds * len(betas) if len(seeds) == 1 else seeds
    if len(seeds) != len(betas):
        raise app.UsageError(f"--seeds needs 1 or {len(betas)} values, got {len(seeds)}")
    dataset = data.load_dataset("mnist", _DATA_DIR.value)
    model = VAE(_LATENT.value)
    train_images = jax.device_put(dataset.train_images)
    test_images = jnp.asarray(data.eval_inputs(dataset.test_images, _BINARIZATION.value))
    options = dict(batch_size=_BATCH_SIZE.value, binarization=_BINARIZATION.value)
    os.makedirs(_OUTDIR.value, exist_ok=True)

    states, train_keys = create_sweep_state(model, seeds, optax.adam(1e-3))
    beta_array = jnp.asarray(betas, jnp.float32)
    start = time.perf_counter()
    for epoch in range(1, _EPOCHS.value + 1):
        states, metrics = train_sweep_epoch(
            states, train_images, train_keys, epoch, beta_array, **options
        )
        losses = ", ".join(f"{loss:.1f}" for loss in np.asarray(metrics["loss"]))
        print(f"epoch {epoch}: train loss per beta {losses}", flush=True)
    train_time_s = time.perf_counter() - start

    results = {"betas": betas, "seeds": seeds, "epochs": _EPOCHS.value, "models": []}
    sample_sets = []
    for s, (beta, seed) in enumerate(zip(betas, seeds, strict=True)):
        params = jax.tree.map(lambda leaf, s=s: leaf[s], states.params)
        keys = run_keys(seed)
        terms = elbo_terms(model, params, test_images, keys.eval, 1.0)
        results["models"].append(
            {
                "beta": beta,
                "seed": seed,
                "test_recon": float(jnp.mean(terms.recon)),
                "test_kl": float(jnp.mean(terms.kl)),
                "test_neg_elbo": float(jnp.mean(terms.loss)),
            }
        )
        sample_sets.append(np.asarray(sample_images(model, params, keys.sample, 16)))
    results["sweep_train_time_s"] = train_time_s

    if _TIME_SEPARATE.value:
        # The same S models, trained one at a time, against the S at once; compilation
        # (once per program) is left out of both per-epoch figures and reported apart.
        compile_start = time.perf_counter()
        sweep_states, _ = create_sweep_state(model, seeds, optax.adam(1e-3))
        sweep_states, _ = train_sweep_epoch(
            sweep_states, train_images, train_keys, 0, beta_array, **options
        )
        jax.block_until_ready(sweep_states)
        sweep_first_s = time.perf_counter() - compile_start
        sweep_epoch_s, _ = time_epochs(
            lambda st, e: train_sweep_epoch(st, train_images, train_keys, e, beta_array, **options),
            sweep_states,
            _TIMING_EPOCHS.value,
        )
        separate_epoch_s, separate_first_s = 0.0, 0.0
        for beta, seed in zip(betas, seeds, strict=True):
            keys = run_keys(seed)
            start = time.perf_counter()
            state, _ = train_epoch(
                create_train_state(model, keys.init, optax.adam(1e-3)),
                train_images,
                keys.train,
                beta,
                **options,
            )
            jax.block_until_ready(state)
            separate_first_s += time.perf_counter() - start
            epoch_s, _ = time_epochs(
                lambda st, e, k=keys.train, b=beta: train_epoch(
                    st, train_images, jax.random.fold_in(k, e), b, **options
                ),
                state,
                _TIMING_EPOCHS.value,
            )
            separate_epoch_s += epoch_s
        results["timing"] = {
            "num_models": len(betas),
            "sweep_epoch_s": sweep_epoch_s,
            "separate_epoch_s": separate_epoch_s,
            "speedup": separate_epoch_s / sweep_epoch_s,
            "sweep_first_epoch_with_compile_s": sweep_first_s,
            "separate_first_epochs_with_compile_s": separate_first_s,
            "device": jax.devices()[0].device_kind,
        }

    plots.save_rate_distortion(
        [m["test_kl"] for m in results["models"]],
        [m["test_recon"] for m in results["models"]],
        [f"beta={b:g}" for b in betas],
        os.path.join(_OUTDIR.value, "rate_distortion.png"),
    )
    plots.save_grids_side_by_side(
        sample_sets,
        [f"beta={b:g}" for b in betas],
        dataset.image_shape,
        os.path.join(_OUTDIR.value, "samples.png"),
    )
    with open(os.path.join(_OUTDIR.value, "results.json"), "w") as f:
        json.dump(results, f, indent=2)

    print(f"\n{len(betas)} models, {_EPOCHS.value} epochs, one vmapped program; test set:")
    print("| beta | rate: KL | distortion: recon | negative ELBO (beta = 1) |")
    print("| --- | --- | --- | --- |")
    for m in results["models"]:
        print(
            f"| {m['beta']:g} | {m['test_kl']:.2f} | {m['test_recon']:.2f} "
            f"| {m['test_neg_elbo']:.2f} |"
        )
    if "timing" in results:
        t = results["timing"]
        print(
            f"\nspeed ({t['device']}): {t['num_models']} models at once {t['sweep_epoch_s']:.2f} s "
            f"an epoch; one after another {t['separate_epoch_s']:.2f} s: "
            f"{t['speedup']:.2f}x. First epoch with compilation: "
            f"{t['sweep_first_epoch_with_compile_s']:.1f} s vs "
            f"{t['separate_first_epochs_with_compile_s']:.1f} s."
        )
    print(f"wrote rate_distortion.png, samples.png, results.json to {_OUTDIR.value}")


if __name__ == "__main__":
    app.run(main)
