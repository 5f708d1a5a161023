"""Image datasets as uint8 arrays: TFDS (without TensorFlow) or MNIST-format IDX files.

Two readers give the same arrays:
- `tfds.data_source` over a TFDS data dir prepared as array_record (no TensorFlow);
- numpy over a folder holding the four IDX files (`train-images-idx3-ubyte[.gz]`, ...).
`find_data` decides which copy to read and, for mnist and fashion_mnist when there is
none, fetches the IDX files with `vae_jax.download.download` (verified before use).

Pixels stay uint8 here ([N, pixels], flattened); `to_unit_interval` and `binarize`
turn them into model inputs in [0, 1] on the device.
"""

import contextlib
import glob
import gzip
import logging
import os
from collections.abc import Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.download import DATASETS, cache_dir, download, identify
from vae_jax.errors import InputError
from vae_jax.inputs import check_batch, to_unit_interval  # noqa: F401 (part of data's API)

IDX_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
# The test set is binarized once, with this seed whatever the run's seed, so every run
# is scored on the same binary images.
TEST_BINARIZATION_SEED = 0


class Dataset(NamedTuple):
    """Train and test splits, images flattened to [N, pixels] uint8, labels [N] int32."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    image_shape: tuple[int, int, int]  # (height, width, channels)
    source: str  # where the arrays were read from, for logs


class DataLocation(NamedTuple):
    """Where a dataset is read from: `format` is "idx" (a folder of the four IDX files)
    or "tfds" (a TFDS data dir)."""

    format: str
    path: str


def find_data(name: str, data_dir: str | None = None, allow_download: bool = True) -> DataLocation:
    """Finds a copy of `name`, downloading mnist or fashion_mnist when there is none.

    The first of these that applies:
    1. `data_dir` holds all four IDX files, or a TFDS `name` prepared as array_record:
       read it as it is.
    2. `data_dir` does not exist, is empty or holds only some of the four `.gz` files (a
       download cut short): the missing files are downloaded into it.
    3. No `data_dir`: a TFDS data dir ($TFDS_DATA_DIR, else ~/tensorflow_datasets)
       holding `name` prepared as array_record.
    4. No `data_dir`: the cache (`vae_jax.download.cache_dir(name)`), where missing files
       are downloaded and present ones verified.
    Anything else is TFDS's to find, and its failure an InputError saying where we looked.

    Args:
      allow_download: False never touches the network: a copy that would be downloaded
        is an InputError naming the missing files.
    """
    downloadable = name in DATASETS
    if data_dir is not None:
        if _tfds_prepared(data_dir, name):
            return DataLocation("tfds", data_dir)
        if all(_find_idx_file(data_dir, stem) for stem in IDX_FILES.values()):
            return DataLocation("idx", data_dir)
        if downloadable and _holds_only_downloads(data_dir, name):
            return DataLocation("idx", download(name, data_dir, offline=not allow_download))
        if _find_idx_file(data_dir, IDX_FILES[("train", "images")]):
            return DataLocation("idx", data_dir)  # incomplete: read_idx_dir says what is missing
        return DataLocation("tfds", data_dir)
    # TFDS reads $TFDS_DATA_DIR once, at import; resolve it here so it holds per call.
    tfds_dir = os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
    if downloadable and not _tfds_prepared(tfds_dir, name):
        return DataLocation("idx", download(name, cache_dir(name), offline=not allow_download))
    return DataLocation("tfds", tfds_dir)


def load_dataset(
    name: str, data_dir: str | None = None, num_train: int = 0, allow_download: bool = True
) -> Dataset:
    """Reads a dataset's train and test splits into host memory.

    Args:
      name: TFDS dataset name (`mnist`, `fashion_mnist`, ...). Ignored when `data_dir`
        holds IDX files, which are read whatever their content.
      data_dir: a TFDS data dir, or a folder of the four IDX files; None looks in TFDS's
        default data dir, then in the cache (see `find_data` for the order).
      num_train: keep the first `num_train` training images; 0 keeps all.
      allow_download: whether a missing mnist or fashion_mnist may be downloaded.

    Raises:
      InputError: the data are missing, unreadable or malformed, or cannot be downloaded.
    """
    location = find_data(name, data_dir, allow_download)
    if location.format == "idx":
        check_idx_dataset(name, location.path)
        dataset = read_idx_dir(location.path)
    else:
        dataset = read_tfds(name, location.path, num_train)
    if num_train:
        if num_train > len(dataset.train_images):
            raise InputError(
                f"--num_train={num_train} exceeds the {len(dataset.train_images)} training "
                f"images of {dataset.source}; lower --num_train"
            )
        dataset = dataset._replace(
            train_images=dataset.train_images[:num_train],
            train_labels=dataset.train_labels[:num_train],
        )
    return dataset


def check_idx_dataset(name: str, folder: str) -> None:
    """Raises InputError unless `folder`'s IDX files may be read as dataset `name`: a
    dataset that comes as IDX files (mnist, fashion_mnist), and not another one's files
    (`download.identify`; a slice or files of one's own are taken as named)."""
    if name not in DATASETS:
        raise InputError(
            f"--dataset={name} does not come as IDX files, which {folder} holds: IDX files "
            f"are {' or '.join(DATASETS)}; name one, or point --data_dir at a TFDS data dir "
            f"holding {name}"
        )
    found = identify(folder)
    if found is not None and found != name:
        raise InputError(
            f"{folder} holds the {found} IDX files, not {name}'s; pass --dataset={found}, or "
            f"point --data_dir at {name}'s files"
        )


def split_validation(
    dataset: Dataset, num_valid: int, num_train: int = 0
) -> tuple[Dataset, np.ndarray]:
    """Holds out the last `num_valid` training images for model selection.

    Returns the dataset whose training split is the first `num_train` (0: all) of the
    images not held out, and the held-out images [num_valid, pixels] uint8. The test
    split is untouched, so it is never used to choose anything.
    """
    available = len(dataset.train_images) - num_valid
    if available < max(num_train, 1):
        raise InputError(
            f"--num_valid={num_valid} leaves {max(available, 0)} of the "
            f"{len(dataset.train_images)} training images, fewer than --num_train="
            f"{num_train or 1}; lower --num_valid or --num_train"
        )
    kept = slice(0, num_train or available)
    valid_images = dataset.train_images[available:]
    dataset = dataset._replace(
        train_images=dataset.train_images[kept], train_labels=dataset.train_labels[kept]
    )
    return dataset, valid_images


def _tfds_prepared(data_dir: str, name: str) -> bool:
    """Whether `data_dir` holds `name` prepared as array_record (readable without TF)."""
    pattern = os.path.join(glob.escape(data_dir), name, "*", f"{name}-train.array_record*")
    return bool(glob.glob(pattern))


def _holds_only_downloads(folder: str, name: str) -> bool:
    """Whether `folder` is missing, empty, or holds nothing but `name`'s download files
    (hidden files, such as the download's lock and temporary files, aside)."""
    if not os.path.isdir(folder):
        return not os.path.exists(folder)
    names = {remote.name for remote in DATASETS[name].files}
    return all(entry in names or entry.startswith(".") for entry in os.listdir(folder))


# --- IDX files -----------------------------------------------------------------------


def _find_idx_file(folder: str, stem: str) -> str | None:
    for path in (os.path.join(folder, stem), os.path.join(folder, stem + ".gz")):
        if os.path.isfile(path):
            return path
    return None


def read_idx(path: str) -> np.ndarray:
    """Reads one IDX file (optionally gzipped) of unsigned bytes into an array.

    Raises InputError if the file is truncated, corrupt or not uint8 IDX.
    """
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise InputError(f"cannot read IDX file {path}: {e}; replace it with a good copy") from None
    # Header: two zero bytes, a type code (0x08 = unsigned byte), the number of
    # dimensions, then each dimension as a big-endian uint32.
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise InputError(
            f"{path} is not a uint8 IDX file (bad header); replace it with a good copy"
        )
    num_dims = raw[3]
    header_size = 4 + 4 * num_dims
    if len(raw) < header_size:
        raise InputError(f"{path} is truncated (incomplete header); replace it with a good copy")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(num_dims))
    expected = header_size + int(np.prod(dims))
    if len(raw) != expected:
        raise InputError(
            f"{path} holds {len(raw)} bytes but its header {dims} needs {expected}: "
            "truncated or corrupt; replace it with a good copy"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)


def read_idx_dir(folder: str) -> Dataset:
    """Reads the four MNIST-format IDX files from `folder` (plain or .gz)."""
    arrays = {}
    for (split, kind), stem in IDX_FILES.items():
        path = _find_idx_file(folder, stem)
        if path is None:
            raise InputError(
                f"{folder} has {IDX_FILES[('train', 'images')]} but no {stem}[.gz]; "
                "put all four MNIST IDX files there"
            )
        arrays[split, kind] = read_idx(path)
    for split in ("train", "test"):
        images, labels = arrays[split, "images"], arrays[split, "labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise InputError(
                f"{folder}: {split} images {images.shape} and labels {labels.shape} do not "
                "match; expected [N, height, width] and [N]"
            )
    height, width = arrays["train", "images"].shape[1:]
    return Dataset(
        train_images=arrays["train", "images"].reshape(-1, height * width),
        train_labels=arrays["train", "labels"].astype(np.int32),
        test_images=arrays["test", "images"].reshape(-1, height * width),
        test_labels=arrays["test", "labels"].astype(np.int32),
        image_shape=(height, width, 1),
        source=f"IDX files in {folder}",
    )


# --- TFDS ----------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_absl_warnings():
    """TFDS warns through absl that OpenCV is absent (it decodes with PIL); hide that."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# TFDS builders that key each example by its index in the IDX files (MNIST's
# `_generate_examples` yields `index, record`), so that the IDX order can be restored.
IDX_KEYED_TFDS = ("mnist", "fashion_mnist")


def _import_tfds(data_dir: str):
    """tensorflow_datasets, imported only to read a TFDS data dir (an extra: the commands
    run without it on the IDX files); its absence is an InputError saying what to do."""
    try:
        import tensorflow_datasets as tfds  # Deferred: costs ~0.3 s, and only this path needs it.
    except ModuleNotFoundError:
        raise InputError(
            f"reading the TFDS data dir {data_dir} needs tensorflow-datasets, which is not "
            "installed: pip install tensorflow-datasets array-record, or point --data_dir at a "
            "folder of the four MNIST IDX files (or leave it unset to download them)"
        ) from None
    return tfds


def tfds_positions_in_idx_order(split: str, num_examples: int) -> np.ndarray:
    """Where TFDS stores each example of an IDX-keyed split: [num_examples] int.

    `positions[i]` is the TFDS record that holds example i of the IDX files. When it
    prepares a dataset, TFDS writes a split's examples sorted by the md5 of their keys
    salted with the split name (`tensorflow_datasets.core.hashing`, which TFDS keeps
    fixed: changing it would reorder every dataset). Sorting the indices the same way
    gives the order back, from the indices alone.
    """
    from tensorflow_datasets.core import hashing

    hasher = hashing.Hasher(split)
    hashes = [hasher.hash_key(index) for index in range(num_examples)]
    stored = sorted(range(num_examples), key=hashes.__getitem__)  # record p holds stored[p]
    positions = np.empty(num_examples, np.int64)
    positions[stored] = np.arange(num_examples)
    return positions


def read_tfds(name: str, data_dir: str, num_train: int = 0) -> Dataset:
    """Reads `name`'s train and test splits through `tfds.data_source` (array_record).

    For mnist and fashion_mnist the examples come back in the order of the IDX files
    (`tfds_positions_in_idx_order`), so that a TFDS copy and the IDX files give the same
    arrays, and the same flags select and binarize the same images from either. Other
    datasets keep TFDS's order. Only the first `num_train` training examples are decoded
    when it is non-zero.
    """
    tfds = _import_tfds(data_dir)
    how_to_fix = (
        f"point --data_dir at a TFDS data dir holding {name} prepared as array_record, or "
        f"at a folder of the four IDX files (vae_jax downloads {' and '.join(DATASETS)} only)"
    )
    with _quiet_absl_warnings():
        try:
            sources = tfds.data_source(name, data_dir=data_dir, download=False)
        except tfds.core.registered.DatasetNotFoundError:
            raise InputError(
                f"--dataset={name} is not a TFDS dataset name; use e.g. mnist or fashion_mnist"
            ) from None
        except Exception:  # TFDS raises several types for "not prepared here".
            raise InputError(f"dataset {name} not found in {data_dir}; {how_to_fix}") from None
        if not all(split in sources for split in ("train", "test")):
            raise InputError(f"dataset {name} not found in {data_dir}; {how_to_fix}")
        splits = {}
        for split in ("train", "test"):
            source = sources[split]
            count = min(num_train, len(source)) if split == "train" and num_train else len(source)
            wanted = range(count)
            if name in IDX_KEYED_TFDS:
                wanted = tfds_positions_in_idx_order(split, len(source))[:count].tolist()
            try:
                records = source.__getitems__(wanted)
            except Exception as e:
                raise InputError(
                    f"cannot read {name}/{split} from {data_dir}: {e}; "
                    "re-prepare the dataset or use the IDX files"
                ) from None
            splits[split] = (
                np.stack([r["image"] for r in records]),
                np.asarray([r["label"] for r in records], dtype=np.int32),
            )
    image_shape = splits["train"][0].shape[1:]
    if len(image_shape) != 3 or splits["train"][0].dtype != np.uint8:
        raise InputError(
            f"dataset {name} has images of shape {image_shape} and dtype "
            f"{splits['train'][0].dtype}; expected uint8 [height, width, channels]"
        )
    num_pixels = int(np.prod(image_shape))
    return Dataset(
        train_images=splits["train"][0].reshape(-1, num_pixels),
        train_labels=splits["train"][1],
        test_images=splits["test"][0].reshape(-1, num_pixels),
        test_labels=splits["test"][1],
        image_shape=tuple(int(d) for d in image_shape),
        source=f"TFDS {name} in {data_dir}",
    )


# --- Pixels to model inputs ----------------------------------------------------------


def batches(
    images: np.ndarray, batch_size: int, key: jax.Array, *, drop_remainder: bool = True
) -> Iterator[jax.Array]:
    """One epoch of shuffled batches, for a training loop of your own over `train_step`.

    Args:
      images: [N, pixels], uint8 (as `load_dataset` gives them) or floats in [0, 1].
      batch_size: images per batch.
      key: the epoch's shuffle; use `jax.random.fold_in(key, epoch)` for a new order
        each epoch, the same for the same epoch.
      drop_remainder: skip the last N % batch_size images (one shape, one compilation).

    Yields:
      float32 [batch_size, pixels] in [0, 1] on the default device, each image once.

    Raises (at the call, before the first batch):
      ValueError: images that no function here takes (checked once, on the host: see
        `vae_jax.inputs.check_images`), a batch size below 1, or with `drop_remainder`
        fewer images than one batch, which would yield nothing.
    """
    images = check_batch(images)
    if not (isinstance(batch_size, int | np.integer) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if drop_remainder and len(images) < batch_size:
        raise ValueError(
            f"batch_size={batch_size} is more than the {len(images)} images, so dropping the "
            "remainder leaves no batch; lower batch_size, or pass drop_remainder=False"
        )
    order = np.asarray(jax.random.permutation(key, len(images)))
    stop = len(images) - len(images) % batch_size if drop_remainder else len(images)
    return (
        to_unit_interval(jnp.asarray(images[order[start : start + batch_size]]))
        for start in range(0, stop, batch_size)
    )


def binarize(key: jax.Array, images: jax.Array) -> jax.Array:
    """Draws binary pixels with P(1) = intensity: float32 [..., pixels] -> float32 {0, 1}.

    Dynamic binarization (Salakhutdinov & Murray 2008): a fresh draw each time the key
    changes, so each epoch sees new binary images.
    """
    return jax.random.bernoulli(key, images).astype(jnp.float32)


def eval_inputs(test_images: np.ndarray, binarization: str) -> np.ndarray:
    """The fixed float32 test inputs for a protocol: grayscale, or binarized once.

    The binary test set uses `TEST_BINARIZATION_SEED` (not the run's seed), so runs
    with different seeds are scored on the same images.
    """
    pixels = test_images.astype(np.float32) / 255.0
    if binarization == "none":
        return pixels
    rng = np.random.default_rng(TEST_BINARIZATION_SEED)
    return (rng.random(pixels.shape, dtype=np.float32) < pixels).astype(np.float32)
