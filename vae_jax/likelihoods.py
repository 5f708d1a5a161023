"""p(x|z) as a value: the likelihood a model scores, samples and reconstructs with.

A likelihood is part of the generative model, so it lives in the model (`VAE(likelihood=
...)`, `HierarchicalVAE(likelihood=...)`), and everything that uses the model (the
objectives, the bounds, `evaluate`, samples and reconstructions) uses the model's. A
loaded run scores itself with the likelihood it was trained with.

A likelihood is any hashable object with

    nll(output [..., outputs], images [..., pixels]) -> [...]   -log p(x|z) summed over
                                                                pixels, in nats
    mean(output [..., outputs]) -> [..., pixels]                E[x|z]: what a picture shows
    pixel_range: (low, high), or None                           the pixels it scores, checked
                                                                on every input

where `output` is the decoder's output for z. The built-ins take logits (one per pixel)
and squash their mean into [0, 1]. A plain function `(output, images) -> -log p(x|z)`
also works wherever a likelihood does (`from_function`).
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from vae_jax import losses
from vae_jax.inputs import UNIT_INTERVAL
from vae_jax.losses import DEFAULT_SCALE, RECONSTRUCTIONS


@dataclasses.dataclass(frozen=True)
class Bernoulli:
    """p(x|z) = prod Bernoulli(x_i | sigmoid(l_i)): binary pixels (BCE for grayscale ones)."""

    pixel_range = UNIT_INTERVAL

    def nll(self, logits: jax.Array, images: jax.Array) -> jax.Array:
        return losses.bernoulli_nll(logits, images)

    def mean(self, logits: jax.Array) -> jax.Array:
        return jax.nn.sigmoid(logits)


@dataclasses.dataclass(frozen=True)
class ContinuousBernoulli:
    """The continuous Bernoulli (Loaiza-Ganem & Cunningham 2019): a density on [0, 1]."""

    pixel_range = UNIT_INTERVAL

    def nll(self, logits: jax.Array, images: jax.Array) -> jax.Array:
        return losses.continuous_bernoulli_nll(logits, images)

    def mean(self, logits: jax.Array) -> jax.Array:
        return losses.continuous_bernoulli_mean(logits)


@dataclasses.dataclass(frozen=True)
class _LocationScale:
    """A density of each pixel about sigmoid(l) with a fixed `scale`, in pixel units."""

    scale: float = DEFAULT_SCALE
    pixel_range = UNIT_INTERVAL

    def __post_init__(self):
        if not self.scale > 0:
            raise ValueError(
                f"the {type(self).__name__} likelihood's scale must be > 0, got {self.scale}"
            )

    def mean(self, logits: jax.Array) -> jax.Array:
        return jax.nn.sigmoid(logits)


@dataclasses.dataclass(frozen=True)
class Gaussian(_LocationScale):
    """N(x | sigmoid(l), scale^2 I), `scale` the fixed standard deviation in pixel units."""

    def nll(self, logits: jax.Array, images: jax.Array) -> jax.Array:
        return losses.gaussian_nll(logits, images, self.scale)


@dataclasses.dataclass(frozen=True)
class Laplace(_LocationScale):
    """Laplace(x | sigmoid(l), scale), `scale` in pixel units."""

    def nll(self, logits: jax.Array, images: jax.Array) -> jax.Array:
        return losses.laplace_nll(logits, images, self.scale)


@dataclasses.dataclass(frozen=True)
class FromFunction:
    """A likelihood from a function `nll(output, images) -> -log p(x|z)` per image.

    `mean(output) -> [..., pixels]` draws its pictures; None is sigmoid(output), right
    for logits of one value per pixel (a decoder of more outputs per pixel needs its own).
    Define the functions once, at module level: they are part of the compiled program.
    """

    nll_fn: Callable[[jax.Array, jax.Array], jax.Array]
    mean_fn: Callable[[jax.Array], jax.Array] | None = None
    pixel_range: tuple[float, float] | None = UNIT_INTERVAL

    def nll(self, output: jax.Array, images: jax.Array) -> jax.Array:
        return self.nll_fn(output, images)

    def mean(self, output: jax.Array) -> jax.Array:
        return jax.nn.sigmoid(output) if self.mean_fn is None else self.mean_fn(output)


def from_function(nll, mean=None, pixel_range=UNIT_INTERVAL) -> FromFunction:
    """A likelihood from plain functions (see `FromFunction`)."""
    return FromFunction(nll, mean, None if pixel_range is None else tuple(pixel_range))


def named(name: str, scale: float = DEFAULT_SCALE):
    """The built-in likelihood `name`, one of `losses.RECONSTRUCTIONS` (the command line's)."""
    if name == "bernoulli":
        return Bernoulli()
    if name == "continuous_bernoulli":
        return ContinuousBernoulli()
    if name == "gaussian":
        return Gaussian(scale)
    if name == "laplace":
        return Laplace(scale)
    raise ValueError(f"unknown likelihood {name!r}; expected one of {RECONSTRUCTIONS}")


def resolve(likelihood, scale: float = DEFAULT_SCALE):
    """A likelihood object from what a caller gave: an object with `nll`, a built-in's name,
    a function `(output, images) -> nll`, or None (the Bernoulli)."""
    if likelihood is None:
        return Bernoulli()
    if isinstance(likelihood, str):
        return named(likelihood, scale)
    if hasattr(likelihood, "nll") and hasattr(likelihood, "mean"):
        return likelihood
    if callable(likelihood):
        return from_function(likelihood)
    raise ValueError(
        f"a likelihood is an object with nll and mean, a name among {RECONSTRUCTIONS}, or a "
        f"function (output, images) -> -log p(x|z); got {likelihood!r}"
    )


def of_model(model):
    """The likelihood of `model`: its `likelihood` attribute, the Bernoulli when it has none."""
    return resolve(getattr(model, "likelihood", None))


def pixel_range_of(likelihood) -> tuple[float, float] | None:
    return getattr(likelihood, "pixel_range", UNIT_INTERVAL)


def mean_pixels(likelihood, output: jax.Array, image_size: int) -> jax.Array:
    """E[x|z] of the decoder's `output`, [..., image_size]; a ValueError if the likelihood's
    mean has another number of values per image."""
    pixels = likelihood.mean(output)
    if jnp.shape(pixels)[-1] != image_size:
        raise ValueError(
            f"the likelihood's mean gives {jnp.shape(pixels)[-1]} values per image for "
            f"{image_size} pixels; give it a mean of the right size, e.g. "
            "likelihoods.from_function(nll, mean=...)"
        )
    return pixels
