"""The VAE: an MLP encoder to a diagonal Gaussian q(z|x), an MLP decoder to pixel logits.

With `latent=64` and `hidden_sizes=(512, 256)` this is exactly the reference network
(784-512-256-128 encoder, 64-256-512-784 decoder). The decoder returns logits, not
probabilities: losses are computed from logits so they stay finite, and the sigmoid is
applied only to draw pictures.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def reparameterize(key: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """Draws z ~ N(mean, exp(logvar)) as a differentiable function of mean and logvar.

    z = mean + eps * exp(logvar / 2) with eps ~ N(0, I) drawn from `key`, so gradients
    reach `mean` and `logvar` (Kingma & Welling 2014). The same key gives the same z.

    Args:
      key: PRNG key, used for this draw only.
      mean: [..., latent] mean of q(z|x).
      logvar: [..., latent] log-variance of q(z|x), same shape as `mean`.

    Returns:
      z: [..., latent], same shape and dtype as `mean`.
    """
    eps = jax.random.normal(key, mean.shape, mean.dtype)
    return mean + eps * jnp.exp(0.5 * logvar)


class Encoder(nn.Module):
    """x [batch, image_size] in [0, 1] -> (mean, logvar), each [batch, latent]."""

    latent: int
    hidden_sizes: Sequence[int] = (512, 256)
    dtype: Any = jnp.float32  # of the matmuls; parameters and outputs are float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = x
        for i, width in enumerate(self.hidden_sizes):
            h = nn.relu(nn.Dense(width, dtype=self.dtype, name=f"fc{i + 1}")(h))
        # One layer for both heads, split in two: the reference's 256 -> 2*latent layer.
        # Log-variance rather than std keeps the head unconstrained and the KL exact.
        mean_logvar = nn.Dense(2 * self.latent, dtype=self.dtype, name="fc_mean_logvar")(h)
        mean, logvar = jnp.split(mean_logvar.astype(jnp.float32), 2, axis=-1)
        return mean, logvar


class Decoder(nn.Module):
    """z [batch, latent] -> Bernoulli logits [batch, image_size]."""

    image_size: int = 784
    hidden_sizes: Sequence[int] = (256, 512)
    dtype: Any = jnp.float32  # of the matmuls; parameters and logits are float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        h = z
        for i, width in enumerate(self.hidden_sizes):
            h = nn.relu(nn.Dense(width, dtype=self.dtype, name=f"fc{i + 1}")(h))
        logits = nn.Dense(self.image_size, dtype=self.dtype, name="fc_logits")(h)
        return logits.astype(jnp.float32)


class VAE(nn.Module):
    """Encoder and decoder joined by the reparameterization trick.

    Attributes:
      latent: dimension of z.
      hidden_sizes: encoder widths; the decoder mirrors them in reverse order.
      image_size: number of pixels per flattened image (784 for 28x28x1).
      dtype: dtype of the matrix multiplies (jnp.bfloat16 for speed on GPU/TPU).
        Parameters, mean, logvar and logits are float32 whatever it is.
    """

    latent: int = 64
    hidden_sizes: Sequence[int] = (512, 256)
    image_size: int = 784
    dtype: Any = jnp.float32

    def setup(self):
        self.encoder = Encoder(self.latent, tuple(self.hidden_sizes), self.dtype)
        self.decoder = Decoder(self.image_size, tuple(reversed(self.hidden_sizes)), self.dtype)

    def __call__(self, x: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x [batch, image_size] -> (logits [batch, image_size], mean, logvar [batch, latent]).

        One z is drawn per image from `key`.
        """
        mean, logvar = self.encoder(x)
        z = reparameterize(key, mean, logvar)
        return self.decoder(z), mean, logvar

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x [batch, image_size] -> (mean, logvar), each [batch, latent]."""
        return self.encoder(x)

    def decode(self, z: jax.Array) -> jax.Array:
        """z [batch, latent] -> logits [batch, image_size]."""
        return self.decoder(z)


def posterior(model: VAE, params, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """q(z|x) of each image: [batch, image_size] -> (mean, logvar), each [batch, latent]."""
    return model.apply({"params": params}, images, method=VAE.encode)


def decode_probabilities(model: VAE, params, z: jax.Array) -> jax.Array:
    """Pixel probabilities sigmoid(decode(z)): [batch, latent] -> [batch, image_size]."""
    return jax.nn.sigmoid(model.apply({"params": params}, z, method=VAE.decode))


def sample_images(model: VAE, params, key: jax.Array, num_images: int) -> jax.Array:
    """Draws z ~ N(0, I) -> pixel probabilities sigmoid(decode(z)), [num_images, image_size].

    `params` is the model's `params` collection.
    """
    z = jax.random.normal(key, (num_images, model.latent))
    return decode_probabilities(model, params, z)


def reconstruct_images(model: VAE, params, images: jax.Array) -> jax.Array:
    """Decodes each image's posterior mean: [batch, image_size] -> probabilities, same shape."""
    mean, _ = posterior(model, params, images)
    return decode_probabilities(model, params, mean)
