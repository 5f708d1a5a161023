"""The jitted step and epoch: learning, determinism, compilation, padding."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_close_to_rounding

from vae_jax import data
from vae_jax.likelihoods import named
from vae_jax.models import VAE
from vae_jax.objective import Objective
from vae_jax.train import (
    create_train_state,
    jitted_train_step,
    run_keys,
    train_epoch,
    train_epoch_stepwise,
    train_step,
)

SMALL = VAE(latent=8, hidden_sizes=(64, 32))
# The optimiser of the tests that compare parameters after steps of two computations that
# agree up to rounding: plain SGD at rate 1, whose update is the gradient. Adam's first
# update is lr * g / (|g| + eps), about lr * sign(g): a rounding-level difference in a
# gradient near zero moves its parameter by up to the learning rate (seen on jax 0.7.2:
# 2.9e-5 relative), so parameters after Adam steps say little of the gradients compared.
PLAIN_STEP = optax.sgd(1.0)


def test_train_step_lowers_the_loss_on_a_fixed_batch(images):
    state = create_train_state(SMALL, jax.random.key(0), optax.adam(1e-3))
    batch = data.to_unit_interval(images[:128])
    losses = []
    for step in range(30):
        # The step's metrics are the terms at the parameters it starts from, with its key:
        # optax's BCE of the logits, and the KL of q(z|x) in closed form.
        logits, mean, logvar = SMALL.apply({"params": state.params}, batch, jax.random.key(step))
        bce = optax.sigmoid_binary_cross_entropy(logits, batch).sum(-1).mean()
        kl = (0.5 * (jnp.exp(logvar) + mean**2 - 1 - logvar)).sum(-1).mean()
        state, metrics = train_step(state, batch, jax.random.key(step))
        np.testing.assert_allclose([metrics["recon"], metrics["kl"]], [bce, kl], rtol=1e-5)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.6 * losses[0]
    assert int(state.step) == 30


def test_uint8_images_train_as_their_unit_interval_floats(images):
    # load_dataset's uint8 pixels straight into the step: the same finite loss and the
    # same parameters as the images scaled to [0, 1], never a silent NaN.
    batch = images[:64]
    assert batch.dtype == np.uint8
    results = []
    for inputs in (batch, data.to_unit_interval(batch)):
        state = create_train_state(SMALL, jax.random.key(0), PLAIN_STEP)
        initial = jax.tree.map(jnp.copy, state.params)
        state, metrics = train_step(state, inputs, jax.random.key(1))
        results.append((metrics, jax.tree.map(jnp.subtract, initial, state.params)))
    (uint8_metrics, uint8_grads), (float_metrics, float_grads) = results
    assert np.isfinite(float(uint8_metrics["loss"]))
    for name in ("loss", "recon", "kl"):
        np.testing.assert_allclose(uint8_metrics[name], float_metrics[name], rtol=1e-6)
    # The same gradients up to rounding: XLA may fold the division by 255 into a
    # multiplication.
    jax.tree.map(assert_close_to_rounding, uint8_grads, float_grads)


def test_train_step_compiles_once(images):
    state = create_train_state(SMALL, jax.random.key(0), optax.adam(1e-3))
    batch = data.to_unit_interval(images[:64])
    size = jitted_train_step._cache_size()
    state, _ = train_step(state, batch, jax.random.key(0), 0.25)  # The state is donated.
    assert jitted_train_step._cache_size() == size + 1
    for step in range(3):  # New keys, data and beta values: traced, not recompiled.
        state, _ = train_step(state, batch, jax.random.key(step), 0.5 + step)
    assert jitted_train_step._cache_size() == size + 1


def _run_epochs(images, seed, num_epochs=2, model=SMALL, **options):
    state = create_train_state(model, jax.random.key(seed), optax.adam(1e-3))
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
    state = create_train_state(SMALL, jax.random.key(0), optax.adam(1e-3))
    batch = data.to_unit_interval(images[:8])
    weights = jnp.array([1, 1, 1, 1, 1, 0, 0, 0], jnp.float32)
    other_padding = batch.at[5:].set(jax.random.uniform(jax.random.key(9), (3, 784)))
    grad_fn = jax.grad(Objective().batch_loss, has_aux=True)
    args = (jax.random.key(1), 1.0, weights)
    grads_a, metrics_a = grad_fn(state.params, state.apply_fn, batch, *args)
    grads_b, metrics_b = grad_fn(state.params, state.apply_fn, other_padding, *args)
    np.testing.assert_allclose(metrics_a["loss"], metrics_b["loss"], rtol=1e-6)
    jax.tree.map(assert_close_to_rounding, grads_a, grads_b)


@pytest.mark.parametrize("reconstruction", ["gaussian", "laplace"])
def test_other_likelihoods_train(images, reconstruction):
    _, history = _run_epochs(images, seed=0, model=SMALL.clone(likelihood=named(reconstruction)))
    assert np.isfinite(history[-1]["loss"])
    assert history[1]["loss"] < history[0]["loss"]


def test_bfloat16_model_trains(images):
    model = VAE(latent=8, hidden_sizes=(64, 32), dtype=jnp.bfloat16)
    state = create_train_state(model, jax.random.key(0), optax.adam(1e-3))
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
    initial = create_train_state(SMALL, jax.random.key(0), optax.sgd(1e-3))  # see PLAIN_STEP
    state_a, state_b = (jax.tree.map(jnp.copy, initial) for _ in range(2))
    state_a, metrics_a = train_epoch(state_a, images, jax.random.key(1), 1.0, **options)
    state_b, metrics_b = train_epoch_stepwise(state_b, images, jax.random.key(1), 1.0, **options)
    assert int(state_b.step) == int(state_a.step) == 8
    for name in ("loss", "recon", "kl", "beta", "first_nonfinite_step", "skipped_batches"):
        np.testing.assert_allclose(metrics_b[name], metrics_a[name], rtol=1e-5, err_msg=name)
    # Eight steps of the same batches: the parameters move alike, up to rounding.
    moved = [jax.tree.map(jnp.subtract, s.params, initial.params) for s in (state_a, state_b)]
    jax.tree.map(assert_close_to_rounding, *moved)


# The reference network's loss on the slice's first 256 images, from seed 0 with Adam 1e-3:
# at the first step, and at the tenth (after 9 updates). Measured on the CPU.
GOLDEN_LOSSES = {1: 563.925048828125, 10: 246.94886779785156}


def test_golden_losses_after_one_and_ten_steps(mnist_idx):
    images = data.to_unit_interval(mnist_idx.train_images[:256])
    keys = run_keys(0)
    state = create_train_state(VAE(), keys.init, optax.adam(1e-3))
    losses = {}
    for step in range(1, 11):
        state, metrics = train_step(state, images, jax.random.fold_in(keys.train, step - 1))
        losses[step] = float(metrics["loss"])
    # 5e-5 (0.01 nats of 250), not bit equality: on a GPU the same float32 maths (at the
    # full precision the tests pin) sums in another order, and nine Adam steps magnify
    # last-bit differences. Any change to the maths moves these by far more.
    np.testing.assert_allclose(
        [losses[1], losses[10]],
        [GOLDEN_LOSSES[1], GOLDEN_LOSSES[10]],
        rtol=5e-5,
        err_msg=(
            "The numbers of a seed changed. Update GOLDEN_LOSSES only for a change meant to "
            "change them (initialisation, key layout, loss, optimiser, model), and say so in "
            "its commit; otherwise a change altered training by accident."
        ),
    )


def test_ema_follows_its_recurrence_and_leaves_training_alone(images):
    batch = data.to_unit_interval(images[:64])
    plain = create_train_state(SMALL, jax.random.key(0), optax.adam(1e-3))
    averaged = create_train_state(SMALL, jax.random.key(0), optax.adam(1e-3), ema_decay=0.9)
    expected = jax.tree.map(np.asarray, averaged.params)
    for step in range(5):
        plain, _ = train_step(plain, batch, jax.random.key(step))
        averaged, _ = train_step(averaged, batch, jax.random.key(step))
        decay = min(0.9, (1 + step + 1) / (10 + step + 1))  # the warm-up, then 0.9
        expected = jax.tree.map(
            lambda e, p, d=decay: d * e + (1 - d) * np.asarray(p), expected, averaged.params
        )
    # The optimiser's parameters are those of a run without an average ...
    jax.tree.map(np.testing.assert_array_equal, averaged.params, plain.params)
    # ... and the average is the recurrence's, which is what a run evaluates.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
        averaged.eval_params,
        expected,
    )
    assert plain.eval_params is plain.params


def test_a_consumed_state_is_refused_and_a_copy_trains_as_the_original(images):
    batch = data.to_unit_interval(images[:64])
    state = create_train_state(SMALL, jax.random.key(0), optax.adam(1e-3))
    kept = jax.tree.map(jnp.copy, state)
    new_state, _ = train_step(state, batch, jax.random.key(1))
    with pytest.raises(ValueError, match="consumed by an earlier train_step.*the state that call"):
        train_step(state, batch, jax.random.key(1))
    again, _ = train_step(kept, batch, jax.random.key(1))
    jax.tree.map(np.testing.assert_array_equal, again.params, new_state.params)
