"""Priors p(z) over a model's top latent: Flax modules with `log_prob` and `sample`.

A prior is any Flax module with these two methods:

    log_prob(z [..., latent], encoder) -> [...]          log p(z), in nats
    sample(key, num_samples, encoder) -> [num_samples, latent]

`encoder` is the model's top encoder (x [batch, pixels] -> (mean, logvar)), for priors
built from it such as the VampPrior; the others ignore it. A prior that also has
`kl_from_gaussian(mean, logvar) -> [batch]` gives the closed-form KL of a diagonal
Gaussian posterior, which the ELBO then uses instead of the Monte Carlo estimate.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vae_jax.losses import kl_to_standard_normal, log_standard_normal

_LOG_2PI = math.log(2.0 * math.pi)


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I): the reference VAE's prior, with a closed-form KL."""

    latent: int

    def log_prob(self, z: jax.Array, encoder=None) -> jax.Array:
        return log_standard_normal(z)

    def sample(self, key: jax.Array, num_samples: int, encoder=None) -> jax.Array:
        return jax.random.normal(key, (num_samples, self.latent))

    def kl_from_gaussian(self, mean: jax.Array, logvar: jax.Array) -> jax.Array:
        """KL(N(mean, exp(logvar)) || N(0, I)) in closed form: [batch]."""
        return kl_to_standard_normal(mean, logvar)


def log_gaussian_mixture(
    z: jax.Array, means: jax.Array, logvars: jax.Array, log_weights: jax.Array
) -> jax.Array:
    """log sum_c pi_c N(z | means_c, diag(exp(logvars_c))): z [..., latent] -> [...].

    means and logvars: [components, latent]; log_weights: [components], log pi_c
    (normalised). The squared distance is expanded into matrix products, so memory is
    [..., components], not [..., components, latent]: the bounds score thousands of z
    per image against hundreds of components. The three terms cancel where z is near a
    component, so their matmuls run at full float32 precision on every device, whatever
    its default (TF32 would leave errors of 1e-3 of z^2 / var in log p(z)); they are
    [n, latent] x [latent, c], small beside the networks' matmuls.
    """
    inverse_variance = jnp.exp(-logvars)  # [c, latent]
    flat = z.reshape(-1, z.shape[-1])
    matmul = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)
    squared = (
        matmul(jnp.square(flat), inverse_variance.T)
        - 2.0 * matmul(flat, (means * inverse_variance).T)
        + jnp.sum(jnp.square(means) * inverse_variance, axis=-1)[None]
    )  # [n, c]: sum_d (z_d - mean_cd)^2 / var_cd
    log_norm = -0.5 * (jnp.sum(logvars, axis=-1) + z.shape[-1] * _LOG_2PI)  # [c]
    log_components = log_norm[None] - 0.5 * squared + log_weights[None]
    return jax.nn.logsumexp(log_components, axis=-1).reshape(z.shape[:-1])


def sample_gaussian_mixture(
    key: jax.Array, num_samples: int, means, logvars, log_weights
) -> jax.Array:
    """num_samples draws [num_samples, latent] from the mixture of `log_gaussian_mixture`."""
    component_key, noise_key = jax.random.split(key)
    components = jax.random.categorical(component_key, log_weights, shape=(num_samples,))
    noise = jax.random.normal(noise_key, (num_samples, means.shape[-1]))
    return means[components] + noise * jnp.exp(0.5 * logvars[components])


class VampPrior(nn.Module):
    """The VampPrior (Tomczak & Welling 2018): p(z) = (1/K) sum_k q(z | u_k).

    A uniform mixture of the encoder's posteriors at K learned pseudo-inputs u_k. As in
    the paper, the pseudo-inputs are parameters initialised near 0.05 and clipped to the
    pixel range [0, 1] (a hard tanh) before they are encoded. `encoder` is required.

    Attributes:
      num_pseudo_inputs: K (500 in the paper).
      image_size: pixels per flattened image, the pseudo-inputs' size.
    """

    num_pseudo_inputs: int = 500
    image_size: int = 784

    def setup(self):
        self.pseudo_inputs = self.param(
            "pseudo_inputs",
            lambda key, shape: 0.05 + 0.01 * jax.random.normal(key, shape),
            (self.num_pseudo_inputs, self.image_size),
        )

    def _components(self, encoder):
        if encoder is None:
            raise ValueError("the VampPrior needs the model's encoder")
        mean, logvar = encoder(jnp.clip(self.pseudo_inputs, 0.0, 1.0))
        log_weights = jnp.full((self.num_pseudo_inputs,), -math.log(self.num_pseudo_inputs))
        return mean, logvar, log_weights

    def log_prob(self, z: jax.Array, encoder=None) -> jax.Array:
        return log_gaussian_mixture(z, *self._components(encoder))

    def sample(self, key: jax.Array, num_samples: int, encoder=None) -> jax.Array:
        return sample_gaussian_mixture(key, num_samples, *self._components(encoder))


class MixtureOfGaussiansPrior(nn.Module):
    """p(z) = sum_c pi_c N(mu_c, diag(sigma_c^2)) with learned means, scales and weights.

    The means start as draws from N(0, I) and the variances at 1, so the prior starts
    close to the standard normal, spread over its bulk.
    """

    latent: int
    num_components: int = 10

    def setup(self):
        shape = (self.num_components, self.latent)
        self.means = self.param("means", nn.initializers.normal(1.0), shape)
        self.logvars = self.param("logvars", nn.initializers.zeros, shape)
        self.logits = self.param("logits", nn.initializers.zeros, (self.num_components,))

    def _components(self):
        return self.means, self.logvars, jax.nn.log_softmax(self.logits)

    def log_prob(self, z: jax.Array, encoder=None) -> jax.Array:
        return log_gaussian_mixture(z, *self._components())

    def sample(self, key: jax.Array, num_samples: int, encoder=None) -> jax.Array:
        return sample_gaussian_mixture(key, num_samples, *self._components())
