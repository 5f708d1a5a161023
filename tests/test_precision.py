"""Every reported number at full float32 precision; training at --matmul_precision.

On a CPU every precision computes the same float32 dots, so the numbers cannot show the
difference: the programs do. Each dot and convolution carries its precision in its HLO
(`operand_precision={highest,highest}`), so these tests read the HLO of programs built
under a device default of bfloat16, as a TPU's is (a recent NVIDIA GPU's is TF32): as
lowered, which is the same on every backend (a GPU's compiled HLO turns dots into cuBLAS
calls). The evaluate command's every compiled program is checked the same way, from
XLA's dump, in tests/test_evaluate.py.
"""

import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest

import vae_jax
from vae_jax import bounds, models, precision
from vae_jax.config import RESUMABLE_CHANGES, Config
from vae_jax.convolutional import conv_hierarchical_vae
from vae_jax.train import create_train_state, init_params, train_epoch

HIGHEST = "operand_precision={highest,highest}"
DOT = re.compile(r"\b(dot|convolution)\(")

MODELS = {
    "mlp, VampPrior": vae_jax.VAE(
        latent=4, hidden_sizes=(16,), prior=vae_jax.VampPrior(num_pseudo_inputs=5)
    ),
    "ConvHVAE": conv_hierarchical_vae((3, 2), channels=(2, 4), hidden=8, num_decoder_convs=1),
}


def dots(hlo: str) -> list[str]:
    """The dot and convolution instructions of an HLO module's text."""
    return [line for line in hlo.splitlines() if DOT.search(line)]


def lowered_dots(lowered) -> list[str]:
    """The dots of a lowered program, as XLA receives it."""
    return dots(lowered.as_text(dialect="hlo"))


@pytest.mark.parametrize("name", MODELS)
def test_the_bounds_compile_every_dot_at_highest_whatever_the_default(name):
    model = MODELS[name]
    params = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))  # lowering only
    images = jnp.zeros((4, 784), jnp.float32)
    ids = jnp.arange(4)
    with jax.default_matmul_precision("bfloat16"):
        programs = {
            "elbo_terms": bounds.jitted_elbo_terms.lower(model, params, images, jax.random.key(1)),
            "-L_k": bounds.model_negative_bound.lower(
                model, params, images, ids, jax.random.key(1), num_samples=3, sample_chunk=3
            ),
        }
        for what, lowered in programs.items():
            found = lowered_dots(lowered)
            assert found, what
            assert all(HIGHEST in line for line in found), (what, found)


def test_training_runs_at_the_precision_it_is_given():
    model = MODELS["mlp, VampPrior"]
    state = create_train_state(model, jax.random.key(0), optax.adam(1e-3))
    images = jnp.zeros((256, 784), jnp.uint8)

    def epoch_dots(name):
        with jax.default_matmul_precision("bfloat16"), precision.training(name):
            lowered = train_epoch.lower(state, images, jax.random.key(1), batch_size=128)
            return lowered_dots(lowered)

    highest, default = epoch_dots("highest"), epoch_dots("default")
    assert highest and all(HIGHEST in line for line in highest)
    # "default" leaves the device's choice: the networks' dots follow it. The VampPrior's
    # squared distance pins its own (it cancels), so some lines stay at highest.
    assert sum(HIGHEST not in line for line in default) > len(default) // 2


def test_the_mixture_prior_pins_its_cancelling_matmuls():
    prior = vae_jax.MixtureOfGaussiansPrior(latent=3, num_components=4)
    z = jnp.ones((5, 3))
    params = prior.init(jax.random.key(0), z, method="log_prob")
    with jax.default_matmul_precision("bfloat16"):
        lowered = jax.jit(lambda p, z: prior.apply(p, z, method="log_prob")).lower(params, z)
        found = lowered_dots(lowered)
    assert len(found) == 2 and all(HIGHEST in line for line in found)


def test_the_flag_is_recorded_and_a_resumed_run_may_change_it():
    assert Config().matmul_precision == "default"
    assert "matmul_precision" in RESUMABLE_CHANGES
    assert '"matmul_precision": "high"' in Config(matmul_precision="high").to_json()
    with pytest.raises(vae_jax.InputError, match="--matmul_precision=tf32 is not one of"):
        Config(matmul_precision="tf32").validate()
    helpfull = subprocess.run(
        [sys.executable, "-m", "vae_jax.main", "--helpfull"], capture_output=True, text=True
    ).stdout
    assert "--matmul_precision: <default|high|highest>" in helpfull


def test_the_pictures_and_diagnostics_compile_at_highest_too():
    model = MODELS["mlp, VampPrior"]
    params = init_params(model, jax.random.key(0))
    images = jnp.zeros((3, 784), jnp.float32)
    with jax.default_matmul_precision("bfloat16"):
        for lowered in (
            models._posterior_gaussians.lower(model, params, images),
            models._reconstruct_images.lower(model, params, images),
            models._sample_images.lower(model, params, jax.random.key(0), 4),
        ):
            found = lowered_dots(lowered)
            assert found and all(HIGHEST in line for line in found)
