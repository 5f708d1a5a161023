"""Importance-weighted bounds against a model with a closed-form likelihood; the test
ELBO; latent diagnostics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import bounds
from vae_jax.losses import log_normal_diag, log_standard_normal

# A linear-Gaussian model: p(z) = N(0, I_2), p(x|z) = N(W z + b, s^2 I_5). Then
# p(x) = N(b, W W^T + s^2 I), and with orthogonal columns in W the posterior is diagonal:
# precision I + W^T W / s^2, mean = cov W^T (x - b) / s^2.
LATENT, PIXELS, NOISE_STD = 2, 5, 0.5
_Q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(PIXELS, LATENT)))
W = _Q * np.array([1.5, 0.7])
B = np.linspace(-1.0, 1.0, PIXELS)
POSTERIOR_VAR = 1.0 / (1.0 + np.sum(W**2, axis=0) / NOISE_STD**2)


def true_posterior(x):
    mean = (x - B[None]) @ W * POSTERIOR_VAR[None] / NOISE_STD**2
    return mean, jnp.broadcast_to(jnp.log(POSTERIOR_VAR), mean.shape)


def worse_posterior(x):
    mean, logvar = true_posterior(x)
    return mean + 0.4, logvar + 0.6


def log_likelihood(x, z):
    means = z @ W.T + B[None, None]  # [samples, batch, pixels]
    return log_normal_diag(x[None], means, jnp.full(means.shape, 2 * np.log(NOISE_STD)))


def log_weights_with(encode):
    """log p(x, z) - log q(z|x) of the draws that the noise gives, for the posterior `encode`."""

    def log_weights(x, noise):
        (eps,) = noise  # [samples, batch, latent]
        mean, logvar = encode(x)
        mean, logvar = mean[None], logvar[None]
        z = mean + eps * jnp.exp(0.5 * logvar)
        log_joint = log_likelihood(x, z) + log_standard_normal(z)
        return log_joint - log_normal_diag(z, mean, logvar)

    return log_weights


def exact_log_marginal(x):
    cov = W @ W.T + NOISE_STD**2 * np.eye(PIXELS)
    diff = np.asarray(x, np.float64) - B
    _, logdet = np.linalg.slogdet(cov)
    return -0.5 * (
        np.sum(diff @ np.linalg.inv(cov) * diff, -1) + logdet + PIXELS * np.log(2 * np.pi)
    )


@pytest.fixture(scope="module")
def data_points():
    z = np.random.default_rng(1).normal(size=(400, LATENT))
    return (z @ W.T + B + NOISE_STD * np.random.default_rng(2).normal(size=(400, PIXELS))).astype(
        np.float32
    )


def bound(x, encode, num_samples, sample_chunk=None, key=0):
    """L_k per image (the negated -L_k of `negative_importance_weighted_bound`)."""
    fn = jax.jit(
        lambda x, ids: (
            -bounds.negative_importance_weighted_bound(
                jax.random.key(key),
                x,
                ids,
                log_weights_with(encode),
                (LATENT,),
                num_samples,
                sample_chunk or num_samples,
            )
        )
    )
    return np.asarray(fn(jnp.asarray(x), jnp.arange(len(x))), np.float64)


def test_true_posterior_makes_every_bound_exact(data_points):
    exact = exact_log_marginal(data_points)
    for num_samples in (1, 10):
        np.testing.assert_allclose(
            bound(data_points, true_posterior, num_samples), exact, rtol=1e-5
        )


def test_bounds_tighten_towards_the_likelihood(data_points):
    exact = exact_log_marginal(data_points)
    by_k = {k: bound(data_points, worse_posterior, k, sample_chunk=500) for k in (1, 10, 100, 5000)}
    means = [by_k[k].mean() for k in (1, 10, 100, 5000)]
    # L_1 <= L_10 <= L_100 <= L_5000 <= log p(x), on average over images.
    assert means == sorted(means)
    assert means[-1] <= exact.mean() + 1e-3
    gaps = {k: exact - by_k[k] for k in by_k}
    assert gaps[1].mean() > 0.1  # the worse q leaves a real gap at k = 1 ...
    # ... that closes at large k, to within the standard error of the difference.
    stderr = gaps[5000].std(ddof=1) / np.sqrt(len(data_points))
    assert abs(gaps[5000].mean()) < 3 * stderr + 1e-3


def test_chunking_changes_nothing(data_points):
    x = data_points[:50]
    whole = bound(x, worse_posterior, 60, sample_chunk=60)
    np.testing.assert_allclose(bound(x, worse_posterior, 60, sample_chunk=7), whole, rtol=1e-5)
    # Image batches: each image keeps its draws through its id.
    fn = jax.jit(
        lambda x, ids: (
            -bounds.negative_importance_weighted_bound(
                jax.random.key(0), x, ids, log_weights_with(worse_posterior), (LATENT,), 60, 60
            )
        )
    )
    halves = np.concatenate(
        [fn(jnp.asarray(x[:20]), jnp.arange(20)), fn(jnp.asarray(x[20:]), jnp.arange(20, 50))]
    )
    np.testing.assert_allclose(halves, whole, rtol=1e-5)


def test_vae_estimate_is_chunk_invariant_and_ordered(tiny_vae):
    model, params, images = tiny_vae
    key = jax.random.key(5)
    direct = bounds.model_negative_bound(
        model, params, jnp.asarray(images), jnp.arange(30), key, num_samples=40, sample_chunk=40
    )
    chunked = bounds.estimate_negative_bound(model, params, images, key, 40, max_rows=16)
    np.testing.assert_allclose(chunked, direct, rtol=1e-5)
    neg_l1 = bounds.estimate_negative_bound(model, params, images, key, 1)
    assert neg_l1.mean() > chunked.mean()  # -L_1 >= -L_40
    # The same bound as the ELBO's loss, -L_1, up to the draws: the sign of a loss.
    elbo = bounds.elbo_terms(model, params, jnp.asarray(images), key).loss
    assert abs(float(elbo.mean()) - neg_l1.mean()) < 5 * float(elbo.std()) / np.sqrt(len(images))


def test_bounds_take_uint8_pixels_as_their_unit_interval_floats(tiny_vae):
    model, params, binary = tiny_vae
    pixels = (binary[:20] * np.linspace(0, 255, 36)).astype(np.uint8)  # as load_dataset's
    floats = pixels.astype(np.float32) / 255
    key = jax.random.key(2)
    uint8_terms = bounds.elbo_terms(model, params, jnp.asarray(pixels), key)
    float_terms = bounds.elbo_terms(model, params, jnp.asarray(floats), key)
    assert np.all(np.isfinite(uint8_terms.loss))
    np.testing.assert_allclose(uint8_terms.loss, float_terms.loss, rtol=1e-6)
    np.testing.assert_allclose(
        bounds.estimate_negative_bound(model, params, pixels, key, 10),
        bounds.estimate_negative_bound(model, params, floats, key, 10),
        rtol=1e-6,
    )


def test_active_units_and_kl_per_dimension():
    rng = np.random.default_rng(0)
    # Dimension 0 carries information (means spread over images); dimension 1 has
    # collapsed to the prior (mean 0, variance 1); dimension 2 varies just below threshold.
    mean = np.stack([rng.normal(size=1000), np.zeros(1000), 0.05 * rng.normal(size=1000)], 1)
    logvar = np.stack([np.full(1000, -2.0), np.zeros(1000), np.zeros(1000)], 1)
    assert bounds.active_units(jnp.asarray(mean)) == 1
    kl = np.asarray(bounds.kl_per_dimension(jnp.asarray(mean), jnp.asarray(logvar)))
    assert kl[1] == 0.0
    expected0 = np.mean(0.5 * (np.exp(-2.0) + mean[:, 0] ** 2 - 1 + 2.0))
    assert kl[0] == pytest.approx(expected0, rel=1e-5)


def test_mean_and_stderr():
    value, stderr = bounds.mean_and_stderr(np.array([1.0, 2.0, 3.0, 4.0]))
    assert value == 2.5 and stderr == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)


def test_image_ids_fix_each_images_draws(tiny_vae):
    model, params, images = tiny_vae
    key = jax.random.key(3)
    whole = bounds.estimate_negative_bound(model, params, images, key, 5)
    tail = bounds.estimate_negative_bound(
        model, params, images[10:], key, 5, image_ids=np.arange(10, 30)
    )
    np.testing.assert_allclose(tail, whole[10:], rtol=1e-6)
    shifted = bounds.estimate_negative_bound(model, params, images[10:], key, 5)
    assert not np.allclose(shifted, whole[10:])  # other ids, other draws
    for bad in (np.arange(5), np.arange(20.0), np.arange(-1, 19)):
        with pytest.raises(ValueError, match="image_ids must"):
            bounds.estimate_negative_bound(model, params, images[10:], key, 5, image_ids=bad)
