"""Shared test setup: strict JAX, pinned matmul precision, no network, and the data the
tests read.

Every test runs on the slice of real MNIST shipped in tests/data/mnist_slice (the first
2,048 training and 1,024 test images, as IDX files and as a TFDS data dir). The few that
need all of MNIST take the `full_data` fixture: the folder named by $VAE_JAX_SHARED_DATA
(laid out as ../shared/data: mnist_idx/ and tensorflow_datasets/). Without it they are
skipped, except under CI=true, where missing full data fails them.
"""

import contextlib
import importlib.util
import os
import pathlib
import shutil
import socket
import tempfile
from collections.abc import Iterator

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")

# The tests check exact maths (closed forms, equalities between estimators) to 1e-5, and
# golden values: they pin float32 matmuls at full precision, as JAX's own numerics tests
# pin theirs (`jax.default_matmul_precision("float32")`). On a CPU this changes nothing;
# on a GPU since Ampere the default is TF32, whose 10-bit mantissa fails those tolerances
# (6 tests did on an H200 without it). Set in the environment too, for the runs the tests
# start; the tests of --matmul_precision and of the scoring's own pin set it explicitly.
MATMUL_PRECISION = "highest"
os.environ["JAX_DEFAULT_MATMUL_PRECISION"] = MATMUL_PRECISION
jax.config.update("jax_default_matmul_precision", MATMUL_PRECISION)

_CACHE_ENV = "VAE_JAX_TESTS_COMPILATION_CACHE"
_OWNED_CACHE = pytest.StashKey[str]()


def pytest_configure(config):
    """One JAX compilation cache for the session, shared by every pytest-xdist worker
    and every subprocess: the tests' many `python -m vae_jax.main` runs, and the workers'
    tests, compile the same programs, and XLA's compilation, not their few steps, is
    most of their time. Made by the first process (the controller, which starts the
    workers after this hook, so they inherit it) and removed by it at the end; set
    before any test module is imported, so before the first compilation."""
    folder = os.environ.get(_CACHE_ENV)
    if not folder:
        folder = tempfile.mkdtemp(prefix="vae_jax_tests_compiled_")
        os.environ[_CACHE_ENV] = folder
        config.stash[_OWNED_CACHE] = folder
    settings = {
        "jax_compilation_cache_dir": folder,
        "jax_persistent_cache_min_compile_time_secs": 0,
        "jax_persistent_cache_min_entry_size_bytes": -1,
    }
    for name, value in settings.items():
        os.environ[name.upper()] = str(value)  # for the subprocesses
        jax.config.update(name, value)


def pytest_unconfigure(config):
    shutil.rmtree(config.stash.get(_OWNED_CACHE, ""), ignore_errors=True)


REPO = pathlib.Path(__file__).resolve().parents[1]
SLICE = REPO / "tests" / "data" / "mnist_slice"
SLICE_NUM_TRAIN, SLICE_NUM_TEST = 2048, 1024
FULL_DATA_ENV = "VAE_JAX_SHARED_DATA"


@contextlib.contextmanager
def refusing_url() -> Iterator[str]:
    """A URL on 127.0.0.1 whose port refuses connections: bound, never listening."""
    refusing = socket.socket()
    refusing.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{refusing.getsockname()[1]}/"
    finally:
        refusing.close()


@pytest.fixture(scope="session", autouse=True)
def no_network_and_no_home_data(tmp_path_factory):
    """Points every download at a local port that refuses connections, the cache at an
    empty folder and TFDS's default data dir at nothing, for this process and its
    subprocesses: a test reads only the data it names, and never reaches the internet."""
    with refusing_url() as url, pytest.MonkeyPatch.context() as patch:
        patch.setenv("VAE_JAX_MIRROR", url)
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        patch.setenv("TFDS_DATA_DIR", str(tmp_path_factory.mktemp("no_tfds_data")))
        yield


@pytest.fixture(scope="session")
def idx_dir() -> pathlib.Path:
    """The slice as the four IDX .gz files."""
    return SLICE / "idx"


def needs_module(name: str, what: str) -> None:
    """Skips a test that needs the optional module `name` where it is not installed (a GPU
    image may lack it), saying so; under CI=true, which installs every extra, fails it."""
    if importlib.util.find_spec(name) is None:
        reason = f"needs {name} ({what}), which is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI installs the test extra: {reason}")
        pytest.skip(reason)


def needs_tfds() -> None:
    """Skips a test of the TFDS reader where tensorflow-datasets is not installed; the
    commands run without it."""
    needs_module("tensorflow_datasets", "the TFDS reader")


@pytest.fixture(scope="session")
def tfds_dir() -> pathlib.Path:
    """The slice as a TFDS data dir (mnist 3.0.1, array_record)."""
    needs_tfds()
    return SLICE / "tensorflow_datasets"


@pytest.fixture(scope="session")
def mnist_idx(idx_dir):
    """The slice read from the IDX files, shared by the tests."""
    from vae_jax import data

    return data.read_idx_dir(str(idx_dir))


@pytest.fixture(scope="session")
def mnist_tfds(tfds_dir):
    """The slice read through tfds.data_source, shared by the tests."""
    from vae_jax import data

    return data.load_dataset("mnist", str(tfds_dir))


@pytest.fixture(scope="session")
def images(mnist_idx):
    """The first 1,000 MNIST training images, uint8 [1000, 784], for short training runs."""
    import jax.numpy as jnp

    return jnp.asarray(mnist_idx.train_images[:1000])


@pytest.fixture(scope="session")
def full_data() -> pathlib.Path:
    """All of MNIST: $VAE_JAX_SHARED_DATA with mnist_idx/ and tensorflow_datasets/mnist."""
    folder = os.environ.get(FULL_DATA_ENV)
    path = pathlib.Path(folder or "/nonexistent")
    if (path / "mnist_idx" / "train-images-idx3-ubyte.gz").is_file() and (
        path / "tensorflow_datasets" / "mnist"
    ).is_dir():
        return path
    reason = (
        f"needs all of MNIST: set {FULL_DATA_ENV} to a folder with mnist_idx/ and "
        f"tensorflow_datasets/ (got {folder!r})"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the full-data tests: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def full_mnist_idx(full_data):
    """All of MNIST read from the IDX files (0.3 s)."""
    from vae_jax import data

    return data.read_idx_dir(str(full_data / "mnist_idx"))


@pytest.fixture(scope="session")
def tiny_vae():
    """A 36-pixel VAE with latent 3, its initial params, and 30 binary images."""
    import jax.numpy as jnp
    import numpy as np

    from vae_jax.models import VAE

    model = VAE(latent=3, hidden_sizes=(16,), image_size=36)
    params = model.init(jax.random.key(0), jnp.zeros((1, 36)), jax.random.key(1))["params"]
    images = (np.random.default_rng(0).uniform(size=(30, 36)) > 0.5).astype(np.float32)
    return model, params, images


def assert_close_to_rounding(ours, theirs) -> None:
    """Equal up to the float32 rounding of two programs' sums: to 1e-5 of each value, and
    of the largest value of `theirs` (a value near zero has no relative precision)."""
    import numpy as np

    scale = float(np.max(np.abs(theirs)))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * scale)
