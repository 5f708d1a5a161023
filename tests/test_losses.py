"""Loss terms against closed forms, hand-computed values and a PyTorch-style reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import losses


def torch_style_bce(probabilities, targets):
    """PyTorch's binary_cross_entropy(p, x, reduction='sum') per row, in float64 numpy
    (it clamps each log at -100)."""
    p = np.asarray(probabilities, np.float64)
    x = np.asarray(targets, np.float64)
    log_p = np.maximum(np.log(p), -100.0)
    log_not_p = np.maximum(np.log1p(-p), -100.0)
    return -np.sum(x * log_p + (1 - x) * log_not_p, axis=-1)


@pytest.mark.parametrize("binary", [False, True])
def test_bernoulli_nll_equals_sigmoid_then_bce(binary):
    rng = np.random.default_rng(0)
    logits = rng.uniform(-12.0, 12.0, (8, 784)).astype(np.float32)
    targets = rng.uniform(0.0, 1.0, (8, 784)).astype(np.float32)
    if binary:
        targets = (targets > 0.5).astype(np.float32)
    expected = torch_style_bce(1.0 / (1.0 + np.exp(-logits.astype(np.float64))), targets)
    got = jax.jit(losses.bernoulli_nll)(logits, targets)
    assert got.shape == (8,)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_bernoulli_nll_known_values():
    # Logit 0 is p = 1/2: log 2 nats per pixel whatever the target.
    np.testing.assert_allclose(
        losses.bernoulli_nll(jnp.zeros((2, 10)), jnp.array([[0.0] * 10, [0.3] * 10])),
        [10 * np.log(2.0)] * 2,
        rtol=1e-6,
    )
    # Logit l against target 1: softplus(-l) = log(1 + e^-l).
    np.testing.assert_allclose(
        losses.bernoulli_nll(jnp.array([[2.0, -3.0]]), jnp.array([[1.0, 1.0]])),
        [np.log1p(np.exp(-2.0)) + np.log1p(np.exp(3.0))],
        rtol=1e-6,
    )


def test_bernoulli_nll_finite_and_exact_at_extreme_logits():
    logits = jnp.array([[1e4, -1e4, 1e4, -1e4]])
    targets = jnp.array([[1.0, 0.0, 0.0, 1.0]])
    value = losses.bernoulli_nll(logits, targets)
    # Right answers cost nothing; confidently wrong ones cost |logit| nats each.
    np.testing.assert_allclose(value, [2e4], rtol=1e-6)
    grads = jax.grad(lambda x: losses.bernoulli_nll(x, targets).sum())(logits)
    assert np.all(np.isfinite(grads))
    # d/dl = sigmoid(l) - x.
    np.testing.assert_allclose(grads, [[0.0, 0.0, 1.0, -1.0]], atol=1e-6)


@pytest.mark.parametrize(
    "nll, per_pixel",
    [
        (
            losses.gaussian_nll,
            lambda d, s: 0.5 * (d / s) ** 2 + np.log(s) + 0.5 * np.log(2 * np.pi),
        ),
        (losses.laplace_nll, lambda d, s: np.abs(d) / s + np.log(2 * s)),
    ],
)
def test_continuous_likelihoods_closed_form(nll, per_pixel):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 20)).astype(np.float32)
    images = rng.uniform(size=(4, 20)).astype(np.float32)
    scale = 0.3
    mean = 1 / (1 + np.exp(-logits.astype(np.float64)))
    expected = np.sum(per_pixel(images - mean, scale), axis=-1)
    np.testing.assert_allclose(jax.jit(nll)(logits, images, scale), expected, rtol=1e-5)
    assert np.all(np.isfinite(nll(jnp.full((1, 3), 1e4), jnp.ones((1, 3)), scale)))


def _continuous_bernoulli_density(logit: float, x: np.ndarray) -> np.ndarray:
    """The density at pixels x [n] for one logit, through the library's -log p."""
    logits = jnp.full((len(x), 1), logit, jnp.float32)
    return np.exp(-np.asarray(losses.continuous_bernoulli_nll(logits, jnp.asarray(x)[:, None])))


@pytest.mark.parametrize("logit", [-20.0, -7.5, -1.0, -0.05, 0.0, 0.099, 0.1, 0.3, 3.0, 20.0])
def test_continuous_bernoulli_integrates_to_one(logit):
    x = np.linspace(0.0, 1.0, 200_001)
    density = _continuous_bernoulli_density(logit, x).astype(np.float64)
    assert np.trapezoid(density, x) == pytest.approx(1.0, abs=2e-4)


def test_continuous_bernoulli_known_values():
    # lambda = 3/4 (logit log 3): C = 2 artanh(-1/2) / (-1/2) = 4 artanh(1/2) = 2 log 3.
    log3 = float(np.log(3.0))
    density = _continuous_bernoulli_density(log3, np.array([0.0, 1.0, 0.5]))
    np.testing.assert_allclose(
        density, 2 * log3 * np.array([0.25, 0.75, np.sqrt(0.75 * 0.25)]), rtol=1e-5
    )
    # lambda = 1/2 is the uniform density; the series and the closed form meet at the switch.
    np.testing.assert_allclose(_continuous_bernoulli_density(0.0, np.array([0.2, 0.9])), 1.0)
    switch = losses.CB_TAYLOR_BELOW
    below, above = losses.continuous_bernoulli_log_normalizer(
        jnp.array([np.nextafter(switch, 0, dtype=np.float32), switch], jnp.float32)
    )
    assert abs(below - above) < 1e-6
    # Large logits: log C -> log |l|, finite at +-1e4.
    extreme = losses.continuous_bernoulli_log_normalizer(jnp.array([-1e4, 1e4]))
    np.testing.assert_allclose(extreme, np.log(1e4), rtol=1e-6)


@pytest.mark.parametrize("logit", [0.0, 0.1, -0.1, 0.0999, 1e4, -1e4])
def test_continuous_bernoulli_gradients_are_finite(logit):
    def nll(logit):
        return losses.continuous_bernoulli_nll(
            jnp.full((1, 3), logit), jnp.array([[0.0, 0.4, 1.0]])
        )[0]

    value, grad = jax.value_and_grad(nll)(jnp.float32(logit))
    assert np.isfinite(value) and np.isfinite(grad)


def test_reconstruction_nll_dispatches_and_rejects_unknown():
    logits, images = jnp.ones((2, 5)), jnp.full((2, 5), 0.5)
    np.testing.assert_array_equal(
        losses.reconstruction_nll(logits, images, "laplace", 0.5),
        losses.laplace_nll(logits, images, 0.5),
    )
    with pytest.raises(ValueError, match="unknown reconstruction"):
        losses.reconstruction_nll(logits, images, "poisson")


def test_kl_is_zero_at_standard_normal_and_matches_closed_form():
    np.testing.assert_array_equal(
        losses.kl_to_standard_normal(jnp.zeros((3, 7)), jnp.zeros((3, 7))), 0.0
    )
    # One dimension with mean 1, variance e: 0.5 * (e + 1 - 1 - 1) = 0.5 * (e - 1).
    np.testing.assert_allclose(
        losses.kl_to_standard_normal(jnp.array([[1.0]]), jnp.array([[1.0]])),
        [0.5 * (np.e - 1)],
        rtol=1e-6,
    )


def test_kl_matches_monte_carlo():
    mean = jnp.array([[0.5, -1.0, 2.0]])
    logvar = jnp.array([[0.3, -0.7, 0.1]])
    num_draws = 400_000
    std = jnp.exp(0.5 * logvar)
    z = mean + std * jax.random.normal(jax.random.key(0), (num_draws, 3))
    # log q(z) - log p(z) per draw, summed over dimensions.
    log_ratio = jnp.sum(
        -0.5 * jnp.square((z - mean) / std) - 0.5 * logvar + 0.5 * jnp.square(z), axis=-1
    )
    estimate = float(jnp.mean(log_ratio))
    standard_error = float(jnp.std(log_ratio)) / np.sqrt(num_draws)
    exact = float(losses.kl_to_standard_normal(mean, logvar)[0])
    assert abs(estimate - exact) < 4 * standard_error


def test_negative_elbo_terms():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(5, 30)).astype(np.float32)
    images = (rng.uniform(size=(5, 30)) > 0.5).astype(np.float32)
    mean = rng.normal(size=(5, 4)).astype(np.float32)
    logvar = rng.normal(size=(5, 4)).astype(np.float32)
    terms = losses.negative_elbo(logits, images, mean, logvar, beta=2.5)
    np.testing.assert_allclose(terms.recon, losses.bernoulli_nll(logits, images))
    np.testing.assert_allclose(terms.kl, losses.kl_to_standard_normal(mean, logvar))
    np.testing.assert_allclose(terms.loss, terms.recon + 2.5 * terms.kl, rtol=1e-6)
    assert terms.loss.shape == (5,)
