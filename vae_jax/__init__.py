"""vae_jax: the MNIST variational autoencoder as pure JAX/Flax functions.

Where things are.
  The maths (pure functions, importable alone):
    models.py     VAE, HierarchicalVAE: the model interface; Encoder, Decoder, conv ones
    convolutional.py  the VampPrior paper's ConvHVAE, as the networks of a HierarchicalVAE
    priors.py     StandardNormalPrior, VampPrior, MixtureOfGaussiansPrior
    flows.py      IAF: an inverse autoregressive flow for q(z|x)
    likelihoods.py  p(x|z) as a value of the model: Bernoulli, Gaussian, ... or a function
    losses.py     per-image likelihoods, KL, ELBO, IWAE bound, free bits
    inputs.py     the one boundary for images: dtype, shape and values checked
    precision.py  full float32 matmuls for every reported number; a choice for training
    objective.py  Objective: what a step minimises (static), and its batch loss: the ELBO,
                  IWAE, MIWAE, CIWAE, PIWAE, beta-TCVAE, InfoVAE, WAE-MMD
    divergences.py  the KL's decomposition (beta-TCVAE), MMD: their estimators
    schedules.py  KL-weight schedules;  optim.py: optimisers and learning-rate schedules
    train.py      create_train_state, train_step, train_epoch (one lax.scan per epoch)
    bounds.py     the test ELBO, importance-weighted bounds (NLL), latent diagnostics
    sweep.py      S models in one vmapped program;  parallel.py: devices and hosts
  Data: data.py (which copy to read; TFDS and IDX readers), download.py (verified fetch).
  The run: config.py (every setting), workdir.py (the run's files, lock, load_model),
    checkpoint.py (orbax), plots.py, summaries.py (writers), run.py (train_and_evaluate,
    as named pieces, with callbacks), cli.py (the commands' flag errors), folders.py
    (a folder a failed command made is removed again).
  Trained models: pretrained/ (names, card, load: the shipped weights, checked).
  Commands: main.py (python -m vae_jax.main), evaluate.py (python -m vae_jax.evaluate).

`import vae_jax` loads the maths only: `train_and_evaluate` (orbax, matplotlib) is
imported on first use.
"""

import importlib

from vae_jax.config import Config
from vae_jax.errors import InputError
from vae_jax.flows import IAF
from vae_jax.likelihoods import Bernoulli, ContinuousBernoulli, Gaussian, Laplace
from vae_jax.losses import (
    bernoulli_nll,
    gaussian_nll,
    kl_to_standard_normal,
    laplace_nll,
    negative_elbo,
    negative_iwae_bound,
)
from vae_jax.models import (
    VAE,
    ConvDecoder,
    ConvEncoder,
    Decoder,
    Encoder,
    GatedDense,
    HierarchicalVAE,
    PosteriorDraw,
    reparameterize,
)
from vae_jax.objective import Objective
from vae_jax.priors import MixtureOfGaussiansPrior, StandardNormalPrior, VampPrior
from vae_jax.schedules import BetaSchedule
from vae_jax.train import create_train_state, train_epoch, train_step
from vae_jax.workdir import load_model

# Names whose modules load heavy libraries, imported when first used.
_LAZY = {"train_and_evaluate": "vae_jax.run"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vae_jax' has no attribute {name!r}")


__all__ = [
    "VAE",
    "Bernoulli",
    "BetaSchedule",
    "Config",
    "ContinuousBernoulli",
    "ConvDecoder",
    "ConvEncoder",
    "Decoder",
    "Encoder",
    "GatedDense",
    "Gaussian",
    "HierarchicalVAE",
    "IAF",
    "MixtureOfGaussiansPrior",
    "PosteriorDraw",
    "StandardNormalPrior",
    "VampPrior",
    "InputError",
    "Laplace",
    "Objective",
    "bernoulli_nll",
    "create_train_state",
    "gaussian_nll",
    "kl_to_standard_normal",
    "laplace_nll",
    "load_model",
    "negative_elbo",
    "negative_iwae_bound",
    "reparameterize",
    "train_and_evaluate",
    "train_epoch",
    "train_step",
]
