"""Both readers on the shared MNIST, binarization, and clear errors for bad data."""

import gzip
import shutil

import jax
import numpy as np
import pytest

from vae_jax import data
from vae_jax.errors import InputError


def test_idx_reader_known_values(mnist_idx):
    assert mnist_idx.train_images.shape == (60000, 784)
    assert mnist_idx.test_images.shape == (10000, 784)
    assert mnist_idx.train_images.dtype == np.uint8
    assert mnist_idx.image_shape == (28, 28, 1)
    # The data README gives the training pixels' mean; labels are the ten digits.
    assert mnist_idx.train_images.mean() == pytest.approx(33.3184, abs=5e-5)
    assert set(np.unique(mnist_idx.train_labels)) == set(range(10))
    assert mnist_idx.train_images.min() == 0 and mnist_idx.train_images.max() == 255


def _sorted_examples(images, labels):
    """The (image, label) pairs of a split as sorted rows, to compare splits up to order."""
    rows = np.concatenate([images, labels[:, None].astype(np.uint8)], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


@pytest.mark.slow
def test_tfds_and_idx_readers_give_the_same_examples(mnist_tfds, mnist_idx):
    # TFDS shuffled the records when it prepared the dataset: same examples, other order.
    assert mnist_tfds.image_shape == mnist_idx.image_shape
    for split in ("train", "test"):
        tfds_images, idx_images = (getattr(d, f"{split}_images") for d in (mnist_tfds, mnist_idx))
        tfds_labels, idx_labels = (getattr(d, f"{split}_labels") for d in (mnist_tfds, mnist_idx))
        assert tfds_images.shape == idx_images.shape and tfds_images.dtype == idx_images.dtype
        assert tfds_labels.dtype == idx_labels.dtype == np.int32
        np.testing.assert_array_equal(
            _sorted_examples(tfds_images, tfds_labels),
            _sorted_examples(idx_images, idx_labels),
            err_msg=split,
        )


def test_num_train_keeps_the_first_images(tfds_dir, idx_dir, mnist_idx, mnist_tfds):
    for data_dir, full in ((tfds_dir, mnist_tfds), (idx_dir, mnist_idx)):
        subset = data.load_dataset("mnist", str(data_dir), num_train=300)
        np.testing.assert_array_equal(subset.train_images, full.train_images[:300])
        np.testing.assert_array_equal(subset.train_labels, full.train_labels[:300])
        np.testing.assert_array_equal(subset.test_images, full.test_images)
    with pytest.raises(InputError, match="--num_train=70000 exceeds the 60000"):
        data.load_dataset("mnist", str(idx_dir), num_train=70000)


def test_missing_dataset_names_the_places_looked_in(tmp_path, monkeypatch):
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    with pytest.raises(InputError) as error:
        data.load_dataset("mnist", str(tmp_path))
    message = str(error.value)
    assert "mnist" in message and str(tmp_path) in message and "--data_dir" in message
    assert "\n" not in message
    # TFDS's default data dir, through the standard environment variable.
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(InputError, match="TFDS's default data dir"):
        data.load_dataset("fashion_mnist", None)


def test_tfds_default_data_dir_honours_the_environment(tfds_dir, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tfds_dir))
    assert len(data.load_dataset("mnist", None, num_train=10).train_images) == 10


def test_unknown_dataset_name(tfds_dir):
    with pytest.raises(InputError, match="--dataset=mnistt is not a TFDS dataset name"):
        data.load_dataset("mnistt", str(tfds_dir))


def _copy_idx(idx_dir, tmp_path):
    for path in idx_dir.glob("*.gz"):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path


def test_truncated_idx_file(idx_dir, tmp_path):
    folder = _copy_idx(idx_dir, tmp_path)
    raw = gzip.decompress((folder / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(raw[:-10]))
    with pytest.raises(InputError, match="t10k-labels-idx1-ubyte.gz holds 9998 bytes"):
        data.load_dataset("mnist", str(folder))


def test_corrupt_and_foreign_files(idx_dir, tmp_path):
    folder = _copy_idx(idx_dir, tmp_path)
    target = folder / "t10k-images-idx3-ubyte.gz"
    target.write_bytes(target.read_bytes()[:5000])  # a cut gzip stream
    with pytest.raises(InputError, match="cannot read IDX file"):
        data.load_dataset("mnist", str(folder))
    target.write_bytes(gzip.compress(b"%PDF-1.4 not an idx file"))
    with pytest.raises(InputError, match="not a uint8 IDX file"):
        data.load_dataset("mnist", str(folder))
    target.unlink()
    with pytest.raises(InputError, match="no t10k-images-idx3-ubyte"):
        data.load_dataset("mnist", str(folder))


def test_uncompressed_idx_files_read_the_same(idx_dir, tmp_path, mnist_idx):
    for path in idx_dir.glob("*.gz"):
        (tmp_path / path.name[:-3]).write_bytes(gzip.decompress(path.read_bytes()))
    plain = data.read_idx_dir(str(tmp_path))
    np.testing.assert_array_equal(plain.test_images, mnist_idx.test_images)


def test_binarize_draws_bernoulli_pixels():
    intensities = jax.numpy.full((2000, 50), 0.3)
    draws = data.binarize(jax.random.key(0), intensities)
    assert set(np.unique(draws)) == {0.0, 1.0}
    assert float(draws.mean()) == pytest.approx(0.3, abs=0.005)
    np.testing.assert_array_equal(draws, data.binarize(jax.random.key(0), intensities))
    assert not np.array_equal(draws, data.binarize(jax.random.key(1), intensities))


def test_eval_inputs(mnist_idx):
    test_images = mnist_idx.test_images[:500]
    grayscale = data.eval_inputs(test_images, "none")
    np.testing.assert_allclose(grayscale * 255.0, test_images, atol=1e-4)
    binary = data.eval_inputs(test_images, "dynamic")
    np.testing.assert_array_equal(binary, data.eval_inputs(test_images, "dynamic"))  # fixed seed
    assert set(np.unique(binary)) == {0.0, 1.0}
    assert abs(binary.mean() - grayscale.mean()) < 0.01
    np.testing.assert_array_equal(binary[test_images == 0], 0.0)
    np.testing.assert_array_equal(binary[test_images == 255], 1.0)
