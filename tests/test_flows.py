"""The IAF posterior (vae_jax/flows.py): an exact log-determinant, the autoregressive
structure, and a model whose bounds and training work unchanged."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import vae_jax
from vae_jax import bounds, data
from vae_jax.flows import IAF, IAFStep, made_masks
from vae_jax.losses import log_normal_diag


def _perturbed(module, z, key=jax.random.key(1)):
    """`module`'s parameters, moved off their initialisation near the identity."""
    params = module.init(jax.random.key(0), z)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    moved = [
        leaf + 0.5 * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree.unflatten(tree, moved)


@pytest.mark.parametrize("num_flows", [1, 2, 3])
def test_the_log_determinant_is_the_jacobians(num_flows):
    flow = IAF(num_flows=num_flows, hidden=12)
    z0 = jax.random.normal(jax.random.key(2), (6,))
    params = _perturbed(flow, z0)
    jacobian = jax.jacfwd(lambda z: flow.apply(params, z)[0])(z0)
    _, log_det = flow.apply(params, z0)
    assert float(log_det) == pytest.approx(float(jnp.linalg.slogdet(jacobian)[1]), abs=1e-5)
    # Every dimension moves with every other after two steps (the order reversed between).
    assert num_flows == 1 or np.all(np.abs(np.asarray(jacobian)) > 0)


def test_each_step_is_autoregressive():
    step = IAFStep(hidden=12)
    z0 = jax.random.normal(jax.random.key(3), (6,))
    params = _perturbed(step, z0)
    jacobian = np.asarray(jax.jacfwd(lambda z: step.apply(params, z)[0])(z0))
    np.testing.assert_array_equal(np.triu(jacobian, 1), 0.0)  # z'_d depends on z_<=d only
    assert np.all(np.abs(np.tril(jacobian, -1)[np.tril_indices(6, -1)]) > 0)
    into, out = made_masks(6, 12)
    paths = into @ out  # [input, output]: the hidden paths from input i to output d
    np.testing.assert_array_equal(np.tril(paths), 0.0)  # none unless i < d


def test_an_iaf_posterior_scores_its_draws_exactly(tiny_vae):
    _, _, images = tiny_vae
    model = vae_jax.VAE(latent=3, hidden_sizes=(16,), image_size=36, flow=IAF(2, 8))
    params = model.init(jax.random.key(0), jnp.zeros((1, 36)), jax.random.key(1))["params"]
    params = {**params, "flow": _perturbed(IAF(2, 8), jnp.zeros(3))["params"]}
    noise = (jax.random.normal(jax.random.key(4), (30, 3)),)
    draw = model.apply({"params": params}, jnp.asarray(images), noise, method="posterior")
    mean, logvar = draw.gaussians[0]
    z0 = mean + noise[0] * jnp.exp(0.5 * logvar)
    flowed, log_det = IAF(2, 8).apply({"params": params["flow"]}, z0)
    np.testing.assert_allclose(draw.z[0], flowed, rtol=1e-6)
    np.testing.assert_allclose(draw.log_q, log_normal_diag(z0, mean, logvar) - log_det, rtol=1e-5)
    assert model.apply({"params": params}, draw, method="analytic_kl") is None  # Monte Carlo


def test_the_flax_forward_pass_decodes_a_draw_through_the_flow(tiny_vae):
    _, _, images = tiny_vae
    model = vae_jax.VAE(latent=3, hidden_sizes=(16,), image_size=36, flow=IAF(2, 8))
    params = model.init(jax.random.key(0), jnp.zeros((1, 36)), jax.random.key(1))["params"]
    assert set(params) == {"encoder", "decoder", "flow"}  # the plain init makes the flow
    params = {**params, "flow": _perturbed(IAF(2, 8), jnp.zeros(3))["params"]}
    x, key = jnp.asarray(images[:5]), jax.random.key(7)
    logits, mean, logvar = model.apply({"params": params}, x, key)
    z0 = vae_jax.reparameterize(key, mean, logvar)
    flowed, _ = IAF(2, 8).apply({"params": params["flow"]}, z0)
    expected = model.apply({"params": params}, flowed, method="decode")
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    unflowed = model.apply({"params": params}, z0, method="decode")
    assert np.abs(np.asarray(logits - unflowed)).max() > 1e-3


def test_an_iaf_model_trains_and_its_bounds_fall_with_k(images):
    model = vae_jax.VAE(latent=8, hidden_sizes=(64,), flow=IAF(2, 32))
    state = vae_jax.create_train_state(model, jax.random.key(0), optax.adam(1e-3))
    batch = data.to_unit_interval(images[:256])
    losses = []
    for step in range(30):
        state, metrics = vae_jax.train_step(state, batch, jax.random.key(step))
        losses.append(float(metrics["loss"]))
    assert np.mean(losses[-5:]) < 0.9 * losses[0]
    test = np.asarray(batch[:64])
    neg = [
        float(
            bounds.estimate_negative_bound(model, state.params, test, jax.random.key(9), k).mean()
        )
        for k in (1, 10, 100)
    ]
    assert neg[0] > neg[1] > neg[2]
    with pytest.raises(ValueError, match="DReG estimator is not offered with a flow"):
        dreg = vae_jax.Objective(bound="iwae", num_samples=3, gradient_estimator="dreg")
        vae_jax.train_step(state, batch, jax.random.key(0), objective=dreg)
