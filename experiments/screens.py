"""Equal-time screens of a training recipe: which settings reach the lowest NLL soonest?

    python experiments/screens.py --data_dir=DATA_DIR
    python experiments/screens.py --runs=elbo_b256_1e-3,iwae5_b256_1e-3

Each screen trains the seed network (784-512-256, latent 64, prior N(0, I)) on all
60,000 dynamically binarized training images for about 5 minutes of the 2-core CPU
(its epochs are sized to that from measured epoch times), with the learning rate
decayed to 0 by a cosine over those epochs, then scores the last epoch's parameters:
-L_1 and -L_--nll_samples on the first --num_test binarized test images, the same images
and draws for every screen. That is cheaper than the `fast` table of tables.py (all
10,000 test images at k = 5000) by about 25x; the recipe it picks is then measured
there. The table goes to stdout and, a line per screen as JSON, to --out.
"""

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from vae_jax import bounds, data
from vae_jax.config import Config
from vae_jax.train import create_train_state, run_keys, train_epoch

_ELBO = Config(binarization="dynamic", lr_schedule="cosine")
_IWAE5 = dict(objective="iwae", num_samples=5, gradient_estimator="dreg")
# Epochs: about 300 s of training each, at the epoch times measured alone on the 2-core
# CPU (2026-12-04): ELBO 2.2 s at batch 256, 2.7 s at 128, 1.9 s at 512; IWAE k = 5
# with DReG 7.7 s at 256.
SCREENS = {
    "elbo_b128_1e-3": dataclasses.replace(_ELBO, batch_size=128, learning_rate=1e-3, epochs=112),
    "elbo_b256_5e-4": dataclasses.replace(_ELBO, batch_size=256, learning_rate=5e-4, epochs=140),
    "elbo_b256_1e-3": dataclasses.replace(_ELBO, batch_size=256, learning_rate=1e-3, epochs=140),
    "elbo_b256_1.5e-3": dataclasses.replace(
        _ELBO, batch_size=256, learning_rate=1.5e-3, epochs=140
    ),
    "elbo_b256_1e-3_warmup20": dataclasses.replace(
        _ELBO,
        batch_size=256,
        learning_rate=1e-3,
        epochs=140,
        beta_schedule="linear",
        warmup_epochs=20.0,
    ),
    "elbo_b512_1e-3": dataclasses.replace(_ELBO, batch_size=512, learning_rate=1e-3, epochs=155),
    "elbo_b512_2e-3": dataclasses.replace(_ELBO, batch_size=512, learning_rate=2e-3, epochs=150),
    "iwae5_b256_1e-3": dataclasses.replace(
        _ELBO, batch_size=256, learning_rate=1e-3, epochs=38, **_IWAE5
    ),
}

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS or IDX folder; unset: TFDS's, else cache.")
_RUNS = flags.DEFINE_list("runs", None, f"Which of {', '.join(SCREENS)} (default all).")
_EPOCHS = flags.DEFINE_integer("epochs", None, "Train every screen this many epochs instead.")
_NUM_TEST = flags.DEFINE_integer("num_test", 2000, "Score on the first N test images.")
_NLL_SAMPLES = flags.DEFINE_integer("nll_samples", 1000, "k of the NLL estimate -L_k.")
_OUT = flags.DEFINE_string("out", "runs/screens.jsonl", "Append each screen's result here.")


def screen(config: Config, train_images: jax.Array, test_images, nll_samples: int) -> dict:
    """Trains `config` with the compiled epoch of `vae_jax.train`; its time and bounds."""
    steps_per_epoch = -(-len(train_images) // config.batch_size)
    model = config.build_model((train_images.shape[-1],))
    keys = run_keys(config.seed)
    state = create_train_state(model, keys.init, config.build_optimizer(steps_per_epoch))
    objective = config.build_objective(steps_per_epoch)
    start = time.perf_counter()
    for epoch in range(config.epochs):
        state, metrics = train_epoch(
            state,
            train_images,
            jax.random.fold_in(keys.train, epoch),
            objective=objective,
            batch_size=config.batch_size,
            binarization=config.binarization,
        )
    jax.block_until_ready(metrics)
    result = {"training_min": (time.perf_counter() - start) / 60}
    for k in (1, nll_samples):
        neg_bound = bounds.estimate_negative_bound(
            model, state.params, test_images, jax.random.key(7), k
        )
        result[f"L_{k}"] = bounds.mean_and_stderr(neg_bound)[0]
    return result


def main(argv):
    del argv
    names = _RUNS.value or list(SCREENS)
    unknown = [name for name in names if name not in SCREENS]
    if unknown:
        raise app.UsageError(f"unknown --runs {','.join(unknown)}; pick from {', '.join(SCREENS)}")
    mnist = data.load_dataset("mnist", _DATA_DIR.value)
    train_images = jnp.asarray(mnist.train_images)
    test_images = data.eval_inputs(mnist.test_images[: _NUM_TEST.value], "dynamic")
    k = _NLL_SAMPLES.value
    print(f"| screen | epochs | training time | -L_1 | -L_{k} |\n| --- | --- | --- | --- | --- |")
    for name in names:
        config = SCREENS[name]
        if _EPOCHS.value:
            config = dataclasses.replace(config, epochs=_EPOCHS.value)
        result = {"screen": name, **screen(config, train_images, test_images, k)}
        print(
            f"| {name} | {config.epochs} | {result['training_min']:.1f} min | "
            f"{result['L_1']:.2f} | {result[f'L_{k}']:.2f} |",
            flush=True,
        )
        os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
        with open(_OUT.value, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    app.run(main)
