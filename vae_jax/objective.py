"""What training minimises: one static `Objective`, and the batch loss it defines.

An `Objective` is a frozen dataclass, so it is hashable and passes to jitted functions
as a static argument: the likelihood, the bound and the schedule are compiled into the
program, while the KL weight `beta` stays a traced value (a sweep vmaps over it).
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax

from vae_jax.losses import (
    DEFAULT_SCALE,
    RECONSTRUCTIONS,
    ElboTerms,
    free_bits_kl,
    log_importance_weights,
    negative_elbo,
    negative_iwae_bound,
    reconstruction_nll,
)
from vae_jax.models import reparameterize
from vae_jax.schedules import BetaSchedule

BOUNDS = ("elbo", "iwae")
GRADIENT_ESTIMATORS = ("standard", "dreg")


@dataclasses.dataclass(frozen=True)
class Objective:
    """The training objective: recon + beta * KL (elbo) or -L_k (iwae), per image.

    Attributes:
      bound: "elbo", one z per image and the KL in closed form; or "iwae", the k-sample
        bound of Burda et al. (2016) with k = `num_samples`.
      num_samples: k, the z draws per image of the iwae bound (1 for elbo).
      reconstruction: the likelihood p(x|z), one of `losses.RECONSTRUCTIONS`.
      recon_scale: its fixed std (gaussian) or scale (laplace), in pixel units.
      free_bits: with elbo, a floor in nats on each latent dimension's batch-mean KL
        (Kingma et al. 2016); 0 is off.
      beta_schedule: the factor in [0, 1] on beta at each optimiser step.
      gradient_estimator: "standard" differentiates the bound as it is; "dreg" (iwae
        only) gives the encoder the doubly-reparameterized gradient of Tucker et al.
        (2019), whose signal-to-noise ratio does not fall with k. The decoder's gradient
        and the loss value are the standard ones.
    """

    bound: str = "elbo"
    num_samples: int = 1
    reconstruction: str = "bernoulli"
    recon_scale: float = DEFAULT_SCALE
    free_bits: float = 0.0
    beta_schedule: BetaSchedule = BetaSchedule()
    gradient_estimator: str = "standard"

    def __post_init__(self):
        if self.bound not in BOUNDS:
            raise ValueError(f"unknown bound {self.bound!r}; expected one of {BOUNDS}")
        if self.reconstruction not in RECONSTRUCTIONS:
            raise ValueError(
                f"unknown reconstruction {self.reconstruction!r}; expected one of {RECONSTRUCTIONS}"
            )
        if self.num_samples < 1 or (self.bound == "elbo" and self.num_samples != 1):
            raise ValueError(f"num_samples={self.num_samples}: use 1 for elbo, >= 1 for iwae")
        if self.free_bits < 0 or (self.free_bits and self.bound != "elbo"):
            raise ValueError(f"free_bits={self.free_bits}: use >= 0, and with elbo only")
        if self.recon_scale <= 0:
            raise ValueError(f"recon_scale must be > 0, got {self.recon_scale}")
        if self.gradient_estimator not in GRADIENT_ESTIMATORS or (
            self.gradient_estimator == "dreg" and self.bound != "iwae"
        ):
            raise ValueError(
                f"gradient_estimator={self.gradient_estimator!r}: one of "
                f"{GRADIENT_ESTIMATORS}, and dreg with the iwae bound only"
            )

    def likelihood_nll(self, logits: jax.Array, images: jax.Array) -> jax.Array:
        """-log p(x|z) summed over pixels, from logits [..., pixels]: [...]."""
        return reconstruction_nll(logits, images, self.reconstruction, self.recon_scale)

    def terms(
        self, params, apply_fn, images: jax.Array, key: jax.Array, beta: float | jax.Array
    ) -> tuple[ElboTerms, jax.Array, jax.Array]:
        """Per-image terms, each [batch] in nats, and q(z|x)'s mean and logvar [batch, latent].

        `loss` is recon + beta * KL (elbo) or -L_k (iwae; recon is then the mean over
        the k draws of -log p(x|z_i), and kl the closed-form KL).
        """
        variables = {"params": params}
        if self.bound == "iwae":
            logits, z, mean, logvar = apply_fn(
                variables, images, key, self.num_samples, method="decode_samples"
            )
            terms = negative_iwae_bound(
                logits, images, z, mean, logvar, beta, self.reconstruction, self.recon_scale
            )
        else:
            logits, mean, logvar = apply_fn(variables, images, key)
            terms = negative_elbo(
                logits, images, mean, logvar, beta, self.reconstruction, self.recon_scale
            )
        return terms, mean, logvar

    def batch_loss(
        self,
        params,
        apply_fn,
        images: jax.Array,
        key: jax.Array,
        beta: float | jax.Array = 1.0,
        weights: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The batch's value to minimise, and its terms as metrics (weighted batch means).

        Args:
          params: the model's `params` collection.
          apply_fn: the model's `apply`.
          images: [batch, pixels] in [0, 1].
          key: PRNG key of the z draws.
          beta: the KL weight of this step.
          weights: [batch], 1 for the images that count and 0 for padding; None: all 1.

        Returns:
          The scalar to minimise (nats per image), and the metrics `objective` (that same
          value), `loss` (recon + beta * KL), `recon` and `kl`, all in nats per image.
        """
        if weights is None:
            weights = jnp.ones(images.shape[:1], jnp.float32)
        if self.gradient_estimator == "dreg":
            terms, surrogate = self._dreg_terms(params, apply_fn, images, key, beta, weights)
        else:
            terms, mean, logvar = self.terms(params, apply_fn, images, key, beta)
        num_images = jnp.sum(weights)

        def batch_mean(values):
            return jnp.sum(weights * values) / num_images

        recon, kl = batch_mean(terms.recon), batch_mean(terms.kl)
        if self.free_bits > 0:
            value = recon + beta * free_bits_kl(mean, logvar, weights, self.free_bits)
        else:
            value = batch_mean(terms.loss)
        if self.gradient_estimator == "dreg":
            # The value of the bound, the gradient of the surrogate.
            value = jax.lax.stop_gradient(value) + surrogate - jax.lax.stop_gradient(surrogate)
        metrics = {"objective": value, "loss": recon + beta * kl, "recon": recon, "kl": kl}
        return value, metrics

    def _dreg_terms(self, params, apply_fn, images, key, beta, weights):
        """The iwae terms, and a scalar whose gradient is DReG's (Tucker et al. 2019).

        With normalized weights w~_i = softmax(log w)_i, the gradient of L_k is
        sum_i w~_i grad_theta log w_i for the decoder, and through z_i for the encoder,
        with q's parameters held fixed in log q:
            sum_i ((1 - beta) w~_i + beta w~_i^2) d log w_i / d z_i  d z_i / d phi,
        which at beta = 1 is DReG's w~_i^2 (the score-function term rewritten by
        reparameterization). One decoder pass; its vjp taken twice, once per weighting.
        """
        mean, logvar = apply_fn({"params": params}, images, method="encode")
        shape = (self.num_samples, *mean.shape)
        # The draws of `decode_samples`, so the value equals the standard estimator's.
        z = reparameterize(key, jnp.broadcast_to(mean, shape), jnp.broadcast_to(logvar, shape))
        fixed_mean, fixed_logvar = jax.lax.stop_gradient((mean, logvar))

        def log_weights(params, z):
            logits = apply_fn({"params": params}, z, method="decode")
            log_likelihood = -self.likelihood_nll(logits, images[None])
            log_w = log_importance_weights(
                log_likelihood, z, fixed_mean[None], fixed_logvar[None], beta
            )
            return log_w, logits

        log_w, vjp, logits = jax.vjp(log_weights, params, z, has_aux=True)
        normalized = jax.nn.softmax(jax.lax.stop_gradient(log_w), axis=0)  # [k, batch]
        image_weights = (weights / jnp.sum(weights))[None]
        decoder_grads, _ = vjp(normalized * image_weights)
        _, z_grads = vjp(((1 - beta) * normalized + beta * jnp.square(normalized)) * image_weights)
        decoder_grads, z_grads = jax.lax.stop_gradient((decoder_grads, z_grads))
        bound_surrogate = jnp.vdot(z_grads, z) + optax.tree.vdot(decoder_grads, params)
        terms = negative_iwae_bound(
            logits, images, z, mean, logvar, beta, self.reconstruction, self.recon_scale
        )
        return terms, -bound_surrogate
