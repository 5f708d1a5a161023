"""The estimators of vae_jax/divergences.py: the KL's decomposition of beta-TCVAE and the
MMD of InfoVAE and WAE, against identities and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import divergences
from vae_jax.losses import log_normal_diag, log_standard_normal


def _posteriors(key, num_images=32, latent=5):
    """Diagonal Gaussians of various means and widths, and one draw from each."""
    keys = jax.random.split(key, 3)
    mean = jax.random.normal(keys[0], (num_images, latent))
    logvar = jax.random.uniform(keys[1], (num_images, latent), minval=-3.0, maxval=0.5)
    z = mean + jax.random.normal(keys[2], mean.shape) * jnp.exp(0.5 * logvar)
    return z, mean, logvar


@pytest.mark.parametrize("estimator", divergences.TC_ESTIMATORS)
def test_the_three_parts_add_up_to_each_draws_kl(estimator):
    z, mean, logvar = _posteriors(jax.random.key(0))
    log_prior = log_standard_normal(z)
    weights = jnp.ones(32).at[-5:].set(0.0)  # a padded batch's last 5 rows
    parts = divergences.kl_decomposition(z, mean, logvar, log_prior, 60_000, estimator, weights)
    total = parts.mutual_information + parts.total_correlation + parts.dimensionwise_kl
    np.testing.assert_allclose(total, log_normal_diag(z, mean, logvar) - log_prior, rtol=1e-5)
    # The padded rows take no part in the others' q(z): changing them changes nothing.
    moved = z.at[-5:].add(100.0), mean.at[-5:].add(100.0)
    again = divergences.kl_decomposition(*moved, logvar, log_prior, 60_000, estimator, weights)
    np.testing.assert_allclose(
        again.total_correlation[:27], parts.total_correlation[:27], rtol=1e-6
    )


def test_the_stratified_weights_of_each_draw_sum_to_one():
    weights = jnp.ones(8).at[-2:].set(0.0)
    matrix = np.exp(np.asarray(divergences.stratified_log_weights(weights, 1000)))
    np.testing.assert_allclose(matrix[:6].sum(1), 1.0, rtol=1e-6)
    assert np.all(matrix[:, 6:] == 0)  # padding
    assert matrix[0, 0] == pytest.approx(1 / 1000) and matrix[5, 0] == pytest.approx(995 / 5000)


def test_one_posterior_for_every_image_in_closed_form():
    """All q(z|x_j) = p(z) = N(0, I): every part is 0 under MSS (its weights sum to 1),
    and MWS's known bias, log N, (D - 1) log N and -D log N, exactly."""
    num_images, latent, size = 16, 5, 1000
    z = jax.random.normal(jax.random.key(1), (num_images, latent))
    mean, logvar = jnp.zeros_like(z), jnp.zeros_like(z)
    log_prior = log_standard_normal(z)
    mss = divergences.kl_decomposition(z, mean, logvar, log_prior, size, "mss")
    for part in mss:
        np.testing.assert_allclose(part, 0.0, atol=2e-5)
    mws = divergences.kl_decomposition(z, mean, logvar, log_prior, size, "mws")
    log_n = np.log(size)
    np.testing.assert_allclose(mws.mutual_information, log_n, rtol=1e-5)
    np.testing.assert_allclose(mws.total_correlation, (latent - 1) * log_n, rtol=1e-5)
    np.testing.assert_allclose(mws.dimensionwise_kl, -latent * log_n, rtol=1e-5)
    information, correlation = divergences.aggregate_information(z, mean, logvar, chunk=5)
    assert abs(float(information)) < 1e-5 and abs(float(correlation)) < 1e-5


def test_total_correlation_is_near_zero_when_factorised_and_positive_when_not():
    """Posteriors N(c_j, 0.3^2 I) about Gaussian codes c_j: their aggregate is close to the
    Gaussian of covariance Cov(c) + 0.09 I, whose total correlation is known."""
    key_a, key_b = jax.random.split(jax.random.key(2))
    codes = jax.random.normal(key_a, (2000, 2))  # independent coordinates
    correlated = jnp.stack([codes[:, 0], codes[:, 0] + 0.1 * codes[:, 1]], axis=1)
    logvar = jnp.full((2000, 2), np.log(0.3**2))
    covariance = np.array([[1.0, 1.0], [1.0, 1.01]]) + 0.09 * np.eye(2)
    gaussian_tc = 0.5 * (np.log(np.diag(covariance)).sum() - np.log(np.linalg.det(covariance)))
    for centres, expected in ((codes, 0.0), (correlated, gaussian_tc)):  # 0 and 0.90 nats
        z = centres + 0.3 * jax.random.normal(key_b, centres.shape)
        _, correlation = divergences.aggregate_information(z, centres, logvar, chunk=256)
        assert float(correlation) == pytest.approx(expected, abs=0.05)


def _rbf_mmd_squared(mu_p, var_p, mu_q, var_q, latent, bandwidth):
    """MMD^2 of N(mu_p, var_p I) and N(mu_q, var_q I) under k = exp(-|a - b|^2 / C), with
    C = 2 D sigma^2, in closed form: E k(a, b) = (s / (s + u + v))^(D/2) exp(-|m|^2 /
    (2 (s + u + v))), s = C / 2, for a ~ N(., u I), b ~ N(., v I), m their means' gap."""
    s = divergences.kernel_scale(latent, bandwidth) / 2

    def expected_kernel(gap, u, v):
        total = s + u + v
        return (s / total) ** (latent / 2) * np.exp(-np.sum(np.square(gap)) / (2 * total))

    return (
        expected_kernel(0.0, var_p, var_p)
        + expected_kernel(0.0, var_q, var_q)
        - 2 * expected_kernel(np.asarray(mu_p) - np.asarray(mu_q), var_p, var_q)
    )


@pytest.mark.parametrize("kernel", divergences.MMD_KERNELS)
def test_the_unbiased_mmd_has_mean_zero_for_one_distribution(kernel):
    keys = jax.random.split(jax.random.key(3), 2)
    draws = jax.vmap(
        lambda k: divergences.mmd_squared(
            jax.random.normal(jax.random.fold_in(k, 0), (16, 3)),
            jax.random.normal(jax.random.fold_in(k, 1), (16, 3)),
            kernel,
        )
    )(jax.random.split(keys[0], 4000))
    stderr = float(jnp.std(draws)) / np.sqrt(len(draws))
    assert abs(float(jnp.mean(draws))) < 4 * stderr  # unbiased: 0, not the V-statistic's > 0


def test_the_rbf_mmd_of_two_gaussians_matches_its_closed_form():
    latent, bandwidth = 3, 0.7
    shift = jnp.array([0.8, -0.4, 0.3])

    def one(key):
        a, b = jax.random.split(key)
        x = jax.random.normal(a, (32, latent))
        y = shift[None] + 1.5 * jax.random.normal(b, (32, latent))
        return divergences.mmd_squared(x, y, "rbf", bandwidth)

    draws = jax.vmap(one)(jax.random.split(jax.random.key(4), 4000))
    expected = _rbf_mmd_squared(np.zeros(latent), 1.0, shift, 1.5**2, latent, bandwidth)
    stderr = float(jnp.std(draws)) / np.sqrt(len(draws))
    assert abs(float(jnp.mean(draws)) - expected) < 4 * stderr
    assert expected > 10 * stderr  # a difference the test can see


def test_padded_rows_leave_the_mmd_unchanged():
    x, y = jax.random.normal(jax.random.key(5), (2, 10, 4))
    weights = jnp.ones(10).at[7:].set(0.0)
    padded = divergences.mmd_squared(x.at[7:].set(50.0), y, "imq", 1.0, weights)
    np.testing.assert_allclose(padded, divergences.mmd_squared(x[:7], y[:7]), rtol=1e-5)
