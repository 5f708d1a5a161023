"""The VAE: an MLP encoder to a diagonal Gaussian q(z|x), an MLP decoder to pixel logits.

With `latent=64` and `hidden_sizes=(512, 256)` this is exactly the reference network
(784-512-256-128 encoder, 64-256-512-784 decoder). The decoder returns logits, not
probabilities: losses are computed from logits so they stay finite, and the sigmoid is
applied only to draw pictures.
"""

import math
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
    dtype: Any = jnp.float32  # of the hidden matmuls; the head, parameters and outputs are float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = x
        for i, width in enumerate(self.hidden_sizes):
            h = nn.relu(nn.Dense(width, dtype=self.dtype, name=f"fc{i + 1}")(h))
        # One layer for both heads, split in two: the reference's 256 -> 2*latent layer.
        # Log-variance rather than std keeps the head unconstrained and the KL exact.
        # The head is float32 whatever `dtype`: exp(logvar) and the KL magnify its errors.
        mean_logvar = nn.Dense(2 * self.latent, dtype=jnp.float32, name="fc_mean_logvar")(h)
        mean, logvar = jnp.split(mean_logvar, 2, axis=-1)
        return mean, logvar


class Decoder(nn.Module):
    """z [batch, latent] -> Bernoulli logits [batch, image_size]."""

    image_size: int = 784
    hidden_sizes: Sequence[int] = (256, 512)
    dtype: Any = jnp.float32  # of the hidden matmuls; the head, parameters and logits are float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        h = z
        for i, width in enumerate(self.hidden_sizes):
            h = nn.relu(nn.Dense(width, dtype=self.dtype, name=f"fc{i + 1}")(h))
        # float32 logits: bfloat16 keeps 8 bits, too few for a likelihood summed over pixels.
        return nn.Dense(self.image_size, dtype=jnp.float32, name="fc_logits")(h)


def conv_image_side(image_size: int, num_layers: int) -> int:
    """The side of square one-channel images that `num_layers` stride-2 layers halve evenly.

    Raises ValueError for any other image size.
    """
    side = math.isqrt(image_size)
    if side * side != image_size or side % 2**num_layers:
        raise ValueError(
            f"the conv architecture needs square one-channel images whose side divides by "
            f"2^{num_layers} (28x28 for MNIST with 2 layers), got {image_size} pixels"
        )
    return side


class ConvEncoder(nn.Module):
    """x [batch, side*side] -> (mean, logvar), each [batch, latent], through strided convs.

    With channels (32, 64): side x side x 1 -> side/2 x side/2 x 32 -> side/4 x side/4 x 64
    (3x3 kernels, stride 2, ReLU; one such layer per entry of `channels`), then one dense
    layer to both heads.
    """

    latent: int
    image_size: int = 784
    channels: Sequence[int] = (32, 64)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        side = conv_image_side(self.image_size, len(self.channels))
        h = x.reshape(*x.shape[:-1], side, side, 1)
        for i, width in enumerate(self.channels):
            h = nn.Conv(width, (3, 3), strides=2, dtype=self.dtype, name=f"conv{i + 1}")(h)
            h = nn.relu(h)
        h = h.reshape(*h.shape[:-3], -1)
        mean_logvar = nn.Dense(2 * self.latent, dtype=jnp.float32, name="fc_mean_logvar")(h)
        mean, logvar = jnp.split(mean_logvar, 2, axis=-1)
        return mean, logvar


class ConvDecoder(nn.Module):
    """z [batch, latent] -> logits [batch, side*side]: the ConvEncoder in mirror image.

    A dense layer to (side / 2^n) x (side / 2^n) x channels[-1] for n = len(channels),
    then n transposed convs (3x3, stride 2) through channels[-2], ..., channels[0] to
    side x side x 1.
    """

    image_size: int = 784
    channels: Sequence[int] = (32, 64)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        side = conv_image_side(self.image_size, len(self.channels))
        small = side // 2 ** len(self.channels)
        h = nn.Dense(small * small * self.channels[-1], dtype=self.dtype, name="fc")(z)
        h = nn.relu(h).reshape(*z.shape[:-1], small, small, self.channels[-1])
        widths = [*reversed(self.channels[:-1]), 1]
        for i, width in enumerate(widths):
            last = i == len(widths) - 1  # the logits layer, float32 whatever `dtype`
            h = nn.ConvTranspose(
                width,
                (3, 3),
                strides=(2, 2),
                dtype=jnp.float32 if last else self.dtype,
                name=f"deconv{i + 1}",
            )(h)
            if not last:
                h = nn.relu(h)
        return h.reshape(*z.shape[:-1], self.image_size)


class VAE(nn.Module):
    """Encoder and decoder joined by the reparameterization trick.

    Attributes:
      latent: dimension of z.
      hidden_sizes: encoder widths; the decoder mirrors them in reverse order.
      image_size: number of pixels per flattened image (784 for 28x28x1).
      dtype: dtype of the hidden layers' matrix multiplies (jnp.bfloat16 for speed on
        GPU/TPU). The heads (mean, logvar, logits) and the parameters are float32
        whatever it is.
      architecture: "mlp" (the reference network) or "conv" (`ConvEncoder` and
        `ConvDecoder`, for square one-channel images).
      conv_channels: the conv architecture's channels, first layer first.
    """

    latent: int = 64
    hidden_sizes: Sequence[int] = (512, 256)
    image_size: int = 784
    dtype: Any = jnp.float32
    architecture: str = "mlp"
    conv_channels: Sequence[int] = (32, 64)

    def setup(self):
        widths = tuple(self.hidden_sizes)
        if self.architecture == "conv":
            channels = tuple(self.conv_channels)
            self.encoder = ConvEncoder(self.latent, self.image_size, channels, self.dtype)
            self.decoder = ConvDecoder(self.image_size, channels, self.dtype)
        elif self.architecture == "mlp":
            self.encoder = Encoder(self.latent, widths, self.dtype)
            self.decoder = Decoder(self.image_size, tuple(reversed(widths)), self.dtype)
        else:
            raise ValueError(f"unknown architecture {self.architecture!r}; expected mlp or conv")

    def __call__(self, x: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x [batch, image_size] -> (logits [batch, image_size], mean, logvar [batch, latent]).

        One z is drawn per image from `key`.
        """
        mean, logvar = self.encoder(x)
        z = reparameterize(key, mean, logvar)
        return self.decoder(z), mean, logvar

    def decode_samples(self, x: jax.Array, key: jax.Array, num_samples: int):
        """k draws of z per image and their logits, for importance-weighted bounds.

        x [batch, image_size] -> (logits [k, batch, image_size], z [k, batch, latent],
        mean, logvar [batch, latent]).
        """
        mean, logvar = self.encoder(x)
        shape = (num_samples, *mean.shape)
        z = reparameterize(key, jnp.broadcast_to(mean, shape), jnp.broadcast_to(logvar, shape))
        return self.decoder(z), z, mean, logvar

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
