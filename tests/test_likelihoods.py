"""p(x|z) as a value of the model (vae_jax/likelihoods.py): a model, and a loaded run,
score, sample and reconstruct with their own likelihood, with nothing else passed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vae_jax
from vae_jax import bounds, data, likelihoods, losses, models
from vae_jax.train import init_params


@pytest.mark.parametrize("logit", [-30.0, -4.0, -0.5, -0.05, 0.0, 0.03, 0.09, 0.11, 1.0, 8.0])
def test_the_continuous_bernoulli_mean_is_its_density_s_first_moment(logit):
    x = np.linspace(0.0, 1.0, 200_001)
    log_density = -losses.continuous_bernoulli_nll(
        jnp.full((x.size, 1), logit), jnp.asarray(x[:, None], jnp.float32)
    )
    density = np.exp(np.asarray(log_density, np.float64))
    expected = np.trapezoid(x * density, x)
    got = float(likelihoods.ContinuousBernoulli().mean(jnp.float32(logit)))
    assert got == pytest.approx(expected, abs=2e-5)


def test_the_built_in_likelihoods_by_name_and_their_checks():
    assert likelihoods.named("gaussian", 0.2) == likelihoods.Gaussian(0.2)
    assert likelihoods.resolve(None) == likelihoods.Bernoulli()
    assert likelihoods.of_model(vae_jax.VAE()) == likelihoods.Bernoulli()
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        likelihoods.named("poisson")
    with pytest.raises(ValueError, match="scale must be > 0"):
        likelihoods.Laplace(0.0)
    with pytest.raises(ValueError, match="a likelihood is an object with nll and mean"):
        likelihoods.resolve(3)


def test_a_model_scores_and_draws_with_its_own_likelihood(images):
    batch = np.asarray(data.to_unit_interval(images[:16]))
    bernoulli = vae_jax.VAE(latent=4, hidden_sizes=(16,))
    gaussian = bernoulli.clone(likelihood=likelihoods.Gaussian(0.1))
    params = init_params(bernoulli, jax.random.key(0))  # the same parameters for both
    neg = {
        name: bounds.estimate_negative_bound(model, params, batch, jax.random.key(1), 1)
        for name, model in (("bernoulli", bernoulli), ("gaussian", gaussian))
    }
    assert not np.allclose(neg["bernoulli"], neg["gaussian"])
    # The ELBO's reconstruction term is the Gaussian's, of the decoder's output at its draws.
    elbo = bounds.elbo_terms(gaussian, params, batch, jax.random.key(2))
    expected_recon = losses.gaussian_nll(
        gaussian.apply({"params": params}, elbo_draws(gaussian, params, batch), method="decode"),
        batch,
    )
    np.testing.assert_allclose(elbo.recon, expected_recon, rtol=1e-5)
    continuous = bernoulli.clone(likelihood=likelihoods.ContinuousBernoulli())
    means = models.sample_images(continuous, params, jax.random.key(3), 5)
    logits = continuous.apply(
        {"params": params},
        continuous.apply({"params": params}, jax.random.key(3), 5, method="sample_prior"),
        method="decode",
    )
    np.testing.assert_allclose(means, losses.continuous_bernoulli_mean(logits), rtol=1e-6)


def elbo_draws(model, params, images):
    """The z that `bounds.elbo_terms` draws for each image: from fold_in(its key, i)."""

    def draw(image, image_id):
        key = jax.random.fold_in(jax.random.key(2), image_id)
        return model.apply({"params": params}, image[None], key, method="sample_posterior").z[0][0]

    return jax.vmap(draw)(images, jnp.arange(len(images)))


def _summed_over_the_batch(logits, images):  # PyTorch's reduction='sum' habit
    return jnp.sum(losses.bernoulli_nll(logits, images))


def _per_pixel(logits, images):
    return losses.bernoulli_nll(logits[..., None], images[..., None])


@pytest.mark.parametrize("nll", [_summed_over_the_batch, _per_pixel])
def test_a_likelihood_must_give_one_number_per_image(nll, images):
    model = vae_jax.VAE(latent=4, hidden_sizes=(16,), likelihood=likelihoods.from_function(nll))
    params = init_params(model, jax.random.key(0))
    batch = np.asarray(data.to_unit_interval(images[:8]))
    message = r"it must give -log p\(x\|z\) of each image, shape \(\d+,\)"
    with pytest.raises(ValueError, match=message):
        bounds.elbo_terms(model, params, batch, jax.random.key(1))
    with pytest.raises(ValueError, match=r"of each image, shape \(3, \d+\)"):  # k = 3 draws each
        bounds.estimate_negative_bound(model, params, batch, jax.random.key(1), 3)
    with pytest.raises(ValueError, match=message):
        losses.negative_elbo(
            jnp.zeros((8, 784)), batch, jnp.zeros((8, 4)), jnp.zeros((8, 4)), reconstruction=nll
        )
