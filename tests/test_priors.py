"""Priors: the VampPrior and the Gaussian mixture against direct formulas, the Monte Carlo
KL against the closed form, and a prior of your own in place of the built-in."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vae_jax import bounds, data
from vae_jax.losses import log_normal_diag, log_standard_normal
from vae_jax.models import VAE, sample_images
from vae_jax.objective import Objective
from vae_jax.priors import MixtureOfGaussiansPrior, VampPrior, log_gaussian_mixture
from vae_jax.train import create_train_state, init_params, train_step

SMALL = dict(latent=6, hidden_sizes=(32,), image_size=784)


def test_vamp_prior_is_the_mean_of_the_pseudo_inputs_posteriors():
    model = VAE(**SMALL, prior=VampPrior(num_pseudo_inputs=7, image_size=784))
    params = init_params(model, jax.random.key(0))
    # Pseudo-inputs of any value: the prior clips them into [0, 1] before encoding.
    pseudo = jax.random.uniform(jax.random.key(1), (7, 784), minval=-0.5, maxval=1.5)
    params = {**params, "prior": {"pseudo_inputs": pseudo}}
    z = 2.0 * jax.random.normal(jax.random.key(2), (3, 5, 6))
    log_p = model.apply({"params": params}, (z,), method="log_prior")
    # Directly: log (1/K) sum_k N(z | q(z | clip(u_k))), from the encoder's own output.
    mean, logvar = model.apply({"params": params}, jnp.clip(pseudo, 0, 1), method="encode")
    per_component = jax.vmap(lambda m, lv: log_normal_diag(z, m[None, None], lv[None, None]))(
        mean, logvar
    )  # [K, 3, 5]
    expected = jax.nn.logsumexp(per_component, axis=0) - np.log(7)
    assert log_p.shape == (3, 5)
    np.testing.assert_allclose(log_p, expected, rtol=1e-5, atol=1e-4)


def test_gaussian_mixture_log_density_and_samples():
    means = jnp.array([[0.0, 0.0], [3.0, -1.0], [-2.0, 4.0]])
    logvars = jnp.array([[0.0, 0.0], [-1.0, 0.5], [1.0, -2.0]])
    log_weights = jnp.log(jnp.array([0.2, 0.3, 0.5]))
    z = jax.random.normal(jax.random.key(0), (4, 2)) * 3
    direct = jax.nn.logsumexp(
        jnp.stack(
            [log_normal_diag(z, m[None], lv[None]) for m, lv in zip(means, logvars, strict=True)]
        )
        + log_weights[:, None],
        axis=0,
    )
    np.testing.assert_allclose(log_gaussian_mixture(z, means, logvars, log_weights), direct, 1e-5)
    # A single unit component is the standard normal.
    np.testing.assert_allclose(
        log_gaussian_mixture(z, jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.zeros(1)),
        log_standard_normal(z),
        rtol=1e-6,
    )
    prior = MixtureOfGaussiansPrior(latent=2, num_components=3)
    variables = prior.init(jax.random.key(1), z, method="log_prob")
    params = {"means": means, "logvars": logvars, "logits": log_weights}
    draws = prior.apply({"params": params}, jax.random.key(2), 20000, method="sample")
    # The mixture's mean is sum_c pi_c mu_c.
    np.testing.assert_allclose(draws.mean(0), np.exp(log_weights) @ means, atol=0.06)
    assert variables["params"]["means"].shape == (3, 2)


def test_monte_carlo_kl_matches_the_closed_form(images):
    model = VAE(**SMALL)
    params = init_params(model, jax.random.key(0))
    batch = data.to_unit_interval(images[:16])

    def kls(key):
        draw = model.apply({"params": params}, batch, key, method="sample_posterior")
        log_p = model.apply({"params": params}, draw.z, method="log_prior")
        closed = model.apply({"params": params}, draw, method="analytic_kl")
        return draw.log_q - log_p, closed

    monte_carlo, closed = jax.jit(jax.vmap(kls))(jax.random.split(jax.random.key(1), 4000))
    stderr = monte_carlo.std(0) / np.sqrt(4000)
    assert np.all(np.abs(monte_carlo.mean(0) - closed[0]) < 4 * stderr)


class MyStandardNormal(nn.Module):
    """N(0, I) written as a user would: no closed-form KL, so the ELBO is Monte Carlo."""

    latent: int

    def log_prob(self, z, encoder=None):
        return jnp.sum(-0.5 * z**2 - 0.5 * jnp.log(2 * jnp.pi), axis=-1)

    def sample(self, key, num_samples, encoder=None):
        return jax.random.normal(key, (num_samples, self.latent))


def test_a_custom_prior_equal_to_the_standard_one_gives_the_same_bounds(images):
    standard = VAE(**SMALL)
    custom = VAE(**SMALL, prior=MyStandardNormal(6))
    params = init_params(standard, jax.random.key(0))
    assert jax.tree.structure(params) == jax.tree.structure(init_params(custom, jax.random.key(0)))
    test_images = data.to_unit_interval(images[:40])
    for k in (1, 20):
        np.testing.assert_allclose(
            bounds.estimate_negative_bound(custom, params, test_images, jax.random.key(3), k),
            bounds.estimate_negative_bound(standard, params, test_images, jax.random.key(3), k),
            rtol=1e-6,
        )
    # The ELBO: a Monte Carlo KL for the custom prior, the closed form for the built-in;
    # the same recon, and the same value in expectation over draws.
    keys = jax.random.split(jax.random.key(4), 2000)

    def elbos(model):
        return jax.jit(
            jax.vmap(lambda key: Objective().elbo(params, model.apply, test_images, key, 1.0)[0])
        )(keys)

    mine, builtin = elbos(custom), elbos(standard)
    np.testing.assert_allclose(mine.recon, builtin.recon, rtol=1e-6)
    difference = mine.loss - builtin.loss
    assert not np.allclose(difference, 0)
    stderr = difference.std(0) / np.sqrt(len(keys))
    assert np.all(np.abs(difference.mean(0)) < 4 * stderr)
    # The pictures draw from the model's prior: the same draws from the same key.
    np.testing.assert_allclose(
        sample_images(custom, params, jax.random.key(5), 4),
        sample_images(standard, params, jax.random.key(5), 4),
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    "prior",
    [VampPrior(num_pseudo_inputs=10, image_size=784), MixtureOfGaussiansPrior(6, 4)],
    ids=["vamp", "mog"],
)
def test_learned_priors_train_and_their_parameters_move(images, prior):
    model = VAE(**SMALL, prior=prior)
    state = create_train_state(model, jax.random.key(0), optax.adam(1e-3))
    before = jax.tree.map(np.asarray, state.params["prior"])
    batch = data.to_unit_interval(images[:128])
    losses = []
    for step in range(20):
        state, metrics = train_step(state, batch, jax.random.key(step))
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    moved = jax.tree.map(lambda a, b: not np.allclose(a, b), before, state.params["prior"])
    assert all(jax.tree.leaves(moved))
    # Its samples are probabilities of the right shape.
    pictures = sample_images(model, state.params, jax.random.key(1), 5)
    assert pictures.shape == (5, 784) and np.all((pictures > 0) & (pictures < 1))


def test_the_standard_prior_keeps_the_closed_form_kl():
    model = VAE(**SMALL)
    params = init_params(model, jax.random.key(0))
    draw = model.apply(
        {"params": params}, jnp.full((2, 784), 0.5), jax.random.key(1), method="sample_posterior"
    )
    mean, logvar = draw.gaussians[0]
    closed = model.apply({"params": params}, draw, method="analytic_kl")
    np.testing.assert_allclose(
        closed, 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1 - logvar, -1), rtol=1e-6
    )
    vamp = VAE(**SMALL, prior=VampPrior(3, 784))
    vamp_params = init_params(vamp, jax.random.key(0))
    assert vamp.apply({"params": vamp_params}, draw, method="analytic_kl") is None
