"""Normalizing flows for the posterior: q(z|x) as a Gaussian pushed through a bijection.

    model = VAE(latent=64, flow=IAF(num_flows=2, hidden=320))

`VAE.posterior` draws z_0 = mean + eps * std from the encoder's Gaussian, then
z = f(z_0) through the flow, and scores log q(z|x) = log N(z_0) - log |det df/dz_0|,
exactly, so every bound, the NLL and `evaluate` work unchanged. A flow here is any Flax
module `z_0 [..., latent] -> (z [..., latent], log |det dz/dz_0| [...])`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def made_masks(latent: int, hidden: int) -> tuple[np.ndarray, np.ndarray]:
    """The masks of a one-hidden-layer MADE (Germain et al. 2015) over inputs 1..latent in
    order: (input -> hidden [latent, hidden], hidden -> output [hidden, latent]).

    Hidden unit h has degree m(h) in 1..latent-1 (cycled), and sees inputs d <= m(h);
    output d sees hidden units with m(h) < d. So output d depends on inputs 1..d-1 only:
    the Jacobian of the outputs is strictly lower triangular.
    """
    degrees = np.arange(hidden) % max(latent - 1, 1) + 1  # in 1 .. latent - 1
    inputs = np.arange(1, latent + 1)
    into_hidden = (inputs[:, None] <= degrees[None, :]).astype(np.float32)
    out_of_hidden = (degrees[:, None] < inputs[None, :]).astype(np.float32)
    return into_hidden, out_of_hidden


class MaskedDense(nn.Module):
    """A dense layer whose kernel is multiplied by a fixed 0/1 `mask` [inputs, features]."""

    mask: Any  # np.ndarray, static
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        mask = jnp.asarray(self.mask, jnp.float32)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), mask.shape)
        bias = self.param("bias", nn.initializers.zeros, mask.shape[-1:])
        y = jnp.dot(x.astype(self.dtype), (kernel * mask).astype(self.dtype))
        return y + bias.reshape((1,) * (y.ndim - 1) + bias.shape)


class IAFStep(nn.Module):
    """One step of inverse autoregressive flow (Kingma et al. 2016, their eq. 10-11).

    A MADE gives, for each dimension d, m_d and s_d from z_1..z_{d-1}; then
        sigma = sigmoid(s + forget_bias),  z' = sigma * z + (1 - sigma) * m,
    whose Jacobian is lower triangular with diagonal sigma: log |det| = sum_d log sigma_d.
    The forget bias starts each step near the identity (sigma about 0.88).
    """

    hidden: int
    forget_bias: float = 2.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        latent = z.shape[-1]
        into_hidden, out_of_hidden = made_masks(latent, self.hidden)
        h = nn.elu(MaskedDense(into_hidden, self.dtype, name="hidden")(z))
        shift = MaskedDense(out_of_hidden, self.dtype, name="shift")(h).astype(jnp.float32)
        gate = MaskedDense(out_of_hidden, self.dtype, name="gate")(h).astype(jnp.float32)
        log_sigma = jax.nn.log_sigmoid(gate + self.forget_bias)
        sigma = jnp.exp(log_sigma)
        return sigma * z + (1.0 - sigma) * shift, jnp.sum(log_sigma, axis=-1)


class IAF(nn.Module):
    """Inverse autoregressive flow: `num_flows` IAF steps, the order of the dimensions
    reversed between steps, so each dimension is transformed given every other one.

    Without the encoder's context vector of Kingma et al. (2016): one bijection for every
    image, as in Pythae's VAE_IAF; the Gaussian it starts from is the image's. Sampling
    and scoring the draws are one pass; scoring a given z would invert each step one
    dimension at a time, so `log_posterior` (DReG's) is not offered.

    Attributes:
      num_flows: IAF steps.
      hidden: width of each step's MADE hidden layer.
    """

    num_flows: int = 2
    hidden: int = 320
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """z_0 [..., latent] -> (z [..., latent], log |det dz/dz_0| [...])."""
        log_det = jnp.zeros(z.shape[:-1], jnp.float32)
        for step in range(self.num_flows):
            if step:
                z = z[..., ::-1]  # a permutation: |det| 1
            z, step_log_det = IAFStep(self.hidden, dtype=self.dtype, name=f"step_{step}")(z)
            log_det = log_det + step_log_det
        if self.num_flows % 2 == 0 and self.num_flows:
            z = z[..., ::-1]  # every dimension back in its own place
        return z, log_det
