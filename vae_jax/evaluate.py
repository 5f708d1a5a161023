"""Evaluation: the test ELBO, importance-weighted bounds and NLL, latent diagnostics.

    python -m vae_jax.evaluate --workdir=W [--num_samples=1,50,5000]

loads a run's config and parameters, writes `eval.json` and the pictures to W and prints
a table. Every number is in nats per image and carries its standard error over images.

The importance-weighted bound (Burda et al. 2016) for k samples z_i ~ q(z|x) is
    L_k(x) = log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x),
with L_1 = ELBO <= L_k <= L_{k+1} <= log p(x) in expectation, so -L_5000 estimates the
negative log-likelihood. With the Bernoulli likelihood it is a likelihood of binary
images only: train and evaluate with `--binarization=dynamic` to quote it as an NLL.
"""

import dataclasses
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.losses import (
    ElboTerms,
    kl_per_latent,
    log_importance_weights,
    negative_elbo,
    reconstruction_nll,
)
from vae_jax.models import VAE, posterior

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2016: Cov_x(E_q[z_u|x]) above this is active.
EVAL_FILE = "eval.json"


@functools.partial(
    jax.jit, static_argnames=("model", "reconstruction", "recon_scale", "chunk_size")
)
def elbo_terms(
    model: VAE,
    params,
    images: jax.Array,
    key: jax.Array,
    beta: float | jax.Array = 1.0,
    *,
    reconstruction: str = "bernoulli",
    recon_scale: float = 0.1,
    chunk_size: int = 1000,
) -> ElboTerms:
    """Per-image terms of recon + beta * KL, each [num_images], one z per image.

    Image i draws its z from `fold_in(key, i)`, so the result does not depend on
    `chunk_size`, which only bounds memory (`chunk_size` images at a time).

    Args:
      model: the VAE (static: its shape is part of the compiled program).
      params: its parameters (the `params` collection).
      images: [num_images, pixels] in [0, 1].
      key: PRNG key of the z draws; keep it fixed to compare epochs and runs.
    """
    image_keys = jax.vmap(functools.partial(jax.random.fold_in, key))(jnp.arange(images.shape[0]))

    def one_image(args):
        image, image_key = args
        logits, mean, logvar = model.apply({"params": params}, image, image_key)
        return negative_elbo(logits, image, mean, logvar, beta, reconstruction, recon_scale)

    return jax.lax.map(one_image, (images, image_keys), batch_size=chunk_size)


# --- Importance-weighted bounds ------------------------------------------------------


def importance_weighted_bound(
    key: jax.Array,
    images: jax.Array,
    image_ids: jax.Array,
    encode_fn: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
    log_likelihood_fn: Callable[[jax.Array, jax.Array], jax.Array],
    num_samples: int,
    sample_chunk: int,
) -> jax.Array:
    """L_k per image for a Gaussian q(z|x) and prior N(0, I): [batch].

    Sample j of image i is drawn from `fold_in(fold_in(key, image_ids[i]), j)`, so the
    result depends neither on how images are batched nor on `sample_chunk`, which only
    bounds memory: `batch * sample_chunk` decoder rows at a time, accumulated with a
    running logsumexp.

    Args:
      key: PRNG key of the draws.
      images: [batch, pixels].
      image_ids: [batch] int, each image's index in its dataset (fixes its draws).
      encode_fn: images [batch, pixels] -> (mean, logvar) of q(z|x), each [batch, latent].
      log_likelihood_fn: (images [batch, pixels], z [batch, s, latent]) -> log p(x|z) [batch, s].
      num_samples: k.
      sample_chunk: samples per decoder call; k need not be a multiple.
    """
    mean, logvar = encode_fn(images)
    mean, logvar = mean[:, None, :], logvar[:, None, :]
    image_keys = jax.vmap(functools.partial(jax.random.fold_in, key))(image_ids)
    num_chunks = -(-num_samples // sample_chunk)

    def draw(image_key, sample_ids):
        keys = jax.vmap(functools.partial(jax.random.fold_in, image_key))(sample_ids)
        return jax.vmap(lambda k: jax.random.normal(k, mean.shape[-1:], mean.dtype))(keys)

    def add_chunk(log_sum, chunk):
        sample_ids = chunk * sample_chunk + jnp.arange(sample_chunk)
        eps = jax.vmap(draw, in_axes=(0, None))(image_keys, sample_ids)  # [batch, s, latent]
        z = mean + eps * jnp.exp(0.5 * logvar)
        log_weights = log_importance_weights(log_likelihood_fn(images, z), z, mean, logvar)
        log_weights = jnp.where(sample_ids < num_samples, log_weights, -jnp.inf)
        return jnp.logaddexp(log_sum, jax.nn.logsumexp(log_weights, axis=-1)), None

    initial = jnp.full(images.shape[:1], -jnp.inf, images.dtype)
    log_sum, _ = jax.lax.scan(add_chunk, initial, jnp.arange(num_chunks))
    return log_sum - math.log(num_samples)


@functools.partial(
    jax.jit,
    static_argnames=("model", "num_samples", "sample_chunk", "reconstruction", "recon_scale"),
)
def vae_importance_weighted_bound(
    model: VAE,
    params,
    images: jax.Array,
    image_ids: jax.Array,
    key: jax.Array,
    *,
    num_samples: int,
    sample_chunk: int,
    reconstruction: str = "bernoulli",
    recon_scale: float = 0.1,
) -> jax.Array:
    """`importance_weighted_bound` for a trained VAE: L_k per image, [batch]."""
    variables = {"params": params}

    def encode(x):
        return model.apply(variables, x, method=VAE.encode)

    def log_likelihood(x, z):
        logits = model.apply(variables, z, method=VAE.decode)
        return -reconstruction_nll(logits, x[:, None, :], reconstruction, recon_scale)

    return importance_weighted_bound(
        key, images, image_ids, encode, log_likelihood, num_samples, sample_chunk
    )


def estimate_bound(
    model: VAE,
    params,
    images: np.ndarray,
    key: jax.Array,
    num_samples: int,
    *,
    reconstruction: str = "bernoulli",
    recon_scale: float = 0.1,
    max_rows: int = 8192,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """L_k for every image, [num_images], decoding at most `max_rows` samples per call.

    Images go in equal chunks (the last one padded), so one program serves them all;
    `progress(done, total)` is called after each chunk.
    """
    sample_chunk = min(num_samples, max_rows)
    image_chunk = max(1, min(len(images), max_rows // sample_chunk))
    num_images = len(images)
    padded = -(-num_images // image_chunk) * image_chunk
    images = np.concatenate(
        [images, np.zeros((padded - num_images, images.shape[1]), images.dtype)]
    )
    bounds = []
    for start in range(0, padded, image_chunk):
        ids = jnp.arange(start, start + image_chunk)
        bounds.append(
            vae_importance_weighted_bound(
                model,
                params,
                jnp.asarray(images[start : start + image_chunk]),
                ids,
                key,
                num_samples=num_samples,
                sample_chunk=sample_chunk,
                reconstruction=reconstruction,
                recon_scale=recon_scale,
            )
        )
        if progress is not None:
            progress(min(start + image_chunk, num_images), num_images)
    return np.concatenate(jax.device_get(bounds))[:num_images]


# --- Latent diagnostics --------------------------------------------------------------


def kl_per_dimension(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """Average over images of each latent dimension's KL to N(0, 1): [batch, latent] -> [latent]."""
    return jnp.mean(kl_per_latent(mean, logvar), axis=0)


def unit_activity(mean: jax.Array) -> jax.Array:
    """Cov_x(E_q[z_u | x]) per dimension u: the variance over images of the posterior means."""
    return jnp.var(mean, axis=0)


def active_units(mean: jax.Array, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
    """Number of dimensions whose posterior mean varies across images (Burda et al. 2016)."""
    return int(jnp.sum(unit_activity(mean) > threshold))


# --- The command ---------------------------------------------------------------------


@dataclasses.dataclass
class TextProgress:
    """A one-line progress bar on stderr, redrawn at most every `interval_s` seconds."""

    label: str
    interval_s: float = 0.5
    _start: float = dataclasses.field(default_factory=time.perf_counter)
    _last: float = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if done < total and now - self._last < self.interval_s:
            return
        self._last = now
        filled = int(30 * done / total)
        elapsed = now - self._start
        eta = elapsed / done * (total - done) if done else 0.0
        sys.stderr.write(
            f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} images "
            f"{elapsed:.0f} s, {eta:.0f} s left "
        )
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def mean_and_stderr(values: np.ndarray) -> tuple[float, float]:
    """Mean over images and its standard error, std / sqrt(n)."""
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values)))


def evaluate_run(
    model: VAE,
    params,
    test_images: np.ndarray,
    key: jax.Array,
    sample_counts: Sequence[int] = (1, 50, 5000),
    *,
    reconstruction: str = "bernoulli",
    recon_scale: float = 0.1,
    show_progress: bool = True,
) -> dict:
    """Bounds -L_k for each k, the NLL estimate (largest k), the gap and diagnostics."""
    results: dict = {"num_images": len(test_images), "bounds": {}}
    for num_samples in sorted(sample_counts):
        start = time.perf_counter()
        progress = TextProgress(f"-L_{num_samples}") if show_progress else None
        bound = estimate_bound(
            model,
            params,
            test_images,
            jax.random.fold_in(key, num_samples),
            num_samples,
            reconstruction=reconstruction,
            recon_scale=recon_scale,
            progress=progress,
        )
        value, stderr = mean_and_stderr(-bound)
        results["bounds"][str(num_samples)] = {
            "neg_bound": value,
            "stderr": stderr,
            "time_s": time.perf_counter() - start,
        }
    largest = str(max(sample_counts))
    results["nll"] = results["bounds"][largest]["neg_bound"]
    results["nll_stderr"] = results["bounds"][largest]["stderr"]
    results["nll_num_samples"] = int(largest)
    if "1" in results["bounds"]:
        results["elbo_nll_gap"] = results["bounds"]["1"]["neg_bound"] - results["nll"]
    mean, logvar = posterior(model, params, jnp.asarray(test_images))
    results["kl_per_dim"] = [float(v) for v in kl_per_dimension(mean, logvar)]
    results["unit_activity"] = [float(v) for v in unit_activity(mean)]
    results["active_units"] = active_units(mean)
    results["latent"] = model.latent
    return results


def load_run(workdir: str, data_dir: str | None = None):
    """A finished run's (config, model, params, dataset); InputError if it is incomplete."""
    import flax

    from vae_jax import data
    from vae_jax.config import config_from_dict
    from vae_jax.errors import InputError
    from vae_jax.train import CONFIG_FILE, PARAMS_FILE, build_model

    paths = {name: os.path.join(workdir, name) for name in (CONFIG_FILE, PARAMS_FILE)}
    missing = [path for path in paths.values() if not os.path.isfile(path)]
    if missing:
        raise InputError(
            f"{workdir} is not a finished run (no {', '.join(map(os.path.basename, missing))}); "
            "train with python -m vae_jax.main --workdir=... first"
        )
    try:
        with open(paths[CONFIG_FILE]) as f:
            config = config_from_dict(json.load(f))
    except (ValueError, TypeError) as e:
        raise InputError(f"{paths[CONFIG_FILE]} is not a vae_jax config ({e})") from None
    # Only the test split is used: read one training image, not all of them.
    dataset = data.load_dataset(
        config.dataset, data_dir or config.data_dir, num_train=1, allow_download=config.download
    )
    model = build_model(config, dataset.image_shape)
    template = model.init(jax.random.key(0), jnp.zeros((1, model.image_size)), jax.random.key(0))[
        "params"
    ]
    try:
        with open(paths[PARAMS_FILE], "rb") as f:
            params = flax.serialization.from_bytes(template, f.read())
    except Exception as e:  # msgpack and flax raise several types for a bad file.
        raise InputError(f"cannot load {paths[PARAMS_FILE]} ({type(e).__name__}: {e})") from None
    return config, model, params, dataset


def write_pictures(
    model,
    params,
    test_images,
    test_labels,
    image_shape,
    activity,
    history,
    workdir,
    spherical: bool,
) -> list[str]:
    """The evaluation pictures, as PNG files in `workdir`; returns their names.

    `activity` is each latent dimension's `unit_activity`: traversals show the highest.
    """
    from vae_jax import plots

    def path(name):
        return os.path.join(workdir, name)

    written = ["interpolations.png", "traversals.png", "latent_scatter.png"]
    plots.save_interpolations(
        model,
        params,
        test_images[:8],
        test_images[8:16],
        image_shape,
        path("interpolations.png"),
        spherical=spherical,
    )
    most_active = [int(d) for d in np.argsort(-np.asarray(activity))[:8]]
    plots.save_traversals(
        model, params, test_images[0], most_active, image_shape, path("traversals.png")
    )
    plots.save_latent_scatter(
        model, params, test_images[:5000], test_labels[:5000], path("latent_scatter.png")
    )
    if model.latent == 2:
        plots.save_manifold(model, params, image_shape, path("manifold.png"))
        written.append("manifold.png")
    if history:
        plots.save_training_curves(history, path("training_curves.png"))
        written.append("training_curves.png")
    return written


def format_table(results: dict, protocol: dict) -> str:
    """The short table printed by the command."""
    lines = [
        f"{protocol['dataset']}, binarization={protocol['binarization']}, "
        f"{protocol['reconstruction']} likelihood; nats/image over {results['num_images']} "
        "test images (+- standard error)"
    ]
    for k, bound in results["bounds"].items():
        name = {"1": "-L_1 (ELBO)", str(results["nll_num_samples"]): f"-L_{k} (NLL)"}.get(
            k, f"-L_{k}"
        )
        lines.append(
            f"  {name:<16} {bound['neg_bound']:9.3f} +- {bound['stderr']:.3f}"
            f"   ({bound['time_s']:.1f} s)"
        )
    if "elbo_nll_gap" in results:
        lines.append(f"  {'ELBO - NLL gap':<16} {results['elbo_nll_gap']:9.3f}")
    lines.append(f"  {'active units':<16} {results['active_units']:>5} / {results['latent']}")
    return "\n".join(lines)


def main(argv) -> None:
    from absl import app, flags
    from absl import logging as absl_logging

    from vae_jax import data
    from vae_jax.errors import InputError
    from vae_jax.train import METRICS_FILE, read_metrics, run_keys

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)  # INFO logs off the console, as in main
    flag_values = flags.FLAGS
    try:
        sample_counts = sorted({int(k) for k in flag_values.num_samples})
        if not sample_counts or sample_counts[0] < 1:
            raise ValueError
    except ValueError:
        print(
            f"error: --num_samples must be positive integers, got "
            f"{','.join(flag_values.num_samples)}",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        config, model, params, dataset = load_run(flag_values.workdir, flag_values.data_dir)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    test_images = data.eval_inputs(dataset.test_images, config.binarization)
    test_labels = dataset.test_labels
    if flag_values.num_images:
        test_images = test_images[: flag_values.num_images]
        test_labels = test_labels[: flag_values.num_images]
    protocol = {
        "dataset": config.dataset,
        "binarization": config.binarization,
        "reconstruction": config.reconstruction,
        "true_likelihood": config.binarization != "none" or config.reconstruction != "bernoulli",
    }
    if not protocol["true_likelihood"]:
        print(
            "note: a Bernoulli likelihood of grayscale pixels is not a likelihood of the "
            "images; train with --binarization=dynamic for an NLL to quote",
            file=sys.stderr,
        )
    results = evaluate_run(
        model,
        params,
        test_images,
        run_keys(config.seed).eval,
        sample_counts,
        reconstruction=config.reconstruction,
        recon_scale=config.recon_scale,
    )
    results["protocol"] = protocol
    if results["active_units"] < results["latent"] / 2:
        results["collapse_warning"] = True
        print(
            f"warning: only {results['active_units']} of {results['latent']} latent units are "
            "active: most have collapsed to the prior",
            file=sys.stderr,
        )
    history = read_metrics(os.path.join(flag_values.workdir, METRICS_FILE))
    results["pictures"] = write_pictures(
        model,
        params,
        test_images,
        test_labels,
        dataset.image_shape,
        results["unit_activity"],
        history,
        flag_values.workdir,
        flag_values.spherical,
    )
    with open(os.path.join(flag_values.workdir, EVAL_FILE), "w") as f:
        json.dump(results, f, indent=2)
    print(format_table(results, protocol))
    print(f"wrote {EVAL_FILE} and {', '.join(results['pictures'])} to {flag_values.workdir}")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string(
        "workdir", None, "A finished run's folder (from vae_jax.main).", required=True
    )
    flags.DEFINE_list(
        "num_samples",
        ["1", "50", "5000"],
        "Values of k for -L_k; the largest gives the NLL estimate.",
    )
    flags.DEFINE_string("data_dir", None, "Override the run's --data_dir.")
    flags.DEFINE_integer("num_images", 0, "Evaluate the first N test images only; 0 = all.")
    flags.DEFINE_bool("spherical", False, "Interpolate spherically (slerp) instead of linearly.")
    app.run(main)
