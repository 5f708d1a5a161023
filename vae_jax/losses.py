"""VAE loss terms as pure functions: per-example values in nats, the caller reduces.

Shapes: `logits` and `images` are [batch, pixels]; `mean` and `logvar` are
[batch, latent]; every function returns [batch] (nats per image). Images are in
[0, 1]: binary for a true Bernoulli likelihood, grayscale for the reference protocol
(where the Bernoulli term is the usual "BCE with soft targets").
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

RECONSTRUCTIONS = ("bernoulli", "gaussian", "laplace")

_HALF_LOG_2PI = 0.5 * float(np.log(2.0 * np.pi))


def bernoulli_nll(logits: jax.Array, images: jax.Array) -> jax.Array:
    """-log Bernoulli(images | sigmoid(logits)), summed over pixels: [batch].

    Equals PyTorch `binary_cross_entropy(sigmoid(logits), images, reduction='sum')` per
    image, but computed from logits as softplus(l) - x * l, written as
    max(l, 0) - x * l + log1p(exp(-|l|)) so that no exp overflows: it stays finite and
    exact for any finite logit (PyTorch's version clamps log(p) at -100 instead).
    """
    per_pixel = jnp.maximum(logits, 0.0) - logits * images + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    return jnp.sum(per_pixel, axis=-1)


def gaussian_nll(logits: jax.Array, images: jax.Array, scale: float = 1.0) -> jax.Array:
    """-log N(images | sigmoid(logits), scale^2 I), summed over pixels: [batch].

    The mean is squashed into the pixel range [0, 1]; `scale` is the fixed standard
    deviation in pixel units. Up to the constant, this is squared error / (2 scale^2).
    """
    mean = jax.nn.sigmoid(logits)
    per_pixel = 0.5 * jnp.square((images - mean) / scale) + (jnp.log(scale) + _HALF_LOG_2PI)
    return jnp.sum(per_pixel, axis=-1)


def laplace_nll(logits: jax.Array, images: jax.Array, scale: float = 1.0) -> jax.Array:
    """-log Laplace(images | sigmoid(logits), scale), summed over pixels: [batch].

    Up to the constant log(2 scale), this is absolute error / scale.
    """
    mean = jax.nn.sigmoid(logits)
    per_pixel = jnp.abs(images - mean) / scale + jnp.log(2.0 * scale)
    return jnp.sum(per_pixel, axis=-1)


def reconstruction_nll(
    logits: jax.Array, images: jax.Array, reconstruction: str = "bernoulli", scale: float = 1.0
) -> jax.Array:
    """-log p(x|z) per image for the named likelihood, one of `RECONSTRUCTIONS`: [batch].

    `scale` is used by the Gaussian (standard deviation) and Laplace likelihoods only.
    """
    if reconstruction == "bernoulli":
        return bernoulli_nll(logits, images)
    if reconstruction == "gaussian":
        return gaussian_nll(logits, images, scale)
    if reconstruction == "laplace":
        return laplace_nll(logits, images, scale)
    raise ValueError(
        f"unknown reconstruction {reconstruction!r}; expected one of {RECONSTRUCTIONS}"
    )


def kl_to_standard_normal(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) in closed form, summed over latents: [batch].

    0.5 * sum(exp(logvar) + mean^2 - 1 - logvar); zero exactly when mean = 0, logvar = 0.
    """
    return 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar, axis=-1)


class ElboTerms(NamedTuple):
    """Per-example terms of the negative ELBO, each [batch], in nats."""

    loss: jax.Array  # recon + beta * kl
    recon: jax.Array  # -log p(x|z) for the sampled z
    kl: jax.Array  # KL(q(z|x) || p(z))


def negative_elbo(
    logits: jax.Array,
    images: jax.Array,
    mean: jax.Array,
    logvar: jax.Array,
    beta: float | jax.Array = 1.0,
    reconstruction: str = "bernoulli",
    scale: float = 1.0,
) -> ElboTerms:
    """recon + beta * KL per image, with its terms. With beta = 1 this is -ELBO.

    The one-sample Monte Carlo estimate of -E_q[log p(x|z)] + beta * KL(q(z|x) || N(0, I)),
    with z the sample that produced `logits`. Reduce over the batch yourself.
    """
    recon = reconstruction_nll(logits, images, reconstruction, scale)
    kl = kl_to_standard_normal(mean, logvar)
    return ElboTerms(loss=recon + beta * kl, recon=recon, kl=kl)


def log_normal_diag(z: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """log N(z | mean, diag(exp(logvar))), summed over the last axis: [...]."""
    return -0.5 * jnp.sum(
        jnp.square(z - mean) * jnp.exp(-logvar) + logvar + 2.0 * _HALF_LOG_2PI, axis=-1
    )


def log_standard_normal(z: jax.Array) -> jax.Array:
    """log N(z | 0, I), summed over the last axis: [...]."""
    return -0.5 * jnp.sum(jnp.square(z) + 2.0 * _HALF_LOG_2PI, axis=-1)
