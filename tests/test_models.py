"""The model's shapes, and the reparameterization trick's determinism, gradients and moments."""

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.models import VAE, reconstruct_images, reparameterize, sample_images


def test_reparameterize_is_a_function_of_its_key():
    mean, logvar = jnp.zeros((4, 8)), jnp.zeros((4, 8))
    z1 = reparameterize(jax.random.key(0), mean, logvar)
    z2 = reparameterize(jax.random.key(0), mean, logvar)
    z3 = reparameterize(jax.random.key(1), mean, logvar)
    np.testing.assert_array_equal(z1, z2)
    assert not np.allclose(z1, z3)
    assert z1.shape == (4, 8)


def test_reparameterize_gradients_reach_mean_and_logvar():
    key = jax.random.key(2)
    mean, logvar = jnp.full((3, 5), 0.5), jnp.full((3, 5), -0.4)
    grad_mean, grad_logvar = jax.grad(
        lambda m, lv: jnp.sum(reparameterize(key, m, lv)), argnums=(0, 1)
    )(mean, logvar)
    eps = jax.random.normal(key, mean.shape)
    np.testing.assert_allclose(grad_mean, 1.0)  # dz/dmean = 1
    np.testing.assert_allclose(grad_logvar, 0.5 * eps * jnp.exp(0.5 * logvar), rtol=1e-6)
    assert np.all(np.abs(grad_logvar) > 0)


def test_reparameterize_moments():
    mean = jnp.array([1.0, -2.0, 0.0])
    logvar = jnp.log(jnp.array([0.25, 4.0, 1.0]))
    num_draws = 200_000
    z = reparameterize(
        jax.random.key(3),
        jnp.broadcast_to(mean, (num_draws, 3)),
        jnp.broadcast_to(logvar, (num_draws, 3)),
    )
    variance = jnp.exp(logvar)
    # Within 4 standard errors: sqrt(var / n) for the mean, var * sqrt(2 / n) for the variance.
    assert np.all(np.abs(z.mean(0) - mean) < 4 * np.sqrt(variance / num_draws))
    assert np.all(np.abs(z.var(0) - variance) < 4 * variance * np.sqrt(2 / num_draws))


def test_reference_network_shapes_at_latent_64():
    model = VAE(latent=64)
    params = model.init(jax.random.key(0), jnp.zeros((1, 784)), jax.random.key(1))["params"]
    shapes = jax.tree.map(jnp.shape, params)
    assert shapes == {
        "encoder": {
            "fc1": {"kernel": (784, 512), "bias": (512,)},
            "fc2": {"kernel": (512, 256), "bias": (256,)},
            "fc_mean_logvar": {"kernel": (256, 128), "bias": (128,)},
        },
        "decoder": {
            "fc1": {"kernel": (64, 256), "bias": (256,)},
            "fc2": {"kernel": (256, 512), "bias": (512,)},
            "fc_logits": {"kernel": (512, 784), "bias": (784,)},
        },
    }
    # As many as the PyTorch reference VAE(d=64): sum of (n_in + 1) * n_out over its 6 layers.
    assert sum(p.size for p in jax.tree.leaves(params)) == 1_116_560


def test_forward_shapes_determinism_and_configurable_widths():
    model = VAE(latent=3, hidden_sizes=(20, 10), image_size=12)
    images = jax.random.uniform(jax.random.key(0), (5, 12))
    params = model.init(jax.random.key(1), images, jax.random.key(2))["params"]
    assert params["encoder"]["fc1"]["kernel"].shape == (12, 20)
    assert params["decoder"]["fc1"]["kernel"].shape == (3, 10)
    logits, mean, logvar = model.apply({"params": params}, images, jax.random.key(3))
    assert logits.shape == (5, 12) and mean.shape == logvar.shape == (5, 3)
    again = model.apply({"params": params}, images, jax.random.key(3))
    np.testing.assert_array_equal(logits, again[0])
    other = model.apply({"params": params}, images, jax.random.key(4))
    np.testing.assert_array_equal(mean, other[1])  # the encoder does not depend on the key
    assert not np.allclose(logits, other[0])  # the decoded sample does


def test_sample_and_reconstruct_give_probabilities():
    model = VAE(latent=2, hidden_sizes=(8,), image_size=6)
    params = model.init(jax.random.key(0), jnp.zeros((1, 6)), jax.random.key(1))["params"]
    samples = sample_images(model, params, jax.random.key(2), 7)
    np.testing.assert_array_equal(samples, sample_images(model, params, jax.random.key(2), 7))
    recons = reconstruct_images(model, params, jnp.full((3, 6), 0.5))
    assert samples.shape == (7, 6) and recons.shape == (3, 6)
    for x in (samples, recons):
        assert np.all((x > 0) & (x < 1))


def test_bfloat16_matmuls_keep_float32_parameters_and_outputs():
    images = jax.random.uniform(jax.random.key(0), (16, 784))
    fast = VAE(latent=8, hidden_sizes=(64, 32), dtype=jnp.bfloat16)
    params = fast.init(jax.random.key(1), images, jax.random.key(2))["params"]
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    outputs = fast.apply({"params": params}, images, jax.random.key(3))
    assert [x.dtype for x in outputs] == [jnp.float32] * 3
    # The same parameters in float32 give the same numbers to bfloat16's 8-bit mantissa.
    exact = VAE(latent=8, hidden_sizes=(64, 32)).apply(
        {"params": params}, images, jax.random.key(3)
    )
    for approximate, reference in zip(outputs, exact, strict=True):
        assert not np.array_equal(approximate, reference)  # The matmuls did run in bfloat16.
        np.testing.assert_allclose(approximate, reference, atol=0.05 * np.abs(reference).max())


def test_bfloat16_runs_the_hidden_layers_only_in_bfloat16():
    images = jnp.zeros((2, 784))
    fast = VAE(latent=8, hidden_sizes=(64, 32), dtype=jnp.bfloat16)
    params = fast.init(jax.random.key(1), images, jax.random.key(2))["params"]
    jaxpr = jax.make_jaxpr(lambda p: fast.apply({"params": p}, images, jax.random.key(3)))(params)
    matmuls = [
        (eqn.invars[1].aval.shape, eqn.invars[0].aval.dtype)
        for eqn in jaxpr.jaxpr.eqns
        if eqn.primitive.name == "dot_general"
    ]
    # Encoder 784-64-32, then the float32 mean/logvar head; decoder 8-32-64, then the
    # float32 logits head.
    assert matmuls == [
        ((784, 64), jnp.bfloat16),
        ((64, 32), jnp.bfloat16),
        ((32, 16), jnp.float32),
        ((8, 32), jnp.bfloat16),
        ((32, 64), jnp.bfloat16),
        ((64, 784), jnp.float32),
    ]
