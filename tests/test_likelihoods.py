"""p(x|z) as a value of the model (vae_jax/likelihoods.py): a model, and a loaded run,
score, sample and reconstruct with their own likelihood, with nothing else passed."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vae_jax
from vae_jax import bounds, data, likelihoods, losses, models
from vae_jax.train import init_params, run_keys


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


@pytest.mark.slow
def test_a_loaded_run_scores_itself_as_evaluate_does(idx_dir, tmp_path):
    workdir = tmp_path / "gaussian"
    flags = [
        f"--data_dir={idx_dir}",
        f"--workdir={workdir}",
        "--epochs=1",
        "--num_train=512",
        "--batch_size=128",
        "--latent=4",
        "--hidden_sizes=32",
        "--reconstruction=gaussian",
        "--notensorboard",
    ]
    for command in (
        ["vae_jax.main", *flags[:2], *flags[2:]],
        ["vae_jax.evaluate", f"--workdir={workdir}", "--num_images=200", "--num_samples=1,20"],
    ):
        result = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
    reported = json.loads((workdir / "eval.json").read_text())["bounds"]

    run = vae_jax.load_model(str(workdir))  # reads no data: the model carries its likelihood
    assert run.model.likelihood == likelihoods.Gaussian(0.1)
    test_images = data.eval_inputs(data.read_idx_dir(str(idx_dir)).test_images[:200], "none")
    for k in (1, 20):
        key = jax.random.fold_in(run_keys(run.config.seed).eval, k)  # evaluate's draws
        neg_bound = bounds.estimate_negative_bound(run.model, run.params, test_images, key, k)
        assert neg_bound.mean() == pytest.approx(reported[str(k)]["neg_bound"], rel=1e-6)
    bernoulli = run.model.clone(likelihood=likelihoods.Bernoulli())
    wrong = bounds.estimate_negative_bound(bernoulli, run.params, test_images, key, 20).mean()
    assert abs(wrong - reported["20"]["neg_bound"]) > 100  # what a Bernoulli would have said
    samples = models.sample_images(run.model, run.params, jax.random.key(0), 4)
    assert samples.shape == (4, 784) and np.all((samples >= 0) & (samples <= 1))
