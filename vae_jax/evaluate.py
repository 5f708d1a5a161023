"""Test-set evaluation: the negative ELBO with one z sample per image, in nats."""

import functools

import jax
import jax.numpy as jnp

from vae_jax.losses import ElboTerms, negative_elbo
from vae_jax.models import VAE


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
