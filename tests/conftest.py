"""Shared test setup: strict JAX, and the data in ../shared/data (never downloaded)."""

import os
import pathlib

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("VAE_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))
TFDS_DIR = SHARED_DATA / "tensorflow_datasets"
IDX_DIR = SHARED_DATA / "mnist_idx"


@pytest.fixture(scope="session")
def idx_dir() -> pathlib.Path:
    assert (IDX_DIR / "train-images-idx3-ubyte.gz").is_file(), (
        f"MNIST IDX files missing in {IDX_DIR}"
    )
    return IDX_DIR


@pytest.fixture(scope="session")
def tfds_dir() -> pathlib.Path:
    assert (TFDS_DIR / "mnist").is_dir(), f"TFDS mnist missing in {TFDS_DIR}"
    return TFDS_DIR


@pytest.fixture(scope="session")
def mnist_idx(idx_dir):
    """All of MNIST read from the IDX files (0.3 s), shared by the tests."""
    from vae_jax import data

    return data.read_idx_dir(str(idx_dir))


@pytest.fixture(scope="session")
def mnist_tfds(tfds_dir):
    """All of MNIST read through tfds.data_source (about 5 s), shared by the tests."""
    from vae_jax import data

    return data.load_dataset("mnist", str(tfds_dir))


@pytest.fixture(scope="session")
def images(mnist_idx):
    """The first 1,000 MNIST training images, uint8 [1000, 784], for short training runs."""
    import jax.numpy as jnp

    return jnp.asarray(mnist_idx.train_images[:1000])
