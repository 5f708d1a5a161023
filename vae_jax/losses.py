"""VAE loss terms as pure functions: per-example values in nats, the caller reduces.

Shapes: `logits` and `images` are [batch, pixels]; `mean` and `logvar` are
[batch, latent]; every function returns [batch] (nats per image). Images are in
[0, 1]: binary for a true Bernoulli likelihood, grayscale for the reference protocol
(where the Bernoulli term is the usual "BCE with soft targets"). Every function that
takes images checks them (`vae_jax.inputs.check_pixels`): uint8 pixels are scaled to
[0, 1], and values outside [0, 1], NaN or a pixel count unlike the logits' are a
ValueError.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.inputs import UNIT_INTERVAL, check_per_image, check_pixels

RECONSTRUCTIONS = ("bernoulli", "continuous_bernoulli", "gaussian", "laplace")
# The fixed std (gaussian) or scale (laplace) of p(x|z) in pixel units: the one default
# of every function here, of `Objective` and of --recon_scale.
DEFAULT_SCALE = 0.1

_HALF_LOG_2PI = 0.5 * float(np.log(2.0 * np.pi))


def bernoulli_nll(logits: jax.Array, images: jax.Array) -> jax.Array:
    """-log Bernoulli(images | sigmoid(logits)), summed over pixels: [batch].

    Equals PyTorch `binary_cross_entropy(sigmoid(logits), images, reduction='sum')` per
    image, but computed from logits as softplus(l) - x * l, written as
    max(l, 0) - x * l + log1p(exp(-|l|)) so that no exp overflows: it stays finite and
    exact for any finite logit (PyTorch's version clamps log(p) at -100 instead).
    """
    images = check_pixels(images, logits)
    per_pixel = jnp.maximum(logits, 0.0) - logits * images + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    return jnp.sum(per_pixel, axis=-1)


# Below this |logit| the continuous Bernoulli's log-normaliser uses its Taylor series,
# where the closed form's log(l) - log(tanh(l / 2)) cancels to log 2 (0/0 at l = 0).
CB_TAYLOR_BELOW = 0.1


def continuous_bernoulli_log_normalizer(logits: jax.Array) -> jax.Array:
    """log C(lambda) of the continuous Bernoulli, lambda = sigmoid(logits), per element.

    C(lambda) = 2 artanh(1 - 2 lambda) / (1 - 2 lambda) (Loaiza-Ganem & Cunningham 2019),
    which in logits l is l / tanh(l / 2): even in l, 2 at l = 0, about |l| for large |l|.
    Near 0, log C = log 2 + l^2/12 - 7 l^4/1440 + O(l^6) (error under 1e-9 below
    `CB_TAYLOR_BELOW`); elsewhere log|l| - log tanh(|l|/2), finite at logits of +-1e4.
    """
    magnitude = jnp.abs(logits)
    small = magnitude < CB_TAYLOR_BELOW
    # Each branch sees only inputs it handles, so neither puts a NaN into the gradient.
    safe = jnp.where(small, 1.0, magnitude)
    closed_form = jnp.log(safe) - jnp.log(jnp.tanh(0.5 * safe))
    squared = jnp.square(jnp.where(small, logits, 0.0))
    taylor = jnp.log(2.0) + squared / 12.0 - 7.0 * jnp.square(squared) / 1440.0
    return jnp.where(small, taylor, closed_form)


def continuous_bernoulli_nll(logits: jax.Array, images: jax.Array) -> jax.Array:
    """-log CB(images | sigmoid(logits)), summed over pixels: [batch].

    The continuous Bernoulli (Loaiza-Ganem & Cunningham, NeurIPS 2019) is a density on
    [0, 1]: C(lambda) lambda^x (1 - lambda)^(1 - x). It is the Bernoulli term (BCE from
    logits) minus the log-normaliser, so grayscale pixels get a true likelihood.
    """
    images = check_pixels(images, logits)
    return bernoulli_nll(logits, images) - jnp.sum(
        continuous_bernoulli_log_normalizer(logits), axis=-1
    )


def continuous_bernoulli_mean(logits: jax.Array) -> jax.Array:
    """E[x] of the continuous Bernoulli with lambda = sigmoid(logits), per element.

    lambda / (2 lambda - 1) + 1 / (2 artanh(1 - 2 lambda)), which in logits l is
    1/2 + 1 / (2 tanh(l / 2)) - 1 / l: 1/2 at l = 0, rising to 1 (falling to 0) for large
    positive (negative) l. Not sigmoid(l), the Bernoulli's: the normaliser pulls the mean
    towards 1/2. Near 0 the series 1/2 + l/12 - l^3/720 (error under 1e-9 below
    `CB_TAYLOR_BELOW`) replaces the closed form's cancelling terms.
    """
    small = jnp.abs(logits) < CB_TAYLOR_BELOW
    safe = jnp.where(small, 1.0, logits)
    closed_form = 0.5 + 0.5 / jnp.tanh(0.5 * safe) - 1.0 / safe
    series = jnp.where(small, logits, 0.0)
    taylor = 0.5 + series / 12.0 - series**3 / 720.0
    return jnp.where(small, taylor, closed_form)


def gaussian_nll(logits: jax.Array, images: jax.Array, scale: float = DEFAULT_SCALE) -> jax.Array:
    """-log N(images | sigmoid(logits), scale^2 I), summed over pixels: [batch].

    The mean is squashed into the pixel range [0, 1]; `scale` is the fixed standard
    deviation in pixel units. Up to the constant, this is squared error / (2 scale^2).
    """
    images = check_pixels(images, logits)
    mean = jax.nn.sigmoid(logits)
    per_pixel = 0.5 * jnp.square((images - mean) / scale) + (jnp.log(scale) + _HALF_LOG_2PI)
    return jnp.sum(per_pixel, axis=-1)


def laplace_nll(logits: jax.Array, images: jax.Array, scale: float = DEFAULT_SCALE) -> jax.Array:
    """-log Laplace(images | sigmoid(logits), scale), summed over pixels: [batch].

    Up to the constant log(2 scale), this is absolute error / scale.
    """
    images = check_pixels(images, logits)
    mean = jax.nn.sigmoid(logits)
    per_pixel = jnp.abs(images - mean) / scale + jnp.log(2.0 * scale)
    return jnp.sum(per_pixel, axis=-1)


def reconstruction_nll(
    logits: jax.Array,
    images: jax.Array,
    reconstruction="bernoulli",
    scale: float = DEFAULT_SCALE,
) -> jax.Array:
    """-log p(x|z) per image: [batch].

    `reconstruction` is the name of a built-in (one of `RECONSTRUCTIONS`), a likelihood
    object (`vae_jax.likelihoods`) or a function `(output, images) -> -log p(x|z)` per
    image. `scale` is used by the named Gaussian (standard deviation) and Laplace only.
    """
    if hasattr(reconstruction, "nll"):
        pixel_range = getattr(reconstruction, "pixel_range", UNIT_INTERVAL)
        images = check_pixels(images, None, pixel_range)
        return check_per_image(reconstruction.nll(logits, images), logits, images)
    if callable(reconstruction):
        images = check_pixels(images)
        return check_per_image(reconstruction(logits, images), logits, images)
    if reconstruction == "bernoulli":
        return bernoulli_nll(logits, images)
    if reconstruction == "continuous_bernoulli":
        return continuous_bernoulli_nll(logits, images)
    if reconstruction == "gaussian":
        return gaussian_nll(logits, images, scale)
    if reconstruction == "laplace":
        return laplace_nll(logits, images, scale)
    raise ValueError(
        f"unknown reconstruction {reconstruction!r}; expected one of {RECONSTRUCTIONS}, a "
        "likelihood object, or a function (output, images) -> -log p(x|z) per image"
    )


def kl_per_latent(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(q || N(0, 1)) of each latent dimension in closed form: [batch, latent].

    0.5 * (exp(logvar) + mean^2 - 1 - logvar); zero exactly when mean = 0, logvar = 0.
    """
    return 0.5 * (jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar)


def kl_to_standard_normal(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) in closed form, summed over latents: [batch]."""
    return jnp.sum(kl_per_latent(mean, logvar), axis=-1)


def free_bits_kl(mean: jax.Array, logvar: jax.Array, weights: jax.Array, floor: float) -> jax.Array:
    """The batch's KL with a floor per dimension (free bits, Kingma et al. 2016): a scalar.

    sum_d max(floor, KL_d), KL_d the weighted batch mean of dimension d's KL. A dimension
    whose KL is below `floor` nats adds the floor and no gradient, so the optimiser gains
    nothing by pushing it further towards the prior.

    weights: [batch], 1 for the images that count and 0 for padding.
    """
    batch_kl = jnp.sum(weights[:, None] * kl_per_latent(mean, logvar), axis=0) / jnp.sum(weights)
    return jnp.sum(jnp.maximum(batch_kl, floor))


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
    reconstruction="bernoulli",
    scale: float = DEFAULT_SCALE,
) -> ElboTerms:
    """recon + beta * KL per image, with its terms. With beta = 1 this is -ELBO.

    The one-sample Monte Carlo estimate of -E_q[log p(x|z)] + beta * KL(q(z|x) || N(0, I)),
    with z the sample that produced `logits`. `reconstruction` is as in
    `reconstruction_nll`: a name, a likelihood or a function. Reduce over the batch
    yourself.
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


def log_importance_weights(
    log_likelihood: jax.Array,
    log_prior: jax.Array,
    log_posterior: jax.Array,
    beta: float | jax.Array = 1.0,
) -> jax.Array:
    """log w = log p(x|z) + beta * (log p(z) - log q(z|x)), elementwise over draws: [...].

    beta = 1 gives the weights of the bound L_k; other values weigh the prior and
    posterior terms as in a beta-VAE.
    """
    return log_likelihood + beta * (log_prior - log_posterior)


def negative_iwae_bound(
    recon: jax.Array,
    log_prior: jax.Array,
    log_posterior: jax.Array,
    beta: float | jax.Array = 1.0,
    kl: jax.Array | None = None,
) -> ElboTerms:
    """-L_k, the importance-weighted bound of Burda et al. (2016), per image, with its terms.

    L_k = log (1/k) sum_i w_i, with log w_i = log p(x|z_i) + beta * (log p(z_i) - log q(z_i|x))
    for k draws z_i ~ q(z|x); computed with logsumexp, so it is finite whatever the
    weights. L_1 is the one-sample ELBO (with a Monte Carlo KL), and L_k rises towards
    log p(x) with k.

    Args:
      recon: [k, batch], -log p(x|z_i) of each draw.
      log_prior: [k, batch], log p(z_i).
      log_posterior: [k, batch], log q(z_i|x).
      kl: [batch], the KL to log (a closed form); None: the draws' mean of log q - log p.

    Returns:
      ElboTerms, each [batch]: loss = -L_k, recon = the mean over draws of -log p(x|z_i),
      kl as above (for logging: the bound uses the sampled log-densities).
    """
    log_weights = log_importance_weights(-recon, log_prior, log_posterior, beta)
    num_samples = log_weights.shape[0]
    bound = jax.nn.logsumexp(log_weights, axis=0) - jnp.log(num_samples)
    if kl is None:
        kl = jnp.mean(log_posterior - log_prior, axis=0)
    return ElboTerms(loss=-bound, recon=jnp.mean(recon, axis=0), kl=kl)


def negative_miwae_bound(log_weights: jax.Array) -> jax.Array:
    """-MIWAE(M, K) per image (Rainforth et al. 2018): [M, K, batch] log weights -> [batch].

    The average of M independent IWAE bounds of K draws each,
        MIWAE = 1/M sum_m log (1/K sum_k w_mk),
    so MIWAE(1, K) = IWAE(K) and MIWAE(M, 1) is the M-draw average of the ELBO.
    """
    num_samples = log_weights.shape[1]
    return -jnp.mean(jax.nn.logsumexp(log_weights, axis=1) - jnp.log(num_samples), axis=0)


def negative_ciwae_bound(log_weights: jax.Array, ciwae_beta: float | jax.Array) -> jax.Array:
    """-CIWAE(beta) per image (Rainforth et al. 2018): [K, batch] log weights -> [batch].

    beta ELBO + (1 - beta) IWAE(K) of the same K draws, the ELBO being their average
    log w: CIWAE(1) is the ELBO, CIWAE(0) is IWAE(K).
    """
    num_samples = log_weights.shape[0]
    iwae = jax.nn.logsumexp(log_weights, axis=0) - jnp.log(num_samples)
    return -(ciwae_beta * jnp.mean(log_weights, axis=0) + (1.0 - ciwae_beta) * iwae)
