"""vae_jax: the MNIST variational autoencoder as pure JAX/Flax functions.

Where things are: models.py (Encoder, Decoder, ConvEncoder, ConvDecoder, VAE,
reparameterize), losses.py (per-example loss terms: ELBO, IWAE bound, free bits),
schedules.py (beta schedules), data.py (which copy to read; TFDS and IDX readers),
download.py (the IDX files from the mirrors, verified), train.py (train_step,
train_epoch, train_and_evaluate), sweep.py (S models in one vmapped program),
parallel.py (devices and hosts), evaluate.py (likelihood bounds), plots.py, config.py.
"""

from vae_jax.config import Config
from vae_jax.errors import InputError
from vae_jax.losses import (
    bernoulli_nll,
    gaussian_nll,
    kl_to_standard_normal,
    laplace_nll,
    negative_elbo,
    negative_iwae_bound,
)
from vae_jax.models import VAE, ConvDecoder, ConvEncoder, Decoder, Encoder, reparameterize
from vae_jax.schedules import BetaSchedule
from vae_jax.train import create_train_state, train_and_evaluate, train_epoch, train_step

__all__ = [
    "VAE",
    "BetaSchedule",
    "Config",
    "ConvDecoder",
    "ConvEncoder",
    "Decoder",
    "Encoder",
    "InputError",
    "bernoulli_nll",
    "create_train_state",
    "gaussian_nll",
    "kl_to_standard_normal",
    "laplace_nll",
    "negative_elbo",
    "negative_iwae_bound",
    "reparameterize",
    "train_and_evaluate",
    "train_epoch",
    "train_step",
]
