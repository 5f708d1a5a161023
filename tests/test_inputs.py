"""The one boundary for images (vae_jax/inputs.py), through every public function that
takes them: the same images in any dtype or layout give the same numbers, and anything
else is a ValueError that says what was expected, never a NaN, an internal error or a
number computed from the wrong thing.

The classes of input, one test each: dtypes; layouts; values outside the likelihood's
support; shapes that are no batch of this model's images; models that lack part of the
interface. Each runs through every function of `FUNCTIONS`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import vae_jax
from vae_jax import bounds, inputs, losses, models
from vae_jax.objective import Objective
from vae_jax.train import create_train_state, train_epoch, train_step

MODEL = vae_jax.VAE(latent=4, hidden_sizes=(16,))
PARAMS = create_train_state(MODEL, jax.random.key(0), optax.sgd(0.0)).params
KEY = jax.random.key(1)
PIXELS = np.random.default_rng(0).integers(0, 256, (6, 784)).astype(np.uint8)
UNIT = PIXELS.astype(np.float32) / 255  # the reference form: float32 in [0, 1]


def _step(images):
    state = create_train_state(MODEL, jax.random.key(0), optax.adam(1e-3))
    _, metrics = train_step(state, images, KEY)
    return metrics["loss"]


def _logits():
    return MODEL.apply({"params": PARAMS}, UNIT, KEY)[0]


# Each takes images and returns the numbers it computes from them.
FUNCTIONS = {
    "train_step": _step,
    "Objective.batch_loss": lambda x: Objective().batch_loss(PARAMS, MODEL.apply, x, KEY)[0],
    "bounds.elbo_terms": lambda x: bounds.elbo_terms(MODEL, PARAMS, x, KEY).loss,
    "bounds.estimate_negative_bound": lambda x: bounds.estimate_negative_bound(
        MODEL, PARAMS, x, KEY, 5
    ),
    "models.posterior": lambda x: models.posterior(MODEL, PARAMS, x)[0],
    "models.reconstruct_images": lambda x: models.reconstruct_images(MODEL, PARAMS, x),
    "losses.bernoulli_nll": lambda x: losses.bernoulli_nll(_logits(), x),
    "losses.negative_elbo": lambda x: (
        losses.negative_elbo(_logits(), x, jnp.zeros((6, 4)), jnp.zeros((6, 4))).loss
    ),
    "losses.gaussian_nll": lambda x: losses.gaussian_nll(_logits(), x),
}
BATCH_FUNCTIONS = [name for name in FUNCTIONS if not name.startswith("losses.")]


def _bfloat16(x):
    return jnp.asarray(x, jnp.bfloat16)


def _close(got, expected):
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize(
    "convert, as_float32",
    [
        pytest.param(lambda x: PIXELS, lambda x: UNIT, id="uint8"),
        pytest.param(lambda x: x > 0.5, lambda x: (x > 0.5).astype(np.float32), id="bool"),
        pytest.param(lambda x: x.astype(np.float16), lambda x: x.astype(np.float16), id="float16"),
        pytest.param(lambda x: x.astype(np.float64), lambda x: x, id="float64"),
        pytest.param(_bfloat16, _bfloat16, id="bfloat16"),
        pytest.param(jnp.asarray, lambda x: x, id="on the device"),
    ],
)  # fmt: skip
def test_every_dtype_gives_the_numbers_of_its_float32_values(function, convert, as_float32):
    fn = FUNCTIONS[function]
    expected = fn(np.asarray(as_float32(UNIT), np.float32))
    _close(fn(convert(UNIT)), expected)
    assert np.all(np.isfinite(np.asarray(expected)))


@pytest.mark.parametrize("function", BATCH_FUNCTIONS)
@pytest.mark.parametrize("shape", [(6, 28, 28), (6, 28, 28, 1), (6, 1, 784)])
def test_images_with_the_model_s_pixel_count_are_flattened(function, shape):
    fn = FUNCTIONS[function]
    _close(fn(UNIT.reshape(shape)), fn(UNIT))


def _with_nan(x):
    x = x.copy()
    x[2, 100] = np.nan
    return x


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize(
    "bad, message",
    [
        (UNIT * 255, r"must be in \[0, 1\] for this likelihood.*divide by 255"),
        (UNIT - 0.5, r"must be in \[0, 1\]"),
        (_with_nan(UNIT), "NaN or infinite"),
        (np.where(UNIT > 0.9, np.inf, UNIT), "NaN or infinite"),
        (np.where(UNIT > 0.9, np.float32(1.0000001), UNIT), r"\[0, 1.0000001\]: 1.0000001 > 1"),
    ],
    ids=["0..255 floats", "negative", "a NaN pixel", "inf", "one ulp over 1"],
)
def test_values_outside_the_likelihood_s_support_are_refused(function, bad, message):
    with pytest.raises(ValueError, match=message):
        FUNCTIONS[function](bad)


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint16, np.uint32])
def test_integers_other_than_uint8_are_refused_not_rescaled(function, dtype):
    # A binarized array of 0 and 1 as int64 was once divided by 255: 21.6 nats off, silently.
    binary = (UNIT > 0.5).astype(dtype)
    with pytest.raises(ValueError, match=r"no known scale.*astype\(np.uint8\).*astype\(bool\)"):
        FUNCTIONS[function](binary)


@pytest.mark.parametrize("function", [f for f in FUNCTIONS if f != "train_step"])
def test_device_arrays_have_their_values_checked_outside_the_training_step(function):
    with pytest.raises(ValueError, match="NaN or infinite"):
        FUNCTIONS[function](jnp.asarray(_with_nan(UNIT)))


def test_the_training_step_reads_no_device_values_but_checks_their_shape():
    # The documented limit (docs/api.md): a training loop never waits on the device for a
    # check, so a jax.Array's values pass unread; NumPy batches are read on the host.
    with pytest.raises(ValueError, match="must have 784 pixels"):
        _step(jnp.ones((6, 700)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        _step(_with_nan(UNIT))


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize(
    "bad, message",
    [
        (UNIT[:0], "empty batch|at least one pixel"),
        (UNIT[0], r"images\[None\]|same number of pixels"),
        (UNIT[:, :700], "784 pixels|same number of pixels"),
        (UNIT.reshape(6, 28, 28)[:, :, :27], "784 pixels|same number of pixels"),
        (UNIT.astype(np.complex64), "must be uint8 pixels"),
        (np.full((6, 784), "a", dtype=object), "must be uint8 pixels"),
    ],
    ids=["empty batch", "one image unbatched", "700 pixels", "28x27", "complex", "objects"],
)
def test_shapes_and_dtypes_that_are_no_batch_of_images_are_refused(function, bad, message):
    with pytest.raises(ValueError, match=message):
        FUNCTIONS[function](bad)


def test_the_epoch_and_the_batches_check_their_data():
    state = create_train_state(MODEL, jax.random.key(0), optax.adam(1e-3))
    with pytest.raises(ValueError, match="train_images must have 784 pixels"):
        train_epoch(state, jnp.zeros((512, 700), jnp.uint8), KEY, batch_size=128)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        next(vae_jax.data.batches(UNIT * 255, 2, KEY))
    assert next(vae_jax.data.batches(PIXELS, 2, KEY)).dtype == jnp.float32


def test_a_model_lacking_the_interface_is_named():
    class NoImageSize(nn.Module):  # the interface of docs/models.md, less `image_size`
        latent_sizes = (2,)

        def posterior(self, x, noise): ...
        def log_prior(self, z): ...
        def decode(self, z): ...
        def sample_prior(self, key, num_samples): ...

    for call in (
        lambda: create_train_state(NoImageSize(), KEY, optax.adam(1e-3)),
        lambda: bounds.estimate_negative_bound(NoImageSize(), {}, UNIT, KEY, 5),
        lambda: models.sample_images(NoImageSize(), {}, KEY, 2),
    ):
        with pytest.raises(ValueError, match="NoImageSize lacks image_size: .*docs/models.md"):
            call()


def test_the_sample_helper_refuses_a_mean_of_the_wrong_size():
    # A decoder of two outputs per pixel under a likelihood with no mean of its own: the
    # pictures would be 1,568 "probabilities" an image.
    def two_per_pixel(output, images):
        mean, log_scale = jnp.split(output, 2, axis=-1)
        return jnp.sum(jnp.abs(images - mean) * jnp.exp(-log_scale) + log_scale, axis=-1)

    decoder = vae_jax.Decoder(image_size=2 * 784, hidden_sizes=(16,))
    model = vae_jax.VAE(latent=4, hidden_sizes=(16,), decoder=decoder, likelihood=two_per_pixel)
    params = create_train_state(model, KEY, optax.adam(1e-3)).params
    assert np.isfinite(bounds.estimate_negative_bound(model, params, UNIT, KEY, 3)).all()
    with pytest.raises(ValueError, match="gives 1568 values per image for 784 pixels"):
        models.sample_images(model, params, KEY, 2)
    with_mean = model.clone(
        likelihood=vae_jax.likelihoods.from_function(
            two_per_pixel, mean=lambda output: jnp.split(output, 2, axis=-1)[0]
        )
    )
    assert models.sample_images(with_mean, params, KEY, 2).shape == (2, 784)


def test_negative_elbo_takes_a_likelihood_function_as_objective_does():
    def bernoulli(logits, images):
        return optax.sigmoid_binary_cross_entropy(logits, images).sum(-1)

    mean, logvar = jnp.zeros((6, 4)), jnp.zeros((6, 4))
    _close(
        losses.negative_elbo(_logits(), PIXELS, mean, logvar, reconstruction=bernoulli).loss,
        losses.negative_elbo(_logits(), UNIT, mean, logvar).loss,
    )


def test_check_images_keeps_host_arrays_on_the_host_and_uint8_as_it_is():
    checked = inputs.check_images(PIXELS.reshape(6, 28, 28, 1), 784)
    assert isinstance(checked, np.ndarray) and checked.dtype == np.uint8
    assert checked.shape == (6, 784)
    assert isinstance(inputs.check_images(jnp.asarray(UNIT), 784), jax.Array)
