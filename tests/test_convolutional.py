"""The ConvHVAE (vae_jax/convolutional.py): the VampPrior paper's convolutional hierarchy,
at a small size on the CPU."""

import jax
import numpy as np
import optax
import pytest

from vae_jax import bounds, data, models
from vae_jax.config import Config
from vae_jax.convolutional import LOGVAR_RANGE, ConvPosterior, conv_hierarchical_vae
from vae_jax.models import HierarchicalVAE
from vae_jax.priors import VampPrior
from vae_jax.train import create_train_state, train_step

SMALL = dict(latent=(4, 3), channels=(4,), hidden=16, num_decoder_convs=1)


@pytest.fixture(scope="module")
def trained(images):
    """The small ConvHVAE with a VampPrior after 15 steps on 64 binarized digits."""
    model = conv_hierarchical_vae(**SMALL, prior=VampPrior(num_pseudo_inputs=10))
    state = create_train_state(model, jax.random.key(0), optax.adam(3e-3))
    batch = data.binarize(jax.random.key(1), data.to_unit_interval(images[:64]))
    losses = []
    for step in range(15):
        state, metrics = train_step(state, batch, jax.random.key(step))
        losses.append(float(metrics["loss"]))
    return model, state.params, batch[:8], losses


def test_the_networks_and_their_shapes(trained):
    model, params, _, _ = trained
    assert isinstance(model, HierarchicalVAE) and model.latent_sizes == (4, 3)
    # Encoders: a stride-2 pair of gated convs (value and gate each) per channel count and a
    # feature conv; the lower one also takes z_2 through a gated dense layer, joined by another.
    assert sorted(params["encoders_1"]) == ["conv1", "conv2", "conv_features", "fc_mean_logvar"]
    assert {"fc_z_above", "fc_joint"} <= set(params["encoders_0"])
    assert params["encoders_1"]["conv1"]["value"]["kernel"].shape == (7, 7, 1, 4)
    assert params["encoders_0"]["conv1"]["value"]["kernel"].shape == (3, 3, 1, 4)
    assert params["encoders_1"]["conv2"]["gate"]["kernel"].shape == (3, 3, 4, 4)
    assert params["encoders_1"]["fc_mean_logvar"]["kernel"].shape == (14 * 14 * 6, 2 * 3)
    assert sorted(params["decoder"]) == ["conv1", "conv_logits", "fc_joint", "fc_z1", "fc_z2"]
    assert params["decoder"]["conv_logits"]["kernel"].shape == (1, 1, 4, 1)
    x = jax.ShapeDtypeStruct((5, 784), np.float32)
    noise = (
        jax.ShapeDtypeStruct((2, 5, 4), np.float32),
        jax.ShapeDtypeStruct((2, 5, 3), np.float32),
    )
    draw = jax.eval_shape(
        lambda x, n: model.apply({"params": params}, x, n, method="posterior"), x, noise
    )
    assert [z.shape for z in draw.z] == [(2, 5, 4), (2, 5, 3)] and draw.log_q.shape == (2, 5)
    output = jax.eval_shape(lambda z: model.apply({"params": params}, z, method="decode"), draw.z)
    assert output.shape == (2, 5, 784)


def test_log_variances_are_clipped_as_in_the_paper():
    head = ConvPosterior(2, channels=(2,), hidden=4)
    x = np.full((3, 784), 1e3, np.float32)  # huge inputs: the raw heads would leave the range
    variables = head.init(jax.random.key(0), x)
    _, logvar = head.apply(variables, x)
    assert np.all(logvar >= LOGVAR_RANGE[0]) and np.all(logvar <= LOGVAR_RANGE[1])


def test_a_short_training_lowers_the_loss(trained):
    model, params, _, losses = trained
    assert np.isfinite(losses).all() and np.mean(losses[-5:]) < 0.8 * losses[0]
    samples = models.sample_images(model, params, jax.random.key(0), 4)
    assert samples.shape == (4, 784) and np.all((samples >= 0) & (samples <= 1))


def test_densities_agree_and_the_bounds_fall_with_k(trained):
    model, params, batch, _ = trained
    variables = {"params": params}

    @jax.jit
    def log_q_both_ways(key):
        # log q of the draws as the draw reports it, and as the posterior scores given draws.
        draw = model.apply(variables, batch, key, 6, method="sample_posterior")
        return draw.log_q, model.apply(variables, batch, draw.z, method="log_posterior")

    reported, scored = log_q_both_ways(jax.random.key(2))
    np.testing.assert_allclose(scored, reported, rtol=1e-5)
    neg = [
        bounds.estimate_negative_bound(model, params, batch, jax.random.key(3), k).mean()
        for k in (1, 20, 200)
    ]
    assert np.all(np.isfinite(neg)) and neg[0] > neg[1] > neg[2]


def test_the_command_line_builds_it():
    config = Config(
        architecture="conv", latent=(4, 3), conv_channels=(4, 8), hidden_sizes=(16,), prior="vamp"
    ).validate()
    model = config.build_model((28, 28, 1))
    assert isinstance(model.decoder, type(conv_hierarchical_vae().decoder))
    assert isinstance(model.prior, VampPrior) and model.encoders[-1].channels == (4, 8)
    assert model.encoders[0].hidden == 16 and model.decoder.channels == 8
