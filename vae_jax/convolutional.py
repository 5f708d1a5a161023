"""A convolutional hierarchy: the VampPrior paper's ConvHVAE, as networks of a `HierarchicalVAE`.

Tomczak & Welling (2018) report 79.67 nats for their two-layer convolutional HVAE with a
VampPrior on dynamically binarized MNIST, the cheapest model under 80 they list. Its
structure is that of `HierarchicalVAE` (top-down inference and generation; the decoder
sees both layers); only the networks change, so they are passed in as values:

    q(z_2 | x)        gated convs of x (the first 7x7, then 3x3; one stride-2 pair per
                      entry of `channels`, then 6 channels), a Gaussian head
    q(z_1 | x, z_2)   gated convs of x (3x3), a gated dense layer of z_2 to the same size,
                      both joined by a gated dense layer of `hidden` units, a Gaussian head
    p(z_1 | z_2)      two gated dense layers of `hidden` units, a Gaussian head
    p(x | z_1, z_2)   a gated dense layer from each z_l to the pixels, one joining them,
                      then `num_decoder_convs` gated 3x3 convs of `channels[-1]`, and a
                      1x1 conv to the logits

A gated layer is h = (W * x + b) * sigmoid(V * x + c) (Dauphin et al. 2017), as in the
paper. The posteriors' Gaussian heads clip the log-variance to [-6, 2], as the paper's
hardtanh does. The encoders' convolutions run once per image: the draws of z share the
image's features. The decoder's run once per draw, which makes it the costly part.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax.likelihoods import Bernoulli
from vae_jax.models import Encoder, GatedDense, HierarchicalVAE, conv_image_side

LOGVAR_RANGE = (-6.0, 2.0)  # the paper's hardtanh on every log-variance head
FEATURE_CHANNELS = 6  # the channels of the encoders' last conv, as in the paper


class GatedConv(nn.Module):
    """A gated convolution, h = conv_v(x) * sigmoid(conv_g(x)), 'SAME' padding: NHWC."""

    features: int
    kernel_size: int = 3
    strides: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(
            nn.Conv,
            self.features,
            (self.kernel_size, self.kernel_size),
            strides=self.strides,
            padding="SAME",
            dtype=self.dtype,
        )
        return conv(name="value")(x) * nn.sigmoid(conv(name="gate")(x))


def _clipped_gaussian_head(h: jax.Array, latent: int) -> tuple[jax.Array, jax.Array]:
    """(mean, logvar) of a diagonal Gaussian from features, inside a compact method; the
    head is float32 whatever the layers' dtype, and logvar is clipped to LOGVAR_RANGE."""
    mean_logvar = nn.Dense(2 * latent, dtype=jnp.float32, name="fc_mean_logvar")(h)
    mean, logvar = jnp.split(mean_logvar, 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)


class ConvPosterior(nn.Module):
    """q(z_l | x, z_above) with convolutional features of x: (x [batch, pixels], z_above
    [..., batch, size] or None at the top) -> (mean, logvar), each [..., batch, latent]."""

    latent: int
    image_size: int = 784
    channels: Sequence[int] = (32, 64)
    hidden: int = 300
    first_kernel_size: int = 3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, z_above: jax.Array | None = None):
        side = conv_image_side(self.image_size, len(self.channels))
        h = x.reshape(-1, side, side, 1)
        for i, width in enumerate(self.channels):
            kernel = self.first_kernel_size if i == 0 else 3
            h = GatedConv(width, kernel, dtype=self.dtype, name=f"conv{2 * i + 1}")(h)
            h = GatedConv(width, 3, strides=2, dtype=self.dtype, name=f"conv{2 * i + 2}")(h)
        h = GatedConv(FEATURE_CHANNELS, 3, dtype=self.dtype, name="conv_features")(h)
        h = h.reshape(*x.shape[:-1], -1)  # [batch, features], once per image
        if z_above is not None:
            h = jnp.broadcast_to(h, (*z_above.shape[:-1], h.shape[-1]))
            from_z = GatedDense(h.shape[-1], dtype=self.dtype, name="fc_z_above")(z_above)
            joint = jnp.concatenate([h, from_z], axis=-1)
            h = GatedDense(self.hidden, dtype=self.dtype, name="fc_joint")(joint)
        return _clipped_gaussian_head(h, self.latent)


class ConvHierarchicalDecoder(nn.Module):
    """p(x | z_1 .. z_L): z [..., sum(latent_sizes)] -> logits [..., image_size]."""

    latent_sizes: Sequence[int] = (40, 40)
    image_size: int = 784
    channels: int = 64
    num_convs: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        side = conv_image_side(self.image_size, 0)
        cuts = [sum(self.latent_sizes[: i + 1]) for i in range(len(self.latent_sizes) - 1)]
        per_layer = [
            GatedDense(self.image_size, dtype=self.dtype, name=f"fc_z{i + 1}")(part)
            for i, part in enumerate(jnp.split(z, cuts, axis=-1))
        ]
        h = GatedDense(self.image_size, dtype=self.dtype, name="fc_joint")(
            jnp.concatenate(per_layer, axis=-1)
        )
        h = h.reshape(-1, side, side, 1)
        for i in range(self.num_convs):
            h = GatedConv(self.channels, 3, dtype=self.dtype, name=f"conv{i + 1}")(h)
        logits = nn.Conv(1, (1, 1), dtype=jnp.float32, name="conv_logits")(h)
        return logits.reshape(*z.shape[:-1], self.image_size)


def conv_hierarchical_vae(
    latent: Sequence[int] = (40, 40),
    *,
    image_size: int = 784,
    channels: Sequence[int] = (32, 64),
    hidden: int = 300,
    num_decoder_convs: int = 4,
    dtype: Any = jnp.float32,
    prior: nn.Module | None = None,
    likelihood: Any = Bernoulli(),
) -> HierarchicalVAE:
    """The ConvHVAE: a `HierarchicalVAE` with the paper's convolutional networks.

    Args:
      latent: sizes of z_1 .. z_L, from the data up ((40, 40) in the paper).
      image_size: pixels of the square one-channel images (784 for MNIST); the side must
        divide by 2 ** len(channels).
      channels: the encoders' conv widths, one stride-2 pair of gated convs per entry;
        the decoder's convs have channels[-1].
      hidden: the units of the gated dense layers of q(z_l | x, z_above) and p(z_l | z_above).
      num_decoder_convs: the decoder's gated 3x3 convs before the logits.
      dtype: the layers' matmul and conv dtype; heads and parameters are float32.
      prior: over z_L (a `VampPrior` in the paper); None: N(0, I).
      likelihood: p(x | z), the Bernoulli by default.
    """
    sizes = tuple(latent)
    conv_image_side(image_size, len(channels))  # a ValueError for images it cannot halve
    conv = dict(image_size=image_size, channels=tuple(channels), hidden=hidden, dtype=dtype)
    encoders = tuple(
        ConvPosterior(size, first_kernel_size=7 if i == len(sizes) - 1 else 3, **conv)
        for i, size in enumerate(sizes)
    )
    conditional_priors = tuple(
        Encoder(size, (hidden, hidden), dtype, hidden_layer=GatedDense) for size in sizes[:-1]
    )
    decoder = ConvHierarchicalDecoder(sizes, image_size, channels[-1], num_decoder_convs, dtype)
    return HierarchicalVAE(
        sizes,
        (hidden,),
        image_size,
        dtype,
        GatedDense,
        prior=prior,
        likelihood=likelihood,
        encoders=encoders,
        conditional_priors=conditional_priors,
        decoder=decoder,
    )
