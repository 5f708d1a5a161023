"""Scoring a trained VAE: the test ELBO, importance-weighted bounds, latent diagnostics.

Pure functions; `python -m vae_jax.evaluate` is the command around them. Every number
is per image, in nats.

The importance-weighted bound (Burda et al. 2016) for k samples z_i ~ q(z|x) is
    L_k(x) = log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x),
with L_1 = ELBO <= L_k <= L_{k+1} <= log p(x) in expectation, so -L_5000 estimates the
negative log-likelihood. Every function here returns the negated bound -L_k (an upper
bound on -log p(x), in nats, the sign of a loss), as do `losses.negative_iwae_bound`,
`elbo_terms(...).loss`, the console and eval.json; their names say so. With the
Bernoulli likelihood it is a likelihood of binary images only: train and evaluate with
`--binarization=dynamic` to quote it as an NLL.

Every number here is computed with float32 matmuls at HIGHEST precision on every
backend (`vae_jax.precision.scoring`), whatever the device's default: TF32 on a recent
NVIDIA GPU would cost a likelihood nats. The images pass the input boundary of
`vae_jax.inputs` first: uint8 or floats in [0, 1], [batch, pixels], checked values.

Over a mesh, the images are split over its devices, and each device runs one compiled
loop over its share. Image i draws its z from `fold_in(key, i)` (sample j of it from
`fold_in(fold_in(key, i), j)`), so no number depends on the device count or the chunk
sizes, which only bound memory.
"""

import contextlib
import functools
import itertools
import math
import types
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from vae_jax import parallel, precision
from vae_jax.inputs import to_unit_interval
from vae_jax.losses import ElboTerms, kl_per_latent, log_importance_weights
from vae_jax.models import model_images
from vae_jax.objective import Objective

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2016: Cov_x(E_q[z_u|x]) above this is active.


def _map_images(fn, mesh: Mesh | None, max_chunk: int, images: jax.Array, image_ids: jax.Array):
    """`fn(images [chunk, pixels], ids [chunk]) -> pytree of [chunk, ...]` over all images.

    Traced inside a jitted function. With a mesh, each device loops over its share of the
    images in equal chunks of at most `max_chunk` (padded by fewer than one image per
    chunk), and the results are gathered onto every device. Returns the pytree with
    leading axis [num_images].
    """
    num_devices = 1 if mesh is None else mesh.devices.size
    num_images = images.shape[0]
    per_device = -(-num_images // num_devices)
    num_chunks = -(-per_device // max_chunk)
    chunk = -(-per_device // num_chunks)
    padding = num_chunks * chunk * num_devices - num_images
    images = jnp.pad(images, ((0, padding), (0, 0)))
    image_ids = jnp.pad(image_ids, (0, padding))  # Padded rows: computed, then dropped.

    def local(images, image_ids):
        chunks = (images.reshape(-1, chunk, images.shape[-1]), image_ids.reshape(-1, chunk))
        outputs = jax.lax.map(lambda args: fn(*args), chunks)
        outputs = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), outputs)
        if mesh is None:
            return outputs
        return jax.tree.map(
            lambda x: jax.lax.all_gather(x, parallel.DATA_AXIS, tiled=True), outputs
        )

    if mesh is not None:
        split = PartitionSpec(parallel.DATA_AXIS)
        # check_vma=False: all_gather replicates the outputs, which shard_map cannot infer.
        local = jax.shard_map(
            local, mesh=mesh, in_specs=(split, split), out_specs=PartitionSpec(), check_vma=False
        )
    return jax.tree.map(lambda x: x[:num_images], local(images, image_ids))


@functools.partial(jax.jit, static_argnames=("model", "objective", "mesh", "chunk_size"))
def jitted_elbo_terms(
    model,
    params,
    images: jax.Array,
    key: jax.Array,
    beta: float | jax.Array = 1.0,
    *,
    objective: Objective = Objective(),
    mesh: Mesh | None = None,
    chunk_size: int = 1000,
) -> ElboTerms:
    """`elbo_terms` as one jitted program, on images that passed the boundary (uint8 or
    float32 [num_images, pixels]); for a run that compiles it ahead of time."""

    def chunk_terms(chunk_images, image_ids):
        image_keys = jax.vmap(functools.partial(jax.random.fold_in, key))(image_ids)

        def one_image(image, image_key):  # a batch of one: its own key
            terms, _ = objective.elbo(params, model.apply, image[None], image_key, beta)
            return jax.tree.map(lambda term: term[0], terms)

        return jax.vmap(one_image)(chunk_images, image_keys)

    with precision.scoring():
        image_ids = jnp.arange(images.shape[0])
        return _map_images(chunk_terms, mesh, chunk_size, to_unit_interval(images), image_ids)


def elbo_terms(
    model,
    params,
    images,
    key: jax.Array,
    beta: float | jax.Array = 1.0,
    *,
    objective: Objective = Objective(),
    mesh: Mesh | None = None,
    chunk_size: int = 1000,
) -> ElboTerms:
    """Per-image terms of recon + beta * KL, each [num_images], one z per image.

    Image i draws its z from `fold_in(key, i)`, so the result does not depend on `mesh`
    or `chunk_size`, which only bounds memory (`chunk_size` images per device at a time).
    `loss` is -L_1 at beta = 1: these are negated bounds, in nats, scored with the
    model's likelihood at full float32 precision.

    Args:
      model: the latent-variable model (static: its shape is part of the compiled program).
      params: its parameters (the `params` collection).
      images: [num_images, pixels] (or [num_images, H, W, C]), uint8 pixels or floats in
        [0, 1]; checked by `vae_jax.inputs.check_images`.
      key: PRNG key of the z draws; keep it fixed to compare epochs and runs.
      objective: only its deprecated `reconstruction` is used (its bound and schedule
        are not).
      mesh: split the images over its devices; None computes where the inputs are.

    Raises:
      ValueError: images the model cannot score (see `vae_jax.inputs`).
    """
    images = model_images(model, images, likelihood=objective.likelihood(model))
    if not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    return jitted_elbo_terms(
        model, params, images, key, beta, objective=objective, mesh=mesh, chunk_size=chunk_size
    )


# --- Importance-weighted bounds ------------------------------------------------------


def negative_importance_weighted_bound(
    key: jax.Array,
    images: jax.Array,
    image_ids: jax.Array,
    log_weights_fn: Callable[[jax.Array, tuple[jax.Array, ...]], jax.Array],
    latent_sizes: tuple[int, ...],
    num_samples: int,
    sample_chunk: int,
) -> jax.Array:
    """-L_k per image, [batch], for any model whose draws are a function of normal noise.

    Sample j of image i uses the noise `normal(fold_in(fold_in(key, image_ids[i]), j),
    [sum(latent_sizes)])`, split by layer, so the result depends neither on how images
    are batched nor on `sample_chunk`, which only bounds memory: `batch * sample_chunk`
    draws at a time, accumulated with a running logsumexp.

    Args:
      key: PRNG key of the draws.
      images: [batch, pixels].
      image_ids: [batch] int, each image's index in its dataset (fixes its draws).
      log_weights_fn: (images [batch, pixels], noise: one [s, batch, size] per layer)
        -> log w = log p(x, z) - log q(z|x) of the draws z that the noise gives, [s, batch].
      latent_sizes: the size of each layer's noise.
      num_samples: k.
      sample_chunk: samples per call of `log_weights_fn`; k need not be a multiple.
    """
    image_keys = jax.vmap(functools.partial(jax.random.fold_in, key))(image_ids)
    num_chunks = -(-num_samples // sample_chunk)
    boundaries = list(itertools.accumulate(latent_sizes))[:-1]

    def draw(image_key, sample_ids):
        keys = jax.vmap(functools.partial(jax.random.fold_in, image_key))(sample_ids)
        return jax.vmap(lambda k: jax.random.normal(k, (sum(latent_sizes),)))(keys)

    def add_chunk(log_sum, chunk):
        sample_ids = chunk * sample_chunk + jnp.arange(sample_chunk)
        noise = jax.vmap(draw, in_axes=(0, None), out_axes=1)(image_keys, sample_ids)
        noise = tuple(jnp.split(noise, boundaries, axis=-1)) if boundaries else (noise,)
        log_weights = log_weights_fn(images, noise)  # [s, batch]
        log_weights = jnp.where(sample_ids[:, None] < num_samples, log_weights, -jnp.inf)
        return jnp.logaddexp(log_sum, jax.nn.logsumexp(log_weights, axis=0)), None

    initial = jnp.full(images.shape[:1], -jnp.inf, jnp.float32)
    log_sum, _ = jax.lax.scan(add_chunk, initial, jnp.arange(num_chunks))
    return math.log(num_samples) - log_sum


@functools.partial(
    jax.jit,
    static_argnames=(
        "model",
        "num_samples",
        "sample_chunk",
        "objective",
        "mesh",
        "images_per_step",
    ),
)
def model_negative_bound(
    model,
    params,
    images: jax.Array,
    image_ids: jax.Array,
    key: jax.Array,
    *,
    num_samples: int,
    sample_chunk: int,
    objective: Objective = Objective(),
    mesh: Mesh | None = None,
    images_per_step: int | None = None,
) -> jax.Array:
    """-L_k per image of a trained model with its likelihood: [batch], one jitted program.

    `images` passed the boundary (`estimate_negative_bound` checks them): uint8 pixels
    or float32 in [0, 1]. With a mesh, the images are split over its devices; each
    device loops over its share `images_per_step` images at a time (None: all at once).
    """
    with precision.scoring():
        return _model_negative_bound(
            model,
            params,
            to_unit_interval(images),
            image_ids,
            key,
            num_samples,
            sample_chunk,
            objective,
            mesh,
            images_per_step,
        )


def _model_negative_bound(
    model, params, images, image_ids, key, num_samples, sample_chunk, objective, mesh, per_step
):
    variables = {"params": params}

    def log_weights(x, noise):
        draw = model.apply(variables, x, noise, method="posterior")
        recon, log_prior = objective.scores(variables, model.apply, x, draw.z)
        return log_importance_weights(-recon, log_prior, draw.log_q)

    def chunk_bound(chunk_images, chunk_ids):
        return negative_importance_weighted_bound(
            key,
            chunk_images,
            chunk_ids,
            log_weights,
            model.latent_sizes,
            num_samples,
            sample_chunk,
        )

    max_chunk = per_step or images.shape[0]
    return _map_images(chunk_bound, mesh, max_chunk, images, image_ids)


def estimate_negative_bound(
    model,
    params,
    images: np.ndarray,
    key: jax.Array,
    num_samples: int,
    *,
    objective: Objective = Objective(),
    mesh: Mesh | None = None,
    max_rows: int = 8192,
    progress: bool = False,
    image_ids: np.ndarray | None = None,
) -> np.ndarray:
    """-L_k for every image, [num_images], as float64 on the host (nats, lower is better).

    Scored with the model's likelihood at full float32 precision. Each device decodes at
    most `max_rows` samples at a time. Without `progress`, all images go in one compiled
    call; with it, in up to 20 equal calls, each advancing a tqdm bar (on a terminal).

    Args:
      images: [num_images, pixels] (or [num_images, H, W, C]), uint8 pixels or floats in
        [0, 1]; checked by `vae_jax.inputs.check_images` (a ValueError if unfit).
      num_samples: k >= 1.
      objective: only its deprecated `reconstruction` is used.
      mesh: split the images over its devices (params replicated over it); None: one device.
      image_ids: [num_images] ints, each image's index in its data set, which fixes its
        draws (None: 0, 1, ...): a slice of a data set scored with its ids gives the
        numbers that scoring the whole would give it.
    """
    _check_counts(num_samples=num_samples, max_rows=max_rows)
    images = np.asarray(model_images(model, images, likelihood=objective.likelihood(model)))
    image_ids = _checked_ids(image_ids, len(images))
    num_devices = 1 if mesh is None else mesh.devices.size
    plan = _plan_calls(len(images), num_devices, int(num_samples), int(max_rows), progress)
    padding = plan.padded - len(images)
    images = np.concatenate([images, np.zeros((padding, *images.shape[1:]), images.dtype)])
    image_ids = np.concatenate([image_ids, np.zeros(padding, image_ids.dtype)])
    score = functools.partial(
        model_negative_bound,
        model,
        params,
        key=key,
        num_samples=int(num_samples),
        sample_chunk=plan.sample_chunk,
        objective=objective,
        mesh=mesh,
        images_per_step=plan.images_per_step,
    )
    bounds = []
    bar = progress_bar(plan.num_images, f"-L_{num_samples}", "image", None if progress else True)
    with bar as bar:
        for start in range(0, plan.padded, plan.call_images):
            window = slice(start, start + plan.call_images)
            inputs = (images[window], image_ids[window])
            if mesh is not None:
                inputs = parallel.put_replicated(inputs, mesh)
            bounds.append(np.asarray(jax.device_get(score(*inputs)), np.float64))
            bar.update(min(plan.call_images, plan.num_images - start))
    return np.concatenate(bounds)[: plan.num_images]


def _check_counts(**counts) -> None:
    for name, value in counts.items():
        if not (isinstance(value, int | np.integer) and value >= 1):
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _checked_ids(image_ids, num_images: int) -> np.ndarray:
    if image_ids is None:
        return np.arange(num_images, dtype=np.int32)
    ids = np.asarray(image_ids)
    if ids.shape != (num_images,) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            f"image_ids must be {num_images} ints, one per image, got {ids.dtype} {ids.shape}"
        )
    if num_images and (ids.min() < 0 or ids.max() > np.iinfo(np.int32).max):
        raise ValueError("image_ids must lie in [0, 2**31): they are folded into the key")
    return ids.astype(np.int32)


class _CallPlan(NamedTuple):
    num_images: int
    sample_chunk: int  # samples per decoder pass
    images_per_step: int  # images per device per pass
    call_images: int  # images per compiled call, a whole number per device
    padded: int  # the images padded to a whole number of calls


def _plan_calls(num_images, num_devices, num_samples, max_rows, progress) -> _CallPlan:
    """How `estimate_negative_bound` splits its work: at most `max_rows` decoder rows per
    device at a time, and equal calls of one compiled program (up to 20 with `progress`)."""
    sample_chunk = min(num_samples, max_rows)
    images_per_step = max(1, max_rows // sample_chunk)
    num_calls = min(20 if progress else 1, -(-num_images // (num_devices * images_per_step)))
    call_images = -(-num_images // (num_calls * num_devices)) * num_devices
    return _CallPlan(
        num_images, sample_chunk, images_per_step, call_images, num_calls * call_images
    )


def progress_bar(total: int, desc: str, unit: str, disable: bool | None):
    """tqdm's bar (an extra of vae_jax: `pip install 'vae_jax[all]'`), or none without it."""
    try:
        import tqdm
    except ModuleNotFoundError:
        return contextlib.nullcontext(types.SimpleNamespace(update=lambda n: None))
    return tqdm.tqdm(total=total, desc=desc, unit=unit, disable=disable)


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


def mean_and_stderr(values: np.ndarray) -> tuple[float, float]:
    """Mean over images and its standard error, std / sqrt(n)."""
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values)))
