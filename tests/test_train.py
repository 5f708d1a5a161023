"""The jitted step and epoch: learning, determinism, compilation, padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import data
from vae_jax.models import VAE
from vae_jax.train import (
    create_train_state,
    loss_fn,
    train_epoch,
    train_epoch_stepwise,
    train_step,
)

SMALL = VAE(latent=8, hidden_sizes=(64, 32))


def test_train_step_lowers_the_loss_on_a_fixed_batch(images):
    state = create_train_state(SMALL, jax.random.key(0), 1e-3)
    batch = data.to_unit_interval(images[:128])
    losses = []
    for step in range(30):
        state, metrics = train_step(state, batch, jax.random.key(step))
        losses.append(float(metrics["loss"]))
        np.testing.assert_allclose(metrics["loss"], metrics["recon"] + metrics["kl"], rtol=1e-5)
    assert losses[-1] < 0.6 * losses[0]
    assert int(state.step) == 30


def test_train_step_compiles_once(images):
    state = create_train_state(SMALL, jax.random.key(0), 1e-3)
    batch = data.to_unit_interval(images[:64])
    size = train_step._cache_size()
    state, _ = train_step(state, batch, jax.random.key(0), 0.25)  # The state is donated.
    assert train_step._cache_size() == size + 1
    for step in range(3):  # New keys, data and beta values: traced, not recompiled.
        state, _ = train_step(state, batch, jax.random.key(step), 0.5 + step)
    assert train_step._cache_size() == size + 1


def _run_epochs(images, seed, num_epochs=2, **options):
    state = create_train_state(SMALL, jax.random.key(seed), 1e-3)
    history = []
    for epoch in range(num_epochs):
        state, metrics = train_epoch(
            state,
            images,
            jax.random.fold_in(jax.random.key(seed), epoch),
            1.0,
            batch_size=128,
            **options,
        )
        history.append({name: float(value) for name, value in metrics.items()})
    return state, history


@pytest.mark.parametrize("binarization", ["none", "dynamic"])
def test_same_seed_same_numbers(images, binarization):
    state_a, history_a = _run_epochs(images, seed=3, binarization=binarization)
    state_b, history_b = _run_epochs(images, seed=3, binarization=binarization)
    assert history_a == history_b
    jax.tree.map(np.testing.assert_array_equal, state_a.params, state_b.params)
    _, history_c = _run_epochs(images, seed=4, binarization=binarization)
    assert history_c != history_a
    assert history_a[1]["loss"] < history_a[0]["loss"]


def test_epoch_takes_one_step_per_batch_including_a_short_last_one(images):
    # 1000 images in batches of 128: 7 full batches and one of 104.
    state, _ = _run_epochs(images, seed=0, num_epochs=1)
    assert int(state.step) == 8


def test_padding_does_not_change_the_loss_or_its_gradient(images):
    state = create_train_state(SMALL, jax.random.key(0), 1e-3)
    batch = data.to_unit_interval(images[:8])
    weights = jnp.array([1, 1, 1, 1, 1, 0, 0, 0], jnp.float32)
    other_padding = batch.at[5:].set(jax.random.uniform(jax.random.key(9), (3, 784)))
    grad_fn = jax.grad(loss_fn, has_aux=True)
    args = (jax.random.key(1), 1.0, weights, "bernoulli", 0.1)
    grads_a, metrics_a = grad_fn(state.params, state.apply_fn, batch, *args)
    grads_b, metrics_b = grad_fn(state.params, state.apply_fn, other_padding, *args)
    np.testing.assert_allclose(metrics_a["loss"], metrics_b["loss"], rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads_a, grads_b
    )


@pytest.mark.parametrize("reconstruction", ["gaussian", "laplace"])
def test_other_likelihoods_train(images, reconstruction):
    _, history = _run_epochs(images, seed=0, reconstruction=reconstruction)
    assert np.isfinite(history[-1]["loss"])
    assert history[1]["loss"] < history[0]["loss"]


def test_bfloat16_model_trains(images):
    model = VAE(latent=8, hidden_sizes=(64, 32), dtype=jnp.bfloat16)
    state = create_train_state(model, jax.random.key(0), 1e-3)
    batch = data.to_unit_interval(images[:128])
    first = None
    for step in range(30):
        state, metrics = train_step(state, batch, jax.random.key(step))
        first = float(metrics["loss"]) if first is None else first
        assert metrics["loss"].dtype == jnp.float32
    assert float(metrics["loss"]) < 0.6 * first
    assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}


def test_stepwise_epoch_matches_the_scanned_epoch(images):
    options = dict(batch_size=128, binarization="dynamic")
    state_a = create_train_state(SMALL, jax.random.key(0), 1e-3)
    state_b = create_train_state(SMALL, jax.random.key(0), 1e-3)
    state_a, metrics_a = train_epoch(state_a, images, jax.random.key(1), 1.0, **options)
    state_b, metrics_b = train_epoch_stepwise(state_b, images, jax.random.key(1), 1.0, **options)
    assert int(state_b.step) == int(state_a.step) == 8
    for name in ("loss", "recon", "kl", "beta", "first_nonfinite_step", "skipped_batches"):
        np.testing.assert_allclose(metrics_b[name], metrics_a[name], rtol=1e-5, err_msg=name)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        state_a.params,
        state_b.params,
    )
