"""The two-layer model: its densities against their parts, its bounds ordered in k and
exact under the true posterior of a linear-Gaussian hierarchy, and DReG's gradient on it
against the standard estimator."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vae_jax import bounds, data
from vae_jax.config import Config
from vae_jax.likelihoods import from_function
from vae_jax.losses import log_normal_diag, log_standard_normal
from vae_jax.models import HierarchicalVAE, posterior_gaussians, reconstruct_images, sample_images
from vae_jax.objective import Objective
from vae_jax.priors import VampPrior
from vae_jax.train import create_train_state, init_params, train_step

TWO_LAYERS = HierarchicalVAE(latent=(6, 3), hidden_sizes=(48,))


@pytest.fixture(scope="module")
def trained(images):
    """TWO_LAYERS after 150 steps on binarized digits."""
    state = create_train_state(TWO_LAYERS, jax.random.key(0), optax.adam(2e-3))
    batch = data.binarize(jax.random.key(1), data.to_unit_interval(images[:256]))
    for step in range(150):
        state, _ = train_step(state, batch, jax.random.key(step))
    return state.params, batch[:32]


def test_parameters_of_each_piece():
    params = init_params(TWO_LAYERS, jax.random.key(0))
    shapes = {
        name: leaf["fc_mean_logvar"]["kernel"].shape
        for name, leaf in params.items()
        if "fc_mean_logvar" in leaf
    }
    assert shapes == {
        "encoders_0": (48, 12),  # q(z_1 | x, z_2): input 784 + 3
        "encoders_1": (48, 6),  # q(z_2 | x)
        "conditional_priors_0": (48, 12),  # p(z_1 | z_2)
    }
    assert params["encoders_0"]["fc1"]["kernel"].shape == (787, 48)
    assert params["conditional_priors_0"]["fc1"]["kernel"].shape == (3, 48)
    assert params["decoder"]["fc1"]["kernel"].shape == (9, 48)  # from z_1 and z_2


def test_densities_are_the_sum_of_their_layers(trained):
    params, batch = trained
    variables = {"params": params}
    draw = TWO_LAYERS.apply(variables, batch, jax.random.key(2), 5, method="sample_posterior")
    z1, z2 = draw.z
    assert z1.shape == (5, 32, 6) and z2.shape == (5, 32, 3) and draw.log_q.shape == (5, 32)
    # log q(z|x) = log q(z_2|x) + log q(z_1|x, z_2), each from its own network.
    encoders = [
        lambda x, i=i: TWO_LAYERS.apply(variables, x, method=lambda m, x: m.encoders[i](x))
        for i in range(2)
    ]
    mean2, logvar2 = encoders[1](batch)
    x_and_z2 = jnp.concatenate([jnp.broadcast_to(batch, (5, 32, 784)), z2], -1)
    mean1, logvar1 = encoders[0](x_and_z2)
    expected_q = log_normal_diag(z2, mean2[None], logvar2[None]) + log_normal_diag(
        z1, mean1, logvar1
    )
    np.testing.assert_allclose(draw.log_q, expected_q, rtol=1e-5)
    log_posterior = TWO_LAYERS.apply(variables, batch, draw.z, method="log_posterior")
    np.testing.assert_allclose(log_posterior, draw.log_q, rtol=1e-5)
    # log p(z) = log N(z_2 | 0, I) + log p(z_1 | z_2).
    prior_mean, prior_logvar = TWO_LAYERS.apply(
        variables, z2, method=lambda m, z: m.conditional_priors[0](z)
    )
    expected_p = log_standard_normal(z2) + log_normal_diag(z1, prior_mean, prior_logvar)
    log_prior = TWO_LAYERS.apply(variables, draw.z, method="log_prior")
    np.testing.assert_allclose(log_prior, expected_p, rtol=1e-5)
    assert TWO_LAYERS.apply(variables, draw, method="analytic_kl") is None


def test_two_layer_bounds_fall_with_k_for_every_k(trained):
    params, batch = trained
    test_images = np.asarray(batch)
    by_k = {
        k: bounds.estimate_negative_bound(TWO_LAYERS, params, test_images, jax.random.key(7), k)
        for k in (1, 10, 100)
    }
    means = [by_k[k].mean() for k in (1, 10, 100)]
    assert np.all(np.isfinite(means))
    assert means == sorted(means, reverse=True)  # -L_1 >= -L_10 >= -L_100
    assert means[0] - means[-1] > 1.0  # a real gap at k = 1 that more samples close
    # With a VampPrior at the top as well.
    vamp = dataclasses.replace(TWO_LAYERS, prior=VampPrior(5, 784))
    vamp_params = init_params(vamp, jax.random.key(0))
    vamp_means = [
        bounds.estimate_negative_bound(vamp, vamp_params, test_images, jax.random.key(7), k).mean()
        for k in (1, 50)
    ]
    assert np.all(np.isfinite(vamp_means)) and vamp_means[0] > vamp_means[1]


def test_pictures_of_a_hierarchy(trained):
    params, batch = trained
    samples = sample_images(TWO_LAYERS, params, jax.random.key(3), 6)
    recons = reconstruct_images(TWO_LAYERS, params, batch[:4])
    assert samples.shape == (6, 784) and recons.shape == (4, 784)
    assert np.all((samples > 0) & (samples < 1))
    (mean1, _), (mean2, _) = posterior_gaussians(TWO_LAYERS, params, batch[:4])
    assert mean1.shape == (4, 6) and mean2.shape == (4, 3)


def test_config_builds_the_hierarchy_and_refuses_what_it_cannot():
    model = Config(latent=(40, 40), prior="vamp", num_pseudo_inputs=20).build_model((28, 28, 1))
    assert isinstance(model, HierarchicalVAE) and model.latent_sizes == (40, 40)
    assert isinstance(model.prior, VampPrior) and model.prior.num_pseudo_inputs == 20
    from vae_jax.errors import InputError

    with pytest.raises(InputError, match="--architecture=conv has one or two stochastic"):
        Config(latent=(8, 4, 2), architecture="conv").validate()
    with pytest.raises(InputError, match="--free_bits needs the closed-form KL"):
        Config(latent=(8, 4), free_bits=0.5).validate()


def test_dreg_on_two_layers_keeps_the_bound_and_decoder_gradient(trained):
    params, batch = trained
    standard = Objective(bound="iwae", num_samples=20)
    dreg = dataclasses.replace(standard, gradient_estimator="dreg")
    num_keys = 400

    def gradients(objective):
        def one(key):
            return jax.grad(objective.batch_loss, has_aux=True)(
                params, TWO_LAYERS.apply, batch[:4], key
            )

        return jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(0), num_keys))

    (grads_standard, metrics_standard), (grads_dreg, metrics_dreg) = map(
        gradients, (standard, dreg)
    )
    # Key by key: the same value of -L_20, and the same gradient for the generative model.
    np.testing.assert_allclose(metrics_dreg["objective"], metrics_standard["objective"], rtol=1e-5)
    for part in ("decoder", "conditional_priors_0"):
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
            grads_dreg[part],
            grads_standard[part],
        )

    def encoder_matrix(grads):  # [keys, parameters of both encoders]
        leaves = jax.tree.leaves((grads["encoders_0"], grads["encoders_1"]))
        return np.concatenate([g.reshape(num_keys, -1) for g in leaves], 1)

    encoder_standard, encoder_dreg = encoder_matrix(grads_standard), encoder_matrix(grads_dreg)
    # The same mean (both are unbiased for grad L_20), parameter by parameter.
    difference = encoder_dreg - encoder_standard
    stderr = difference.std(0, ddof=1) / np.sqrt(num_keys)
    varying = stderr > 0
    z = difference.mean(0)[varying] / stderr[varying]
    assert np.max(np.abs(z)) < 5.5 and np.mean(z**2) < 1.5
    # And less noise.
    assert encoder_dreg.var(0).sum() < encoder_standard.var(0).sum()


# A linear-Gaussian hierarchy with a closed-form likelihood, its networks given as values:
# z_2 ~ N(0, 1), z_1 | z_2 ~ N(A z_2, diag(V)), x | z_1, z_2 ~ N(W z_1 + C z_2 + B, s^2 I).
# W's columns are orthogonal, so p(z_1 | x, z_2) is diagonal, and z_2 is one number, so
# p(z_2 | x) is too: encoders that compute them are the true posterior, and then every
# bound is log p(x) exactly, for every draw and every k.
_PIXELS, _NOISE_STD = 5, 0.6
_W = np.linalg.qr(np.random.default_rng(0).normal(size=(_PIXELS, 2)))[0] * [1.4, 0.8]
_C = np.linspace(0.5, -0.3, _PIXELS)
_B = np.linspace(-1.0, 1.0, _PIXELS)
_A, _V = np.array([0.9, -0.5]), np.array([0.7, 1.3])
# x | z_2 ~ N(M z_2 + B, S), and x ~ N(B, S + M M^T).
_M = _W @ _A + _C
_S = _W @ np.diag(_V) @ _W.T + _NOISE_STD**2 * np.eye(_PIXELS)
_Z2_VAR = 1.0 / (1.0 + _M @ np.linalg.solve(_S, _M))
_Z1_VAR = 1.0 / (1.0 / _V + np.sum(_W**2, axis=0) / _NOISE_STD**2)


def _row(vector, like):
    """`vector` [n] shaped to broadcast against `like` [..., n] (rank promotion is off)."""
    return jnp.reshape(jnp.asarray(vector, jnp.float32), (1,) * (like.ndim - 1) + (-1,))


class _TopPosterior(nn.Module):  # p(z_2 | x)
    def __call__(self, x, z_above=None):
        mean = (x - _row(_B, x)) @ np.linalg.solve(_S, _M)[:, None] * _Z2_VAR
        return mean, jnp.full(mean.shape, np.log(_Z2_VAR))


class _LowerPosterior(nn.Module):  # p(z_1 | x, z_2), its mean moved by `shift`
    shift: float = 0.0

    def __call__(self, x, z_above):
        x = jnp.broadcast_to(x, z_above.shape[:-1] + x.shape[-1:])
        residual = x - _row(_B, x) - z_above * _row(_C, z_above)  # [..., batch, pixels]
        mean = (z_above * _row(_A / _V, z_above) + residual @ _W / _NOISE_STD**2) * _row(
            _Z1_VAR, z_above
        ) + self.shift
        return mean, jnp.broadcast_to(_row(np.log(_Z1_VAR), mean), mean.shape)


class _ConditionalPrior(nn.Module):  # p(z_1 | z_2)
    def __call__(self, z_above):
        mean = z_above * _row(_A, z_above)
        return mean, jnp.broadcast_to(_row(np.log(_V), mean), mean.shape)


class _LinearDecoder(nn.Module):  # the mean of p(x | z_1, z_2), from [z_1, z_2]
    def __call__(self, z):
        return z[..., :2] @ _W.T + z[..., 2:] * _row(_C, z) + _row(_B, z)


def _gaussian_nll(mean, x):
    return -log_normal_diag(x, mean, jnp.full(mean.shape, 2 * np.log(_NOISE_STD)))


def test_the_true_posterior_makes_every_two_layer_bound_exact():
    model = HierarchicalVAE(
        latent=(2, 1),
        image_size=_PIXELS,
        likelihood=from_function(_gaussian_nll, mean=lambda m: m, pixel_range=None),
        encoders=(_LowerPosterior(), _TopPosterior()),
        conditional_priors=(_ConditionalPrior(),),
        decoder=_LinearDecoder(),
    )
    cov = _S + np.outer(_M, _M)
    x = np.random.default_rng(1).multivariate_normal(_B, cov, size=64).astype(np.float32)
    diff = x.astype(np.float64) - _B
    exact = 0.5 * (  # -log N(x | B, cov)
        np.sum(diff @ np.linalg.inv(cov) * diff, -1)
        + np.linalg.slogdet(cov)[1]
        + _PIXELS * np.log(2 * np.pi)
    )
    for k in (1, 10):
        neg_bound = bounds.estimate_negative_bound(model, {}, x, jax.random.key(k), k)
        np.testing.assert_allclose(neg_bound, exact, rtol=2e-5)
    # A posterior off the true one leaves a gap at k = 1: the equality above is the true
    # posterior's, not something every pair of encoders would give.
    off = dataclasses.replace(model, encoders=(_LowerPosterior(shift=0.5), _TopPosterior()))
    gap = bounds.estimate_negative_bound(off, {}, x, jax.random.key(1), 1) - exact
    assert gap.mean() > 0.1
