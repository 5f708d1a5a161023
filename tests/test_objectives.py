"""The objectives and their parts: the IWAE bound, beta schedules, free bits, the conv
model, sweeps."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_close_to_rounding

from vae_jax import data
from vae_jax.config import Config
from vae_jax.errors import InputError
from vae_jax.likelihoods import Gaussian
from vae_jax.losses import (
    bernoulli_nll,
    free_bits_kl,
    kl_per_latent,
    log_normal_diag,
    log_standard_normal,
    negative_elbo,
    negative_iwae_bound,
)
from vae_jax.models import VAE, ConvDecoder, ConvEncoder, reparameterize
from vae_jax.objective import Objective
from vae_jax.schedules import BetaSchedule, beta_schedule, cyclical, linear_warmup
from vae_jax.sweep import create_sweep_state, train_sweep_epoch
from vae_jax.train import (
    create_train_state,
    jitted_train_step,
    run_keys,
    train_epoch,
    train_step,
)

SMALL = VAE(latent=8, hidden_sizes=(64, 32))


@pytest.fixture(scope="module")
def trained(images):
    """SMALL after 100 steps on binarized digits, so q is informative but imperfect."""
    state = create_train_state(SMALL, jax.random.key(0), optax.adam(1e-3))
    batch = data.binarize(jax.random.key(1), data.to_unit_interval(images[:256]))
    for step in range(100):
        state, _ = train_step(state, batch, jax.random.key(step))
    return state.params, batch[:32]


def _iwae(params, batch, key, num_samples, beta=1.0):
    """The bound from its parts, the draws made as `reparameterize` makes them."""
    mean, logvar = SMALL.apply({"params": params}, batch, method="encode")
    shape = (num_samples, *mean.shape)
    z = reparameterize(key, jnp.broadcast_to(mean, shape), jnp.broadcast_to(logvar, shape))
    logits = SMALL.apply({"params": params}, z, method="decode")
    recon = bernoulli_nll(logits, batch[None])
    log_q = log_normal_diag(z, mean[None], logvar[None])
    terms = negative_iwae_bound(recon, log_standard_normal(z), log_q, beta)
    return terms, (logits, z, mean, logvar)


def test_iwae_with_one_sample_is_the_elbo(trained):
    params, batch = trained
    terms, (logits, z, mean, logvar) = _iwae(params, batch, jax.random.key(5), 1)
    # The Objective's iwae terms are these, from the model's own draws.
    objective_terms, _ = Objective(bound="iwae").terms(
        params, SMALL.apply, batch, jax.random.key(5), 1.0
    )
    np.testing.assert_allclose(objective_terms.loss, terms.loss, rtol=1e-6)
    # Exactly the one-sample ELBO with a Monte Carlo KL: recon + log q(z|x) - log p(z).
    elbo_mc = negative_elbo(logits[0], batch, mean, logvar).recon + (
        log_normal_diag(z[0], mean, logvar) - log_standard_normal(z[0])
    )
    np.testing.assert_allclose(terms.loss, elbo_mc, rtol=1e-6)
    # In expectation, the closed-form-KL ELBO the trainer uses: average over 2000 keys.
    keys = jax.random.split(jax.random.key(6), 2000)
    iwae_1 = jax.jit(jax.vmap(lambda key: _iwae(params, batch, key, 1)[0].loss))(keys)

    def trainer_elbo(key):
        logits, mean, logvar = SMALL.apply({"params": params}, batch, key)
        return negative_elbo(logits, batch, mean, logvar).loss

    elbo = jax.jit(jax.vmap(trainer_elbo))(keys)
    stderr = jnp.std(iwae_1 - elbo, 0) / np.sqrt(len(keys))
    assert np.all(np.abs(jnp.mean(iwae_1 - elbo, 0)) < 4 * stderr)


def test_iwae_bound_tightens_with_k(trained):
    params, batch = trained
    keys = jax.random.split(jax.random.key(8), 100)
    means = {}
    for k in (1, 5, 50):
        values = jax.jit(jax.vmap(lambda key, k=k: _iwae(params, batch, key, k)[0].loss))(keys)
        means[k] = (float(jnp.mean(values)), float(jnp.std(values.mean(1)) / np.sqrt(100)))
    # -L_k is nonincreasing in k (L_k nondecreasing), by more than the Monte Carlo error.
    assert means[1][0] - means[5][0] > 3 * (means[1][1] + means[5][1])
    assert means[5][0] - means[50][0] > 3 * (means[5][1] + means[50][1])


def test_iwae_loss_is_finite_for_extreme_weights():
    mean = jnp.array([[30.0, -30.0]])
    logvar = jnp.array([[-20.0, 20.0]])
    z = jnp.array([[[0.0, 0.0]], [[1e3, -1e3]]])
    recon = bernoulli_nll(jnp.full((2, 1, 3), 1e4), jnp.zeros((1, 1, 3)))
    log_q = log_normal_diag(z, mean[None], logvar[None])
    terms = negative_iwae_bound(recon, log_standard_normal(z), log_q)
    assert np.all(np.isfinite(terms.loss))


def test_schedules_documented_values():
    steps = jnp.array([0, 50, 100, 150])
    np.testing.assert_allclose(linear_warmup(steps, 100), [0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(linear_warmup(steps, 0), [1.0, 1.0, 1.0, 1.0])
    # Cycles of 100 steps rising over the first half: 0 at each cycle's start, 1 from its middle.
    np.testing.assert_allclose(
        cyclical(jnp.array([0, 25, 50, 99, 100, 125]), 100, 0.5), [0, 0.5, 1, 1, 0, 0.5]
    )
    np.testing.assert_allclose(BetaSchedule()(steps), [1.0] * 4)
    # From epochs, at 7 steps an epoch: cycles of 5 epochs = 35 steps; a warm-up of 3
    # epochs = 21 steps. Neither depends on the run's length.
    schedule = beta_schedule("cyclical", 7, cycle_epochs=5, ramp_fraction=0.5)
    assert schedule.cycle_steps == 35
    np.testing.assert_allclose(schedule(jnp.array([0, 35, 52, 69])), [0, 0, 17 / 17.5, 1])
    assert beta_schedule("linear", 7, warmup_epochs=3).warmup_steps == 21


def test_schedule_drives_the_epochs_beta(images):
    state = create_train_state(SMALL, jax.random.key(0), optax.adam(1e-3))
    schedule = BetaSchedule("linear", warmup_steps=16)  # 8 steps an epoch of 1000 / 128
    betas = []
    for epoch in range(3):
        state, metrics = train_epoch(
            state,
            images,
            jax.random.key(epoch),
            2.0,
            batch_size=128,
            objective=Objective(beta_schedule=schedule),
        )
        betas.append(float(metrics["beta"]))
    # The last step of epoch e is global step 8e + 7: beta = 2 * min(1, (8e + 7) / 16).
    np.testing.assert_allclose(betas, [2 * 7 / 16, 2 * 15 / 16, 2.0], rtol=1e-6)


def test_free_bits_floor_each_dimension():
    mean = jnp.array([[0.0, 2.0, 0.1], [0.0, 2.0, -0.1]])
    logvar = jnp.zeros((2, 3))
    weights = jnp.ones(2)
    per_dim = jnp.mean(kl_per_latent(mean, logvar), 0)  # [0, 2, 0.005]
    floor = 0.5
    np.testing.assert_allclose(
        free_bits_kl(mean, logvar, weights, floor), jnp.sum(jnp.maximum(per_dim, floor))
    )
    # Below the floor a dimension adds exactly the floor and gets no gradient.
    grads = jax.grad(lambda m: free_bits_kl(m, logvar, weights, floor))(mean)
    np.testing.assert_array_equal(grads[:, 0], 0.0)
    np.testing.assert_array_equal(grads[:, 2], 0.0)
    assert np.all(grads[:, 1] != 0)
    # Never below floor x latent dimensions, whatever the posterior.
    assert free_bits_kl(jnp.zeros((2, 3)), logvar, weights, floor) == pytest.approx(1.5)


def test_free_bits_loss_never_counts_a_dimension_below_the_floor(trained):
    params, batch = trained
    weights = jnp.ones(len(batch))
    objective = Objective(free_bits=1.0)
    loss, metrics = objective.batch_loss(
        params, SMALL.apply, batch, jax.random.key(0), 1.0, weights
    )
    assert metrics["objective"] == loss
    mean, logvar = SMALL.apply({"params": params}, batch, method="encode")
    per_dim = jnp.mean(kl_per_latent(mean, logvar), 0)
    np.testing.assert_allclose(
        loss, metrics["recon"] + jnp.sum(jnp.maximum(per_dim, 1.0)), rtol=1e-6
    )
    assert loss >= metrics["recon"] + SMALL.latent * 1.0 - 1e-3


def test_conv_model_shapes_and_one_step_lowers_its_loss(images):
    model = Config(latent=16, architecture="conv").build_model((28, 28, 1))
    batch = data.to_unit_interval(images[:64])
    state = create_train_state(model, jax.random.key(0), optax.adam(1e-3))
    kernels = {name: leaf["kernel"].shape for name, leaf in state.params["encoder"].items()}
    assert kernels == {
        "conv1": (3, 3, 1, 32),
        "conv2": (3, 3, 32, 64),
        "fc_mean_logvar": (3136, 32),
    }
    logits, mean, logvar = model.apply({"params": state.params}, batch, jax.random.key(1))
    assert logits.shape == (64, 784) and mean.shape == logvar.shape == (64, 16)
    objective = Objective()
    loss_before = objective.batch_loss(state.params, model.apply, batch, jax.random.key(2))[0]
    state, _ = train_step(state, batch, jax.random.key(3))
    loss_after = objective.batch_loss(state.params, model.apply, batch, jax.random.key(2))[0]
    assert loss_after < loss_before


def test_conv_model_with_three_layers_keeps_the_image_size():
    model = VAE(
        latent=4,
        encoder=ConvEncoder(4, 32 * 32, (4, 8, 16)),
        decoder=ConvDecoder(32 * 32, (4, 8, 16)),
    )
    x = jnp.zeros((2, 32 * 32))
    params = model.init(jax.random.key(0), x, jax.random.key(1))["params"]
    logits, mean, _ = model.apply({"params": params}, x, jax.random.key(2))
    assert logits.shape == (2, 1024) and mean.shape == (2, 4)
    assert params["encoder"]["fc_mean_logvar"]["kernel"].shape == (4 * 4 * 16, 8)


def test_conv_model_refuses_non_square_images():
    with pytest.raises(ValueError, match="square one-channel"):
        VAE(latent=2, encoder=ConvEncoder(2, 30), decoder=ConvDecoder(30)).init(
            jax.random.key(0), jnp.zeros((1, 30)), jax.random.key(1)
        )


def test_vmapped_sweep_matches_separate_runs(images):
    betas, seeds = [0.5, 1.0, 4.0], [0, 1, 2]
    options = dict(batch_size=128, binarization="dynamic")
    states, train_keys = create_sweep_state(SMALL, seeds, optax.adam(1e-3))
    sweep_history = []
    for epoch in (1, 2):
        states, metrics = train_sweep_epoch(
            states, images, train_keys, epoch, jnp.array(betas), **options
        )
        sweep_history.append(metrics)
    for s, (beta, seed) in enumerate(zip(betas, seeds, strict=True)):
        keys = run_keys(seed)
        state = create_train_state(SMALL, keys.init, optax.adam(1e-3))
        for epoch in (1, 2):
            state, metrics = train_epoch(
                state, images, jax.random.fold_in(keys.train, epoch), beta, **options
            )
            for name in ("loss", "recon", "kl"):
                np.testing.assert_allclose(
                    sweep_history[epoch - 1][name][s], metrics[name], rtol=1e-5, err_msg=name
                )
        jax.tree.map(
            lambda a, b, s=s: np.testing.assert_allclose(a[s], b, rtol=1e-4, atol=1e-6),
            states.params,
            state.params,
        )
    # The betas really differ per model: a larger beta gives a smaller KL.
    kls = sweep_history[-1]["kl"]
    assert kls[0] > kls[1] > kls[2]


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(num_samples=5), "--num_samples=5 is for --objective=iwae|miwae|ciwae|piwae; add"),
        (dict(objective="iwae", num_samples=0), "--num_samples must be >= 1, got 0"),
        (dict(free_bits=-1.0), "--free_bits must be >= 0, got -1.0"),
        (dict(objective="iwae", free_bits=0.5), "--free_bits works with --objective=elbo only"),
        (dict(cycle_ramp=0.0), "--cycle_ramp must be in (0, 1], got 0.0"),
        (
            dict(gradient_estimator="dreg"),
            "--gradient_estimator=dreg is for --objective=iwae; add that flag",
        ),
        (dict(beta_schedule="cosine"), "--beta_schedule=cosine is not one of constant"),
        (dict(architecture="resnet"), "--architecture=resnet is not one of mlp, conv"),
        (dict(objective="elbo", num_samples=5), "--num_samples=5 is for --objective=iwae|"),
        (dict(num_groups=3), "--num_groups=3 is for --objective=miwae|piwae"),
        (dict(objective="miwae", num_groups=0), "--num_groups must be >= 1, got 0"),
        (dict(objective="ciwae", ciwae_beta=-0.1), "--ciwae_beta must be in [0, 1], got -0.1"),
        (dict(ciwae_beta=0.2), "--ciwae_beta=0.2 is for --objective=ciwae"),
        (dict(objective="btcvae", tc_weight=-1.0), "--tc_weight must be >= 0, got -1.0"),
        (dict(tc_estimator="mss"), "--tc_estimator=mss is for --objective=btcvae"),
        (dict(objective="btcvae", tc_estimator="x"), "--tc_estimator=x is not one of mws, mss"),
        (dict(objective="btcvae", latent=(8, 8)), "--objective=btcvae splits the KL of one"),
        (dict(objective="btcvae", batch_size=1), "--batch_size must be at least 2"),
        (dict(objective="wae", mmd_weight=-1.0), "--mmd_weight must be >= 0, got -1.0"),
        (dict(objective="infovae", mmd_bandwidth=0.0), "--mmd_bandwidth must be > 0, got 0.0"),
        (dict(mmd_kernel="rbf"), "--mmd_kernel=rbf is for --objective=infovae|wae"),
        (dict(objective="wae", mmd_kernel="poly"), "--mmd_kernel=poly is not one of imq, rbf"),
        (dict(posterior="maf"), "--posterior=maf is not one of gaussian, iaf"),
        (dict(posterior="iaf", num_flows=0), "--num_flows must be at least 1, got 0"),
        (dict(posterior="iaf", flow_hidden=0), "--flow_hidden must be at least 1, got 0"),
        (dict(num_flows=4), "--num_flows=4 is for --posterior=iaf"),
        (dict(posterior="iaf", latent=(8, 8)), "--posterior=iaf flows one stochastic layer"),
        (
            dict(posterior="iaf", objective="iwae", gradient_estimator="dreg"),
            "--gradient_estimator=dreg scores given draws under q",
        ),
        (dict(posterior="iaf", free_bits=1.0), "--free_bits needs the closed-form KL"),
    ],
)
def test_bad_research_settings_name_the_flag(settings, message):
    with pytest.raises(InputError, match=re.escape(message)):
        Config(**settings).validate()


def test_dreg_keeps_the_bound_and_decoder_gradient_and_quiets_the_encoders(trained):
    params, batch = trained
    standard = Objective(bound="iwae", num_samples=50)
    dreg = dataclasses.replace(standard, gradient_estimator="dreg")
    num_keys = 500

    def gradients(objective):
        def one(key):
            return jax.grad(objective.batch_loss, has_aux=True)(params, SMALL.apply, batch[:4], key)

        return jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(0), num_keys))

    (grads_standard, metrics_standard), (grads_dreg, metrics_dreg) = map(
        gradients, (standard, dreg)
    )
    # Key by key: the same value of -L_50, and the same decoder gradient up to the rounding
    # of two programs' sums (to 1e-5 of each value, and of the largest: an absolute 1e-7
    # was 2.7e-7 short on jax 0.7.2).
    np.testing.assert_allclose(metrics_dreg["objective"], metrics_standard["objective"], rtol=1e-5)
    jax.tree.map(assert_close_to_rounding, grads_dreg["decoder"], grads_standard["decoder"])

    def encoder_matrix(grads):  # [keys, encoder parameters]
        return np.concatenate(
            [g.reshape(num_keys, -1) for g in jax.tree.leaves(grads["encoder"])], 1
        )

    encoder_standard, encoder_dreg = encoder_matrix(grads_standard), encoder_matrix(grads_dreg)
    # The same mean (both are unbiased for grad L_50): per parameter, the paired difference
    # over keys is within Monte Carlo error (measured max |z| 2.5 over 52,000 parameters).
    difference = encoder_dreg - encoder_standard
    stderr = difference.std(0, ddof=1) / np.sqrt(num_keys)
    varying = stderr > 0
    z = difference.mean(0)[varying] / stderr[varying]
    assert np.max(np.abs(z)) < 5 and np.mean(z**2) < 1.5
    # Far less noise (measured: 0.41 of the standard estimator's total variance).
    assert encoder_dreg.var(0).sum() < 0.6 * encoder_standard.var(0).sum()


def my_bernoulli_nll(logits, images):
    """The Bernoulli NLL written as a user would, through optax: a likelihood of one's own."""
    return optax.sigmoid_binary_cross_entropy(logits, images).sum(-1)


@pytest.mark.parametrize("bound", ["elbo", "iwae"])
def test_a_custom_likelihood_equal_to_the_bernoulli_gives_its_loss_and_gradients(trained, bound):
    params, batch = trained
    objective = Objective(bound=bound, num_samples=5 if bound == "iwae" else 1)
    custom = SMALL.clone(likelihood=my_bernoulli_nll)  # the model's own p(x|z): a function
    (loss_b, metrics_b), grads_b = jax.value_and_grad(objective.batch_loss, has_aux=True)(
        params, SMALL.apply, batch, jax.random.key(3)
    )
    (loss_c, metrics_c), grads_c = jax.value_and_grad(objective.batch_loss, has_aux=True)(
        params, custom.apply, batch, jax.random.key(3)
    )
    np.testing.assert_allclose(loss_c, loss_b, rtol=1e-5)
    np.testing.assert_allclose(metrics_c["recon"], metrics_b["recon"], rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grads_c, grads_b
    )


def test_a_custom_likelihood_trains_to_the_builtins_loss_and_compiles_once(images):
    batch = data.binarize(jax.random.key(1), data.to_unit_interval(images[:128]))
    custom = SMALL.clone(likelihood=my_bernoulli_nll)
    states = {
        "builtin": create_train_state(SMALL, jax.random.key(0), optax.adam(1e-3)),
        "custom": create_train_state(custom, jax.random.key(0), optax.adam(1e-3)),
    }
    size = jitted_train_step._cache_size()
    for step in range(20):
        key = jax.random.key(step)
        states["builtin"], builtin = train_step(states["builtin"], batch, key)
        states["custom"], mine = train_step(states["custom"], batch, key)
        np.testing.assert_allclose(mine["loss"], builtin["loss"], rtol=1e-4)
    # One program for each model: the function is part of a static argument, traced once.
    assert jitted_train_step._cache_size() <= size + 2


def test_the_deprecated_objective_likelihood_still_overrides_the_model_s(trained):
    params, batch = trained
    gaussian = SMALL.clone(likelihood=Gaussian(0.1))
    with pytest.warns(DeprecationWarning, match="give the model its likelihood"):
        old_style = Objective(reconstruction="gaussian")
    # The same number as the model that carries the likelihood itself.
    np.testing.assert_allclose(
        old_style.batch_loss(params, SMALL.apply, batch, jax.random.key(3))[0],
        Objective().batch_loss(params, gaussian.apply, batch, jax.random.key(3))[0],
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="or a function"):
        Objective(reconstruction="poisson")


# --- The IWAE family, beta-TCVAE and the MMD objectives ---------------------------------


def _value_and_grads(objective, params, batch, key=jax.random.key(7)):
    """The objective's value and its gradient on `batch` with the draws of `key`."""
    fn = jax.value_and_grad(lambda p: objective.batch_loss(p, SMALL.apply, batch, key)[0])
    return fn(params)


def _log_weights(params, batch, key, num_draws):
    """log w of `num_draws` draws an image, as every importance-weighted objective draws them."""
    draw = SMALL.apply({"params": params}, batch, key, num_draws, method="sample_posterior")
    logits = SMALL.apply({"params": params}, draw.z, method="decode")
    recon = bernoulli_nll(logits, batch[None])
    return -recon + log_standard_normal(draw.z[0]) - draw.log_q  # [draws, batch]


def test_the_iwae_family_meets_its_identities_draw_for_draw(trained):
    params, batch = trained
    key = jax.random.key(7)

    def value(objective):
        return float(objective.batch_loss(params, SMALL.apply, batch, key)[0])

    def grads(objective):
        return _value_and_grads(objective, params, batch, key)[1]

    iwae5 = Objective(bound="iwae", num_samples=5)
    miwae_1x5 = Objective(bound="miwae", num_samples=5, num_groups=1)
    assert value(miwae_1x5) == value(iwae5)  # MIWAE(1, K) = IWAE(K)
    jax.tree.map(np.testing.assert_array_equal, grads(miwae_1x5), grads(iwae5))
    assert value(Objective(bound="ciwae", num_samples=5, ciwae_beta=0.0)) == value(iwae5)
    # MIWAE(M, 1) and CIWAE(1) are the average ELBO of their draws.
    log_w = _log_weights(params, batch, key, 5)
    mean_elbo = -float(jnp.mean(log_w))
    assert value(Objective(bound="miwae", num_samples=1, num_groups=5)) == pytest.approx(
        mean_elbo, rel=1e-6
    )
    assert value(Objective(bound="ciwae", num_samples=5, ciwae_beta=1.0)) == pytest.approx(
        mean_elbo, rel=1e-6
    )
    # MIWAE(2, 3): the mean of two IWAE bounds of 3 draws each, the draws in groups.
    grouped = _log_weights(params, batch, key, 6).reshape(2, 3, -1)
    expected = -np.mean(jax.nn.logsumexp(grouped, axis=1) - np.log(3))
    assert value(Objective(bound="miwae", num_samples=3, num_groups=2)) == pytest.approx(
        float(expected), rel=1e-6
    )
    ciwae = Objective(bound="ciwae", num_samples=5, ciwae_beta=0.3)
    assert value(ciwae) == pytest.approx(0.3 * mean_elbo + 0.7 * value(iwae5), rel=1e-6)


def test_piwae_gives_each_network_the_gradient_of_its_bound(trained):
    params, batch = trained
    piwae = Objective(bound="piwae", num_samples=3, num_groups=2)
    value, grads = _value_and_grads(piwae, params, batch)
    iwae_value, iwae_grads = _value_and_grads(Objective(bound="iwae", num_samples=6), params, batch)
    miwae = Objective(bound="miwae", num_samples=3, num_groups=2)
    _, miwae_grads = _value_and_grads(miwae, params, batch)
    assert float(value) == pytest.approx(float(iwae_value), rel=1e-6)  # IWAE of all 6 draws
    jax.tree.map(assert_close_to_rounding, grads["decoder"], iwae_grads["decoder"])
    jax.tree.map(assert_close_to_rounding, grads["encoder"], miwae_grads["encoder"])
    # ... and not the other's (the two bounds' encoder gradients differ).
    difference = optax.tree.norm(jax.tree.map(jnp.subtract, iwae_grads, miwae_grads)["encoder"])
    assert float(difference) > 1e-3 * float(optax.tree.norm(miwae_grads["encoder"]))


def test_btcvae_with_a_tc_weight_of_one_is_the_elbo_of_its_draw(trained):
    """MI + TC + dimension-wise KL is each draw's log q - log p: at tc_weight = 1, beta-TCVAE
    is the ELBO with a Monte Carlo KL, whatever the estimator."""
    params, batch = trained
    key = jax.random.key(7)
    for estimator in ("mws", "mss"):
        btcvae = Objective(bound="btcvae", tc_weight=1.0, tc_estimator=estimator, dataset_size=50)
        value = float(btcvae.batch_loss(params, SMALL.apply, batch, key)[0])
        log_w = _log_weights(params, batch, key, 1)
        assert value == pytest.approx(-float(jnp.mean(log_w)), rel=1e-5)
    heavier = Objective(bound="btcvae", tc_weight=6.0, dataset_size=50)
    assert float(heavier.batch_loss(params, SMALL.apply, batch, key)[0]) != value


def test_the_mmd_objectives_add_the_weighted_mmd_to_their_base(trained):
    params, batch = trained
    key = jax.random.key(7)
    elbo = float(Objective().batch_loss(params, SMALL.apply, batch, key)[0])
    _, metrics = Objective().batch_loss(params, SMALL.apply, batch, key)
    for bound, base in (("infovae", elbo), ("wae", float(metrics["recon"]))):
        unweighted = Objective(bound=bound, mmd_weight=0.0)
        assert float(unweighted.batch_loss(params, SMALL.apply, batch, key)[0]) == pytest.approx(
            base, rel=1e-6
        )
        weighted = float(Objective(bound=bound).batch_loss(params, SMALL.apply, batch, key)[0])
        assert weighted != pytest.approx(base, rel=1e-6)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(bound="miwae", num_groups=0), "num_groups must be >= 1"),
        (dict(bound="iwae", num_samples=3, num_groups=2), "num_groups=2 is for miwae and piwae"),
        (dict(bound="ciwae", num_samples=3, ciwae_beta=1.5), r"ciwae_beta must be in \[0, 1\]"),
        (dict(bound="btcvae", tc_estimator="x"), "tc_estimator must be one of"),
        (dict(bound="wae", mmd_kernel="poly"), "mmd_kernel must be one of"),
        (dict(bound="btcvae", num_samples=3), "num_samples=3: >= 1 for iwae"),
    ],
)
def test_the_objectives_settings_are_checked(settings, message):
    with pytest.raises(ValueError, match=message):
        Objective(**settings)


# One run of each family through the run layer (their maths is tested above, each flag's
# checks in test_bad_research_settings_name_the_flag): groups, a batch estimator, the MMD
# with a prior's draws, a flow.
VARIANTS = {
    "piwae": dict(objective="piwae", num_samples=2, num_groups=2),
    "btcvae_mss": dict(objective="btcvae", tc_weight=4.0, tc_estimator="mss"),
    "infovae_rbf": dict(objective="infovae", mmd_kernel="rbf", mmd_bandwidth=0.5),
    "iaf": dict(posterior="iaf", num_flows=3, flow_hidden=16),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANTS)
def test_each_variant_trains_records_its_settings_and_keeps_them_on_resume(name, idx_dir, tmp_path):
    from vae_jax import workdir
    from vae_jax.evaluate import evaluate_run
    from vae_jax.run import train_and_evaluate

    settings = dict(num_train=256, batch_size=128, latent=(4,), hidden_sizes=(32,), epochs=1)
    config = Config(
        **settings, **VARIANTS[name], binarization="dynamic", data_dir=str(idx_dir),
        workdir=str(tmp_path / "w"), tensorboard=False,
    )  # fmt: skip
    record = train_and_evaluate(config.validate())
    assert np.isfinite(record["train_objective"]) and np.isfinite(record["test_elbo"])
    saved, _ = workdir.read_config(config.workdir)
    assert {key: getattr(saved, key) for key in VARIANTS[name]} == VARIANTS[name]
    run = workdir.load_model(config.workdir)
    images = np.asarray(data.binarize(jax.random.key(0), data.to_unit_interval(
        data.read_idx_dir(str(idx_dir)).test_images[:200])))  # fmt: skip
    results = evaluate_run(run.model, run.params, images, jax.random.key(1), (1, 20), mesh=None)
    neg = [results["bounds"][k]["neg_bound"] for k in ("1", "20")]
    assert neg[0] > neg[1] and np.isfinite(results["total_correlation"])
    assert results["mutual_information"] >= 0
    # A resume that would change one of them is refused, naming it.
    first = next(iter(VARIANTS[name].items()))
    changed = {**VARIANTS[name], first[0]: "gaussian" if first[0] == "posterior" else "iwae"}
    if first[0] == "objective":
        changed = {"objective": "iwae", "num_samples": 2}
    other = dataclasses.replace(config, epochs=2, **changed)
    with pytest.raises(InputError, match=f"--{first[0]}"):
        train_and_evaluate(other)


@pytest.mark.slow
def test_miwae_of_one_group_trains_as_iwae_from_the_command_line(idx_dir, tmp_path):
    import json
    import subprocess
    import sys

    from vae_jax.run import train_and_evaluate

    settings = dict(
        data_dir=str(idx_dir), num_train=512, batch_size=128, epochs=1, latent=(4,),
        hidden_sizes=(32,), binarization="dynamic", tensorboard=False,
    )  # fmt: skip
    # The same settings as flags: MIWAE from the command line, IWAE from Python.
    flags = [
        f"--data_dir={idx_dir}", "--num_train=512", "--batch_size=128", "--epochs=1",
        "--latent=4", "--hidden_sizes=32", "--binarization=dynamic", "--notensorboard",
    ]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "vae_jax.main", *flags, "--objective=miwae", "--num_groups=1",
         "--num_samples=5", f"--workdir={tmp_path / 'miwae'}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    iwae = Config(**settings, objective="iwae", num_samples=5, workdir=str(tmp_path / "iwae"))
    train_and_evaluate(iwae.validate())
    losses = {}
    for name in ("iwae", "miwae"):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        losses[name] = [json.loads(line)["train_loss"] for line in lines]
    assert losses["miwae"] == losses["iwae"]
