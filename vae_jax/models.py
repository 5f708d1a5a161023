"""Latent-variable models: MLP and conv encoders and decoders, priors joined into a VAE.

With `latent=64` and `hidden_sizes=(512, 256)`, `VAE` is exactly the reference network
(784-512-256-128 encoder, 64-256-512-784 decoder, prior N(0, I)). The decoder returns
logits, not probabilities: losses are computed from logits so they stay finite, and the
sigmoid is applied only to draw pictures.

Every model here (`VAE`, `HierarchicalVAE`, or your own) provides the same attributes
and methods, and the objectives, bounds, pictures and sweeps use only these
(`MODEL_INTERFACE`; docs/models.md has the table):

    image_size                        pixels per flattened image: the inputs' size
    latent_sizes                      one size per stochastic layer, from the data up
    posterior(x, noise)               reparameterized draws z of q(z|x) from standard
                                      normal `noise`, with log q(z|x): a PosteriorDraw
    log_prior(z)                      log p(z), [...]
    decode(z)                         the decoder's output for p(x|z) (logits), [..., outputs]
    sample_prior(key, num_samples)    z ~ p(z), one [num_samples, size] per layer
and, optionally:
    likelihood                        p(x|z) (`vae_jax.likelihoods`); absent: Bernoulli
    analytic_kl(draw)                 KL(q(z|x) || p(z)) in closed form [batch]; absent or
                                      None: the Monte Carlo estimate
    log_posterior(x, z)               log q(z|x) of given draws, [...]; needed by DReG only

z is a tuple with one array per layer, each [*sample_shape, batch, size]; x is
[batch, pixels] and broadcasts over the sample axes, which lead.
"""

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax import inputs, likelihoods, precision
from vae_jax.inputs import to_unit_interval
from vae_jax.likelihoods import Bernoulli
from vae_jax.losses import log_normal_diag
from vae_jax.priors import StandardNormalPrior

# What the library requires of a model (see the module docstring for the optional rest).
MODEL_INTERFACE = ("image_size", "latent_sizes", "posterior", "log_prior", "decode", "sample_prior")


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


def draw_noise(
    key: jax.Array, latent_sizes: Sequence[int], shape: tuple[int, ...]
) -> tuple[jax.Array, ...]:
    """Standard normal noise for every layer: one [*shape, size] array per layer.

    One draw of [*shape, sum(latent_sizes)] split by layer, so a one-layer model's noise
    is `jax.random.normal(key, (*shape, latent))`, the draw of `reparameterize`.
    """
    noise = jax.random.normal(key, (*shape, sum(latent_sizes)))
    if len(latent_sizes) == 1:
        return (noise,)
    return tuple(jnp.split(noise, list(itertools.accumulate(latent_sizes))[:-1], axis=-1))


class PosteriorDraw(NamedTuple):
    """Draws from q(z|x) and what the objectives need of them."""

    z: tuple[jax.Array, ...]  # one [*sample_shape, batch, size] per layer, from the data up
    log_q: jax.Array  # [*sample_shape, batch], log q(z|x) of the draws, summed over layers
    # Each layer's (mean, logvar) of q: [batch, size] where they do not depend on the
    # draws (a one-layer model's, a hierarchy's top), else [*sample_shape, batch, size].
    gaussians: tuple[tuple[jax.Array, jax.Array], ...]


# --- Layers --------------------------------------------------------------------------


class ReluDense(nn.Dense):
    """relu(Dense(x)): the reference network's hidden layer."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.relu(super().__call__(x))


class GatedDense(nn.Module):
    """A gated hidden layer, h = (W x + b) * sigmoid(V x + c) (Dauphin et al. 2017).

    The hidden layer of the VampPrior paper's MLPs (Tomczak & Welling 2018).
    """

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        value = nn.Dense(self.features, dtype=self.dtype, name="value")(x)
        gate = nn.Dense(self.features, dtype=self.dtype, name="gate")(x)
        return value * nn.sigmoid(gate)


HiddenLayer = Callable[..., nn.Module]  # (features, dtype=, name=) -> a layer module


class Encoder(nn.Module):
    """An MLP to a diagonal Gaussian: x [..., inputs] -> (mean, logvar), each [..., latent].

    The encoder q(z|x) of the reference network; the hierarchical model also uses it for
    q(z_l | x, z_{l+1}) and p(z_l | z_{l+1}).
    """

    latent: int
    hidden_sizes: Sequence[int] = (512, 256)
    dtype: Any = jnp.float32  # of the hidden matmuls; the head, parameters and outputs are float32
    hidden_layer: HiddenLayer = ReluDense

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return _gaussian_mlp(self, x)


class ConditionalEncoder(nn.Module):
    """q(z_l | x, z_{l+1}) of a hierarchy: the `Encoder` MLP of [x, z_above], or of x alone
    at the top (z_above None). (x, z_above [*sample_shape, batch, size]) -> (mean, logvar).
    """

    latent: int
    hidden_sizes: Sequence[int] = (300, 300)
    dtype: Any = jnp.float32
    hidden_layer: HiddenLayer = ReluDense

    @nn.compact
    def __call__(self, x: jax.Array, z_above: jax.Array | None = None):
        if z_above is not None:
            x = jnp.concatenate([_broadcast(x, z_above.shape[:-1] + x.shape[-1:]), z_above], -1)
        return _gaussian_mlp(self, x)


def _gaussian_mlp(module, h: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The layers of an MLP Gaussian (fc1, fc2, ..., fc_mean_logvar), built inside
    `module`'s compact method from its latent, hidden_sizes, dtype and hidden_layer."""
    for i, width in enumerate(module.hidden_sizes):
        h = module.hidden_layer(width, dtype=module.dtype, name=f"fc{i + 1}")(h)
    # One layer for both heads, split in two: the reference's 256 -> 2*latent layer.
    # Log-variance rather than std keeps the head unconstrained and the KL exact.
    # The head is float32 whatever `dtype`: exp(logvar) and the KL magnify its errors.
    mean_logvar = nn.Dense(2 * module.latent, dtype=jnp.float32, name="fc_mean_logvar")(h)
    mean, logvar = jnp.split(mean_logvar, 2, axis=-1)
    return mean, logvar


class Decoder(nn.Module):
    """z [..., latent] -> Bernoulli logits [..., image_size]."""

    image_size: int = 784
    hidden_sizes: Sequence[int] = (256, 512)
    dtype: Any = jnp.float32  # of the hidden matmuls; the head, parameters and logits are float32
    hidden_layer: HiddenLayer = ReluDense

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        h = z
        for i, width in enumerate(self.hidden_sizes):
            h = self.hidden_layer(width, dtype=self.dtype, name=f"fc{i + 1}")(h)
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
    """z [..., latent] -> logits [..., side*side]: the ConvEncoder in mirror image.

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


# --- Models --------------------------------------------------------------------------


class SamplesPosterior:
    """`sample_posterior` for a model with `latent_sizes` and `posterior` (a mixin)."""

    def sample_posterior(
        self, x: jax.Array, key: jax.Array, num_samples: int | None = None
    ) -> PosteriorDraw:
        """Draws z ~ q(z|x) from `key`: one per image, or `num_samples` ([k, batch, ...])."""
        return draw_posterior(self, x, key, num_samples)


def _adopt(module: nn.Module, field: str, default: Callable[[], Any]) -> None:
    """Fills an unset submodule field (a module, or a tuple of them) of a frozen Flax
    module with its default."""
    if getattr(module, field) is None:
        # Unbound (parent=None) so the model adopts it under the field's name, wherever
        # the model itself is built.
        value = default()
        if isinstance(value, tuple):
            value = tuple(piece.clone(parent=None) for piece in value)
        else:
            value = value.clone(parent=None)
        object.__setattr__(module, field, value)


def _broadcast(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """x [..., n] broadcast to [*shape[:-1], n], the sample axes leading."""
    return jnp.broadcast_to(x, (*shape[:-1], x.shape[-1]))


class VAE(SamplesPosterior, nn.Module):
    """One stochastic layer: q(z|x) from `encoder`, p(z) = `prior`, p(x|z) from `decoder`.

    Each piece is any Flax module (see the module docstring for what they return); left
    as None, it is the reference network's: the MLP `Encoder` and `Decoder` with
    `hidden_sizes` (mirrored for the decoder) and `StandardNormalPrior`.

    Attributes:
      latent: dimension of z.
      hidden_sizes: encoder widths of the built-in MLPs; the decoder mirrors them.
      image_size: number of pixels per flattened image (784 for 28x28x1).
      dtype: dtype of the built-in MLPs' hidden matrix multiplies (jnp.bfloat16 for speed
        on GPU/TPU). The heads (mean, logvar, logits) and the parameters are float32.
      hidden_layer: the built-in MLPs' hidden layer, `ReluDense` or `GatedDense`.
      encoder: x [batch, pixels] -> (mean, logvar) [batch, latent] of q(z|x).
      decoder: z [..., latent] -> the output that the likelihood scores, [..., pixels].
      prior: a prior module (`vae_jax.priors`).
      likelihood: p(x|z) (`vae_jax.likelihoods`: `Bernoulli()`, `Gaussian(0.1)`, ... or a
        function (decoder_output, images) -> -log p(x|z)): what the model is scored,
        sampled and reconstructed with.
      flow: None (q(z|x) is the encoder's Gaussian), or a normalizing flow that the
        Gaussian's draws pass through (`vae_jax.flows.IAF`): z_0 [..., latent] ->
        (z, log |det dz/dz_0| [...]); log q(z|x) stays exact.
    """

    latent: int = 64
    hidden_sizes: Sequence[int] = (512, 256)
    image_size: int = 784
    dtype: Any = jnp.float32
    hidden_layer: HiddenLayer = ReluDense
    encoder: nn.Module | None = None
    decoder: nn.Module | None = None
    prior: nn.Module | None = None
    likelihood: Any = Bernoulli()
    flow: nn.Module | None = None

    def __post_init__(self):
        widths = tuple(self.hidden_sizes)
        _adopt(self, "encoder", lambda: Encoder(self.latent, widths, self.dtype, self.hidden_layer))
        _adopt(
            self,
            "decoder",
            lambda: Decoder(self.image_size, widths[::-1], self.dtype, self.hidden_layer),
        )
        _adopt(self, "prior", lambda: StandardNormalPrior(self.latent))
        super().__post_init__()

    @property
    def latent_sizes(self) -> tuple[int, ...]:
        return (self.latent,)

    def __call__(self, x: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x [batch, image_size] -> (logits [batch, image_size], mean, logvar [batch, latent]).

        One z is drawn per image from `key` (and pushed through the flow, if there is
        one); mean and logvar are the encoder's Gaussian.
        """
        mean, logvar = self.encoder(x)
        z = reparameterize(key, mean, logvar)
        if self.flow is not None:
            z, _ = self.flow(z)
        return self.decoder(z), mean, logvar

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x [batch, image_size] -> (mean, logvar), each [batch, latent]."""
        return self.encoder(x)

    def posterior(self, x: jax.Array, noise: tuple[jax.Array]) -> PosteriorDraw:
        (eps,) = noise
        mean, logvar = self.encoder(x)
        wide_mean, wide_logvar = _broadcast(mean, eps.shape), _broadcast(logvar, eps.shape)
        z = wide_mean + eps * jnp.exp(0.5 * wide_logvar)
        log_q = log_normal_diag(z, wide_mean, wide_logvar)
        if self.flow is not None:  # log q(z) = log q(z_0) - log |det dz/dz_0|
            z, log_det = self.flow(z)
            log_q = log_q - log_det
        return PosteriorDraw((z,), log_q, ((mean, logvar),))

    def log_posterior(self, x: jax.Array, z: tuple[jax.Array]) -> jax.Array:
        if self.flow is not None:
            raise ValueError(
                "log q(z|x) of given draws needs the flow's inverse, which an IAF computes "
                "one dimension at a time: the DReG estimator is not offered with a flow"
            )
        mean, logvar = self.encoder(x)
        return log_normal_diag(z[0], _broadcast(mean, z[0].shape), _broadcast(logvar, z[0].shape))

    def log_prior(self, z: tuple[jax.Array]) -> jax.Array:
        return self.prior.log_prob(z[0], self.encoder)

    def decode(self, z: jax.Array | tuple[jax.Array]) -> jax.Array:
        """z [..., latent] (or a one-tuple of it) -> logits [..., image_size]."""
        return self.decoder(z[0] if isinstance(z, tuple) else z)

    def sample_prior(self, key: jax.Array, num_samples: int) -> tuple[jax.Array]:
        return (self.prior.sample(key, num_samples, self.encoder),)

    def analytic_kl(self, draw: PosteriorDraw) -> jax.Array | None:
        kl = getattr(self.prior, "kl_from_gaussian", None)
        if kl is None or self.flow is not None:  # a flow's q is no Gaussian: Monte Carlo
            return None
        return kl(*draw.gaussians[0])


class HierarchicalVAE(SamplesPosterior, nn.Module):
    """L stochastic layers z_1 (next to the data) .. z_L, after the VampPrior paper's HVAE.

    Generative model, top-down: p(z_L) p(z_{L-1} | z_L) ... p(z_1 | z_2) p(x | z_1..z_L).
    Inference, also top-down: q(z_L | x) q(z_{L-1} | x, z_L) ... q(z_1 | x, z_2).

    This is the structure of Tomczak & Welling (2018, section 3.3), whose two-layer
    model with a VampPrior is the best MLP result we compare with (81.56 nats). Inferring
    from the top lets each lower posterior see the layer above, as the generative model
    does, so q can match p's dependencies; Burda et al.'s bottom-up chain q(z_2 | z_1)
    cannot. The decoder sees every layer, so the top layer does not have to squeeze
    through z_1 to reach the pixels. The Ladder VAE's shared top-down pass would add
    parameters sharing between p and q; the VampPrior paper reached a lower NLL without it.

    Every Gaussian is diagonal. The networks are values: left as None, each is an MLP
    with `hidden_sizes` (`ConditionalEncoder`, `Encoder`, and a `Decoder` with the widths
    mirrored); `vae_jax.convolutional.conv_hierarchical_vae` passes the paper's
    convolutional ones (its ConvHVAE).

    Attributes:
      latent: sizes of z_1 .. z_L, from the data up, e.g. (40, 40).
      prior: a prior module over z_L; its encoder is q(z_L | x). None: N(0, I).
      likelihood: p(x|z_1, ..., z_L), as `VAE.likelihood`.
      encoders: L modules, encoders[l] = q(z_{l+1} | x, z_{l+2}):
        (x [batch, pixels], z_above [..., batch, size] or None at the top) -> (mean, logvar).
      conditional_priors: L - 1 modules, conditional_priors[l] = p(z_{l+1} | z_{l+2}):
        z_above [..., size] -> (mean, logvar).
      decoder: every layer concatenated [..., sum(latent)] -> the likelihood's input.
    """

    latent: Sequence[int] = (40, 40)
    hidden_sizes: Sequence[int] = (300, 300)
    image_size: int = 784
    dtype: Any = jnp.float32
    hidden_layer: HiddenLayer = ReluDense
    prior: nn.Module | None = None
    likelihood: Any = Bernoulli()
    encoders: Sequence[nn.Module] | None = None
    conditional_priors: Sequence[nn.Module] | None = None
    decoder: nn.Module | None = None

    def __post_init__(self):
        widths, sizes = tuple(self.hidden_sizes), tuple(self.latent)
        layer = (self.dtype, self.hidden_layer)
        _adopt(
            self, "encoders", lambda: tuple(ConditionalEncoder(n, widths, *layer) for n in sizes)
        )
        _adopt(
            self,
            "conditional_priors",
            lambda: tuple(Encoder(n, widths, *layer) for n in sizes[:-1]),
        )
        _adopt(self, "decoder", lambda: Decoder(self.image_size, widths[::-1], *layer))
        _adopt(self, "prior", lambda: StandardNormalPrior(sizes[-1]))
        super().__post_init__()

    @property
    def latent_sizes(self) -> tuple[int, ...]:
        return tuple(self.latent)

    def _q(self, layer: int, x: jax.Array, z_above: jax.Array | None):
        """(mean, logvar) of q(z_layer | x, z_above); z_above is None for the top layer."""
        return self.encoders[layer](x, z_above)

    def posterior(self, x: jax.Array, noise: tuple[jax.Array, ...]) -> PosteriorDraw:
        z, gaussians, log_q = [None] * len(noise), [None] * len(noise), 0.0
        for layer in reversed(range(len(noise))):
            above = z[layer + 1] if layer + 1 < len(noise) else None
            gaussians[layer] = self._q(layer, x, above)
            mean, logvar = (_broadcast(v, noise[layer].shape) for v in gaussians[layer])
            z[layer] = mean + noise[layer] * jnp.exp(0.5 * logvar)
            log_q = log_q + log_normal_diag(z[layer], mean, logvar)
        return PosteriorDraw(tuple(z), log_q, tuple(gaussians))

    def log_posterior(self, x: jax.Array, z: tuple[jax.Array, ...]) -> jax.Array:
        log_q = 0.0
        for layer in range(len(z)):
            above = z[layer + 1] if layer + 1 < len(z) else None
            mean, logvar = (_broadcast(v, z[layer].shape) for v in self._q(layer, x, above))
            log_q = log_q + log_normal_diag(z[layer], mean, logvar)
        return log_q

    def log_prior(self, z: tuple[jax.Array, ...]) -> jax.Array:
        log_p = self.prior.log_prob(z[-1], self.encoders[-1])
        for layer, conditional in enumerate(self.conditional_priors):
            log_p = log_p + log_normal_diag(z[layer], *conditional(z[layer + 1]))
        return log_p

    def decode(self, z: jax.Array | tuple[jax.Array, ...]) -> jax.Array:
        """z, one array per layer or all layers concatenated [..., sum(latent)] -> logits."""
        return self.decoder(jnp.concatenate(z, axis=-1) if isinstance(z, tuple) else z)

    def sample_prior(self, key: jax.Array, num_samples: int) -> tuple[jax.Array, ...]:
        keys = jax.random.split(key, len(self.latent))
        z = [None] * len(self.latent)
        z[-1] = self.prior.sample(keys[-1], num_samples, self.encoders[-1])
        for layer in reversed(range(len(self.conditional_priors))):
            z[layer] = reparameterize(keys[layer], *self.conditional_priors[layer](z[layer + 1]))
        return tuple(z)

    def analytic_kl(self, draw: PosteriorDraw) -> None:
        return None  # KL(q(z_1|x,z_2) || p(z_1|z_2)) depends on the draw: Monte Carlo.


def with_dtype(model: nn.Module, dtype) -> nn.Module:
    """A copy of `model` whose matmuls, and those of its submodule fields, run in `dtype`.

    For scoring in float32 a model trained with bfloat16 matmuls.
    """

    def in_dtype(piece):
        if isinstance(piece, tuple):
            return tuple(in_dtype(part) for part in piece)
        has_dtype = isinstance(piece, nn.Module) and hasattr(piece, "dtype")
        return piece.clone(dtype=dtype) if has_dtype else piece

    fields = ("encoder", "decoder", "prior", "encoders", "conditional_priors", "flow")
    changes = {field: in_dtype(getattr(model, field)) for field in fields if hasattr(model, field)}
    return model.clone(dtype=dtype, **changes)


# --- What the library calls through `model.apply(..., method=fn)` ----------------------
# Functions of the bound model, so that a model of your own needs only the interface.


def draw_posterior(model, x: jax.Array, key: jax.Array, num_samples: int | None = None):
    """z ~ q(z|x) from `key` through `model.posterior`: one per image, or `num_samples`."""
    shape = x.shape[:-1] if num_samples is None else (num_samples, *x.shape[:-1])
    return model.posterior(x, draw_noise(key, model.latent_sizes, shape))


def closed_form_kl(model, draw: PosteriorDraw) -> jax.Array | None:
    """The model's `analytic_kl(draw)`, or None when it has none."""
    analytic_kl = getattr(model, "analytic_kl", None)
    return None if analytic_kl is None else analytic_kl(draw)


def negative_log_likelihood(model, images: jax.Array, z, likelihood=None) -> jax.Array:
    """-log p(x|z), [*sample_shape, batch], for draws z whose sample axes lead; `images`
    [batch, pixels] in [0, 1] broadcast over them. Under the model's likelihood, or
    `likelihood` when given."""
    output = model.decode(z)
    images = images.reshape((1,) * (output.ndim - images.ndim) + images.shape)
    likelihood = likelihoods.of_model(model) if likelihood is None else likelihood
    return inputs.check_per_image(likelihood.nll(output, images), output, images)


def model_of(apply_fn):
    """The model whose `apply` is `apply_fn` (a TrainState's), or None for another function."""
    return getattr(apply_fn, "__self__", None)


def check_model(model) -> None:
    """Raises ValueError naming what `model` lacks of the interface (`MODEL_INTERFACE`)."""
    missing = [name for name in MODEL_INTERFACE if not hasattr(model, name)]
    if missing:
        raise ValueError(
            f"{type(model).__name__} lacks {', '.join(missing)}: a model provides "
            f"{', '.join(MODEL_INTERFACE)} (docs/models.md, 'The model interface')"
        )


def model_images(
    model, images, *, check_values_on_device: bool = True, likelihood=None, name: str = "images"
):
    """`images` through the input boundary (`vae_jax.inputs`) for `model`: [batch, image_size],
    uint8 or float32, checked against the pixel range of `likelihood` (default: the model's)."""
    check_model(model)
    likelihood = likelihoods.of_model(model) if likelihood is None else likelihood
    return inputs.check_images(
        images,
        model.image_size,
        likelihoods.pixel_range_of(likelihood),
        check_values_on_device=check_values_on_device,
        name=name,
    )


# --- Helpers for a trained model (pictures, diagnostics), at full float32 precision ---------


def _posterior_at_means(model, params, images: jax.Array) -> PosteriorDraw:
    """q(z|x) with zero noise: z is the path of posterior means, each layer's mean given
    the mean of the layer above."""
    images = to_unit_interval(images)
    zeros = tuple(jnp.zeros((*images.shape[:-1], size)) for size in model.latent_sizes)
    return model.apply({"params": params}, images, zeros, method="posterior")


@functools.partial(jax.jit, static_argnames=("model",))
def _posterior_gaussians(model, params, images: jax.Array):
    with precision.scoring():
        return _posterior_at_means(model, params, images).gaussians


def posterior_gaussians(model, params, images):
    """Each layer's (mean, logvar) of q(z|x), from the data up, each [batch, size].

    For a hierarchy, the lower layers' along the path of posterior means (each layer
    conditioned on the mean of the one above). `images` as every function takes them:
    [batch, pixels] uint8 or floats in [0, 1] (`vae_jax.inputs`).
    """
    return _posterior_gaussians(model, params, model_images(model, images))


def posterior(model, params, images) -> tuple[jax.Array, jax.Array]:
    """q(z|x) of each image: [batch, pixels] -> (mean, logvar), each [batch, sum(latent_sizes)].

    Every layer's, concatenated from the data up (see `posterior_gaussians`): what
    `decode` takes as a flat z.
    """
    gaussians = posterior_gaussians(model, params, images)
    return tuple(jnp.concatenate(parts, axis=-1) for parts in zip(*gaussians, strict=True))


def _mean_pixels(model, params, z) -> jax.Array:
    output = model.apply({"params": params}, z, method="decode")
    return likelihoods.mean_pixels(likelihoods.of_model(model), output, model.image_size)


@functools.partial(jax.jit, static_argnames=("model",))
def _decode_mean(model, params, z):
    with precision.scoring():
        return _mean_pixels(model, params, z)


def decode_probabilities(model, params, z) -> jax.Array:
    """E[x|z] under the model's likelihood, [batch, image_size] in pixel units: sigmoid of
    the logits for the Bernoulli. z [batch, latent] or a tuple of layers."""
    check_model(model)
    if not isinstance(z, tuple):
        z = jnp.asarray(z, jnp.float32)
    return _decode_mean(model, params, z)


@functools.partial(jax.jit, static_argnames=("model", "num_images"))
def _sample_images(model, params, key, num_images):
    with precision.scoring():
        z = model.apply({"params": params}, key, num_images, method="sample_prior")
        return _mean_pixels(model, params, z)


def sample_images(model, params, key: jax.Array, num_images: int) -> jax.Array:
    """Draws z ~ p(z), the model's prior -> E[x|z] under its likelihood, [num_images, pixels].

    `params` is the model's `params` collection.
    """
    check_model(model)
    if not (isinstance(num_images, int) and num_images >= 1):
        raise ValueError(f"num_images must be a positive int, got {num_images!r}")
    return _sample_images(model, params, key, num_images)


@functools.partial(jax.jit, static_argnames=("model",))
def _reconstruct_images(model, params, images):
    with precision.scoring():
        return _mean_pixels(model, params, _posterior_at_means(model, params, images).z)


def reconstruct_images(model, params, images) -> jax.Array:
    """Decodes each image's posterior means: [batch, pixels] -> E[x|z], [batch, image_size]."""
    return _reconstruct_images(model, params, model_images(model, images))
