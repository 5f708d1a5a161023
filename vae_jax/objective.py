"""What training minimises: one static `Objective`, and the batch loss it defines.

An `Objective` is a frozen dataclass, so it is hashable and passes to jitted functions
as a static argument: the bound and the schedule are compiled into the program, while
the KL weight `beta` stays a traced value (a sweep vmaps over it).

It works with any latent-variable model that has the interface of `vae_jax.models`
(`posterior`, `log_prior`, `decode`, and `likelihood`, `analytic_kl` and, for DReG,
`log_posterior` where it has them), called through the model's `apply`. The likelihood
p(x|z) is the model's: an objective says how to bound it, not what it is.
"""

import dataclasses
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from vae_jax import likelihoods
from vae_jax.divergences import (
    MMD_KERNELS,
    TC_ESTIMATORS,
    KlParts,
    kl_decomposition,
    mmd_squared,
)
from vae_jax.inputs import to_unit_interval
from vae_jax.losses import (
    DEFAULT_SCALE,
    RECONSTRUCTIONS,
    ElboTerms,
    free_bits_kl,
    log_importance_weights,
    negative_ciwae_bound,
    negative_iwae_bound,
    negative_miwae_bound,
)
from vae_jax.models import (
    PosteriorDraw,
    closed_form_kl,
    draw_posterior,
    model_images,
    model_of,
    negative_log_likelihood,
)
from vae_jax.schedules import BetaSchedule

BOUNDS = ("elbo", "iwae", "miwae", "ciwae", "piwae", "btcvae", "infovae", "wae")
# The importance-weighted family (Burda et al. 2016; Rainforth et al. 2018): k draws an image.
IMPORTANCE_WEIGHTED = ("iwae", "miwae", "ciwae", "piwae")
GROUPED = ("miwae", "piwae")  # M groups of K draws
MMD_BOUNDS = ("infovae", "wae")
GRADIENT_ESTIMATORS = ("standard", "dreg")
# Top-level parameter names of q(z|x) (a VAE's encoder and flow, a hierarchy's encoders):
# PIWAE trains them on MIWAE, the rest of the model on IWAE.
INFERENCE_PARAMS = ("encoder", "flow")

# A likelihood: (decoder_output [..., pixels], images [..., pixels]) -> -log p(x|z) [...].
Likelihood = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Objective:
    """The training objective: recon + beta * KL (elbo), a bound of the importance-weighted
    family, or a regularised objective, per image.

    Attributes:
      bound: what to minimise:
        "elbo": recon + beta * KL, one z per image, with the KL in closed form where the
          model has it (one Gaussian layer, prior N(0, I)), else a one-draw Monte Carlo
          estimate;
        "iwae": -L_k, the k-sample bound of Burda et al. (2016), k = `num_samples`;
        "miwae", "ciwae", "piwae": the variants of Rainforth et al. (2018, "Tighter
          Variational Bounds are Not Necessarily Better"): MIWAE, the average of
          `num_groups` IWAE bounds of `num_samples` draws each; CIWAE, `ciwae_beta` ELBO +
          (1 - `ciwae_beta`) IWAE of the same draws; PIWAE, IWAE of all the M K draws for
          the generative model and MIWAE(M, K) of the same draws for q's parameters
          (`INFERENCE_PARAMS`), its value the IWAE bound;
        "btcvae": beta-TCVAE (Chen et al. 2018): recon + beta * (MI + `tc_weight` TC +
          dimension-wise KL), the KL's parts estimated from the batch
          (`vae_jax.divergences.kl_decomposition`, `tc_estimator`, `dataset_size`); one
          layer with a Gaussian posterior;
        "infovae": InfoVAE (Zhao et al. 2019) as MMD-VAE: recon + beta * KL +
          `mmd_weight` MMD^2(q(z), p(z)) over the batch (Zhao et al.'s alpha = 1 - beta,
          lambda = `mmd_weight` + beta);
        "wae": WAE-MMD (Tolstikhin et al. 2018) with a stochastic encoder: recon +
          `mmd_weight` MMD^2(q(z), p(z)), no KL.
      num_samples: k, the z draws per image (per group, for miwae and piwae) of the
        importance-weighted family; 1 for the others.
      num_groups: M, the groups of k draws of miwae and piwae; 1 for the others.
      ciwae_beta: the ELBO's share of ciwae, in [0, 1].
      tc_weight: the weight of the total correlation in btcvae (the paper's beta).
      tc_estimator: "mws" (minibatch-weighted) or "mss" (minibatch-stratified sampling)
        estimates of btcvae's log q(z) and log prod_d q(z_d).
      dataset_size: N, the training images, of btcvae's estimators; 0: the batch's.
      mmd_weight, mmd_kernel, mmd_bandwidth: the MMD term of infovae and wae: its weight,
        its kernel ("imq", inverse multiquadratic, or "rbf") and the prior's standard
        deviation the kernel's scale is set from (`divergences.kernel_scale`).
      reconstruction: deprecated, and None by default: the likelihood is the model's
        (`VAE(likelihood=...)`), so that the model scores itself everywhere. Given (a
        name among `losses.RECONSTRUCTIONS`, a likelihood or a function), it overrides
        the model's in this objective's losses and bounds, with a DeprecationWarning.
      recon_scale: the named gaussian's std or laplace's scale of `reconstruction`.
      free_bits: with elbo, a floor in nats on each latent dimension's batch-mean KL
        (Kingma et al. 2016); 0 is off. Needs a closed-form KL.
      beta_schedule: the factor in [0, 1] on beta at each optimiser step.
      gradient_estimator: "standard" differentiates the bound as it is; "dreg" (iwae
        only) gives the encoder the doubly-reparameterized gradient of Tucker et al.
        (2019), whose signal-to-noise ratio does not fall with k. The generative
        model's gradient and the loss value are the standard ones.
    """

    bound: str = "elbo"
    num_samples: int = 1
    reconstruction: str | Likelihood | None = None
    recon_scale: float = DEFAULT_SCALE
    free_bits: float = 0.0
    beta_schedule: BetaSchedule = BetaSchedule()
    gradient_estimator: str = "standard"
    num_groups: int = 1
    ciwae_beta: float = 0.5
    tc_weight: float = 6.0
    tc_estimator: str = "mws"
    dataset_size: int = 0
    mmd_weight: float = 100.0
    mmd_kernel: str = "imq"
    mmd_bandwidth: float = 1.0

    def __post_init__(self):
        if self.bound not in BOUNDS:
            raise ValueError(f"unknown bound {self.bound!r}; expected one of {BOUNDS}")
        self._check_variants()
        if self.reconstruction is not None:
            if isinstance(self.reconstruction, str) and self.reconstruction not in RECONSTRUCTIONS:
                raise ValueError(
                    f"unknown reconstruction {self.reconstruction!r}; expected one of "
                    f"{RECONSTRUCTIONS} or a function (decoder_output, images) -> nll per image"
                )
            warnings.warn(
                "Objective(reconstruction=...) is deprecated: give the model its likelihood, "
                "VAE(likelihood=...) (vae_jax.likelihoods), and the bounds, samples and a "
                "loaded run use it too; the objective's overrides the model's in its losses",
                DeprecationWarning,
                stacklevel=3,
            )
        if self.num_samples < 1 or (
            self.bound not in IMPORTANCE_WEIGHTED and self.num_samples != 1
        ):
            raise ValueError(
                f"num_samples={self.num_samples}: >= 1 for {', '.join(IMPORTANCE_WEIGHTED)}, "
                f"1 for {self.bound}"
            )
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

    def _check_variants(self) -> None:
        """ValueError for a setting of the variants out of range, or given to another bound."""
        checks = [
            (self.num_groups >= 1, f"num_groups must be >= 1, got {self.num_groups}"),
            (
                self.num_groups == 1 or self.bound in GROUPED,
                f"num_groups={self.num_groups} is for {' and '.join(GROUPED)}",
            ),
            (0 <= self.ciwae_beta <= 1, f"ciwae_beta must be in [0, 1], got {self.ciwae_beta}"),
            (self.tc_weight >= 0, f"tc_weight must be >= 0, got {self.tc_weight}"),
            (
                self.tc_estimator in TC_ESTIMATORS,
                f"tc_estimator must be one of {TC_ESTIMATORS}, got {self.tc_estimator!r}",
            ),
            (self.dataset_size >= 0, f"dataset_size must be >= 0, got {self.dataset_size}"),
            (self.mmd_weight >= 0, f"mmd_weight must be >= 0, got {self.mmd_weight}"),
            (
                self.mmd_kernel in MMD_KERNELS,
                f"mmd_kernel must be one of {MMD_KERNELS}, got {self.mmd_kernel!r}",
            ),
            (self.mmd_bandwidth > 0, f"mmd_bandwidth must be > 0, got {self.mmd_bandwidth}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def likelihood(self, model):
        """The likelihood this objective scores `model` with: the model's, unless the
        deprecated `reconstruction` overrides it."""
        override = self._likelihood_override()
        return likelihoods.of_model(model) if override is None else override

    def _likelihood_override(self):
        if self.reconstruction is None:
            return None
        return likelihoods.resolve(self.reconstruction, self.recon_scale)

    def inputs(self, apply_fn, images, check_values_on_device: bool = False) -> jax.Array:
        """`images` through the input boundary for the model of `apply_fn`, in [0, 1]."""
        model = model_of(apply_fn)
        if model is not None:
            images = model_images(
                model,
                images,
                check_values_on_device=check_values_on_device,
                likelihood=self.likelihood(model),
            )
        return to_unit_interval(images)

    def scores(self, variables, apply_fn, images, z):
        """-log p(x|z) and log p(z) of draws z (sample axes leading): each [..., batch]."""
        override = self._likelihood_override()
        recon = apply_fn(variables, images, z, override, method=negative_log_likelihood)
        return recon, apply_fn(variables, z, method="log_prior")

    def elbo(
        self, params, apply_fn, images: jax.Array, key: jax.Array, beta: float | jax.Array
    ) -> tuple[ElboTerms, PosteriorDraw]:
        """recon + beta * KL per image [batch] from one draw each, and that draw."""
        variables, images = {"params": params}, self.inputs(apply_fn, images)
        draw = apply_fn(variables, images, key, method=draw_posterior)
        recon, log_prior = self.scores(variables, apply_fn, images, draw.z)
        kl = apply_fn(variables, draw, method=closed_form_kl)
        if kl is None:
            kl = draw.log_q - log_prior
        return ElboTerms(loss=recon + beta * kl, recon=recon, kl=kl), draw

    def terms(
        self, params, apply_fn, images: jax.Array, key: jax.Array, beta: float | jax.Array
    ) -> tuple[ElboTerms, PosteriorDraw]:
        """Per-image terms, each [batch] in nats, and the draws they were computed from.

        `loss` is recon + beta * KL (elbo) or -L_k (iwae; recon is then the mean over
        the k draws of -log p(x|z_i), and kl the closed form or the draws' mean of
        log q - log p).
        """
        if self.bound not in IMPORTANCE_WEIGHTED:
            return self.elbo(params, apply_fn, images, key, beta)
        variables, images = {"params": params}, self.inputs(apply_fn, images)
        num_draws = self.num_samples * self.num_groups
        draw = apply_fn(variables, images, key, num_draws, method=draw_posterior)
        recon, log_prior = self.scores(variables, apply_fn, images, draw.z)
        kl = apply_fn(variables, draw, method=closed_form_kl)
        terms = negative_iwae_bound(recon, log_prior, draw.log_q, beta, kl)  # iwae, piwae
        if self.bound in ("miwae", "ciwae"):
            log_weights = log_importance_weights(-recon, log_prior, draw.log_q, beta)
            if self.bound == "miwae":
                grouped = log_weights.reshape(self.num_groups, self.num_samples, -1)
                loss = negative_miwae_bound(grouped)
            else:
                loss = negative_ciwae_bound(log_weights, self.ciwae_beta)
            terms = terms._replace(loss=loss)
        return terms, draw

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
          images: [batch, pixels], floats in [0, 1] or uint8 pixels (`vae_jax.inputs`).
          key: PRNG key of the z draws.
          beta: the KL weight of this step.
          weights: [batch], 1 for the images that count and 0 for padding; None: all 1.

        Returns:
          The scalar to minimise (nats per image), and the metrics `objective` (that same
          value), `loss` (recon + beta * KL), `recon` and `kl`, all in nats per image.
        """
        images = self.inputs(apply_fn, images)
        if weights is None:
            weights = jnp.ones(images.shape[:1], jnp.float32)
        elif jnp.shape(weights) != images.shape[:1]:
            raise ValueError(
                f"weights must be [batch] = {images.shape[:1]}, got {jnp.shape(weights)}"
            )
        surrogate = None  # a scalar whose gradient replaces the value's
        if self.gradient_estimator == "dreg":
            terms, surrogate = self._dreg_terms(params, apply_fn, images, key, beta, weights)
        elif self.bound == "piwae":
            terms, surrogate = self._piwae_terms(params, apply_fn, images, key, beta, weights)
        else:
            terms, draw = self.terms(params, apply_fn, images, key, beta)
        num_images = jnp.sum(weights)

        def batch_mean(values):
            return jnp.sum(weights * values) / num_images

        recon, kl = batch_mean(terms.recon), batch_mean(terms.kl)
        if surrogate is None and self.bound in ("elbo", "btcvae", *MMD_BOUNDS):
            value = self._batch_value(params, apply_fn, terms, draw, key, beta, weights)
        else:
            value = batch_mean(terms.loss)
        if surrogate is not None:
            # The value of the bound, the gradient of the surrogate.
            value = jax.lax.stop_gradient(value) + surrogate - jax.lax.stop_gradient(surrogate)
        metrics = {"objective": value, "loss": recon + beta * kl, "recon": recon, "kl": kl}
        return value, metrics

    def _batch_value(self, params, apply_fn, terms, draw, key, beta, weights) -> jax.Array:
        """The value of the objectives that need more than each image's terms: the ELBO
        with free bits, beta-TCVAE and the MMD objectives (else the terms' mean)."""

        def batch_mean(values):
            return jnp.sum(weights * values) / jnp.sum(weights)

        recon = batch_mean(terms.recon)
        if self.free_bits > 0:
            if apply_fn({"params": params}, draw, method=closed_form_kl) is None:
                raise ValueError("free_bits needs a closed-form KL: one layer, prior N(0, I)")
            return recon + beta * free_bits_kl(*draw.gaussians[0], weights, self.free_bits)
        if self.bound == "btcvae":
            parts = self._kl_parts(params, apply_fn, draw, weights)
            weighted = parts.mutual_information + self.tc_weight * parts.total_correlation
            return recon + beta * batch_mean(weighted + parts.dimensionwise_kl)
        if self.bound in MMD_BOUNDS:
            divergence = self._mmd(params, apply_fn, draw, key, weights)
            base = recon if self.bound == "wae" else batch_mean(terms.loss)
            return base + self.mmd_weight * divergence
        return batch_mean(terms.loss)

    def _kl_parts(self, params, apply_fn, draw: PosteriorDraw, weights) -> KlParts:
        """btcvae's split of each draw's KL, from the batch (`divergences.kl_decomposition`)."""
        model = model_of(apply_fn)
        if len(draw.z) != 1 or getattr(model, "flow", None) is not None:
            raise ValueError(
                "btcvae splits the KL of one diagonal Gaussian layer: use one stochastic "
                "layer and no flow"
            )
        log_prior = apply_fn({"params": params}, draw.z, method="log_prior")
        dataset_size = self.dataset_size or jnp.sum(weights)
        (mean, logvar), (z,) = draw.gaussians[0], draw.z
        return kl_decomposition(
            z, mean, logvar, log_prior, dataset_size, self.tc_estimator, weights
        )

    def _mmd(self, params, apply_fn, draw: PosteriorDraw, key, weights) -> jax.Array:
        """MMD^2 between the batch's draws of q(z) = E_x q(z|x) and as many of p(z)."""
        codes = jnp.concatenate(draw.z, axis=-1)
        prior_key = jax.random.fold_in(key, 1)  # the posterior's draws take `key` itself
        prior = apply_fn({"params": params}, prior_key, codes.shape[0], method="sample_prior")
        return mmd_squared(
            codes,
            jnp.concatenate(prior, axis=-1),
            self.mmd_kernel,
            self.mmd_bandwidth,
            weights,
        )

    def _piwae_terms(self, params, apply_fn, images, key, beta, weights):
        """PIWAE's terms (those of IWAE over all M K draws), and a scalar whose gradient is
        IWAE's for the generative model and MIWAE(M, K)'s for q (`INFERENCE_PARAMS`).

        The same draws scored twice: once with q's parameters held fixed (IWAE), once
        with the rest held fixed (MIWAE).
        """
        inference = {name for name in params if name.startswith(INFERENCE_PARAMS)}

        def held(names):
            return {
                name: jax.lax.stop_gradient(value) if name in names else value
                for name, value in params.items()
            }

        iwae_terms, _ = self.terms(held(inference), apply_fn, images, key, beta)
        grouped = dataclasses.replace(self, bound="miwae")
        generative = set(params) - inference
        miwae_terms, _ = grouped.terms(held(generative), apply_fn, images, key, beta)
        image_weights = weights / jnp.sum(weights)
        surrogate = jnp.sum(image_weights * (iwae_terms.loss + miwae_terms.loss))
        return iwae_terms, surrogate

    def _dreg_terms(self, params, apply_fn, images, key, beta, weights):
        """The iwae terms, and a scalar whose gradient is DReG's (Tucker et al. 2019).

        With normalized weights w~_i = softmax(log w)_i, the gradient of L_k is
        sum_i w~_i d log w_i / d theta at fixed z for the model's parameters, and through
        the draws z_i for the encoder, with q's parameters held fixed in log q:
            sum_i ((1 - beta) w~_i + beta w~_i^2) d log w_i / d z_i  d z_i / d phi,
        which at beta = 1 is DReG's w~_i^2 (the score-function term rewritten by
        reparameterization). For a hierarchy, d log w / d z_i is taken for every layer,
        and z's own dependence between layers is followed by the chain rule. A prior
        built from the encoder (the VampPrior) passes its gradient through the first
        term. One pass of the generative model; its vjp taken twice, once per weighting.
        """
        variables, images = {"params": params}, self.inputs(apply_fn, images)
        draw = apply_fn(variables, images, key, self.num_samples, method=draw_posterior)
        fixed = {"params": jax.lax.stop_gradient(params)}

        def log_weights(params, z):
            recon, log_prior = self.scores({"params": params}, apply_fn, images, z)
            log_q = apply_fn(fixed, images, z, method="log_posterior")
            return log_importance_weights(-recon, log_prior, log_q, beta), (recon, log_prior, log_q)

        log_w, vjp, (recon, log_prior, log_q) = jax.vjp(log_weights, params, draw.z, has_aux=True)
        normalized = jax.nn.softmax(jax.lax.stop_gradient(log_w), axis=0)  # [k, batch]
        image_weights = (weights / jnp.sum(weights))[None]
        model_grads, _ = vjp(normalized * image_weights)
        _, z_grads = vjp(((1 - beta) * normalized + beta * jnp.square(normalized)) * image_weights)
        model_grads, z_grads = jax.lax.stop_gradient((model_grads, z_grads))
        bound_surrogate = optax.tree.vdot(z_grads, draw.z) + optax.tree.vdot(model_grads, params)
        kl = apply_fn(variables, draw, method=closed_form_kl)
        return negative_iwae_bound(recon, log_prior, log_q, beta, kl), -bound_surrogate
