"""Both readers, which copy is read, binarization, and clear errors for bad data."""

import gzip
import shutil

import jax
import numpy as np
import pytest
from conftest import SLICE_NUM_TEST, SLICE_NUM_TRAIN, needs_tfds

from vae_jax import data
from vae_jax.errors import InputError


def test_slice_holds_the_first_images_of_mnist(mnist_idx):
    assert mnist_idx.train_images.shape == (SLICE_NUM_TRAIN, 784)
    assert mnist_idx.test_images.shape == (SLICE_NUM_TEST, 784)
    assert mnist_idx.train_images.dtype == np.uint8 and mnist_idx.image_shape == (28, 28, 1)
    # MNIST's first labels, as every tutorial prints them.
    np.testing.assert_array_equal(mnist_idx.train_labels[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    np.testing.assert_array_equal(mnist_idx.test_labels[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
    assert set(np.unique(mnist_idx.train_labels)) == set(range(10))
    assert mnist_idx.train_images.min() == 0 and mnist_idx.train_images.max() == 255


def test_idx_reader_known_values(full_mnist_idx):
    assert full_mnist_idx.train_images.shape == (60000, 784)
    assert full_mnist_idx.test_images.shape == (10000, 784)
    # The data README gives the training pixels' mean.
    assert full_mnist_idx.train_images.mean() == pytest.approx(33.3184, abs=5e-5)


def test_slice_is_the_head_of_full_mnist(mnist_idx, full_mnist_idx):
    # What tests/data/make_mnist_slice.py wrote is still what it says it is.
    for split, count in (("train", SLICE_NUM_TRAIN), ("test", SLICE_NUM_TEST)):
        for kind in ("images", "labels"):
            name = f"{split}_{kind}"
            full = getattr(full_mnist_idx, name)[:count]
            np.testing.assert_array_equal(getattr(mnist_idx, name), full, err_msg=name)


def assert_same_arrays(tfds_dataset, idx_dataset):
    # The IDX order restored from TFDS's own: the same examples at the same places.
    assert tfds_dataset.image_shape == idx_dataset.image_shape
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        tfds_values, idx_values = (getattr(d, name) for d in (tfds_dataset, idx_dataset))
        assert tfds_values.dtype == idx_values.dtype
        np.testing.assert_array_equal(tfds_values, idx_values, err_msg=name)


def test_tfds_and_idx_readers_give_the_same_arrays(mnist_tfds, mnist_idx):
    assert_same_arrays(mnist_tfds, mnist_idx)


@pytest.mark.slow
def test_tfds_and_idx_readers_give_the_same_arrays_on_all_of_mnist(full_data, full_mnist_idx):
    needs_tfds()
    full_tfds = data.load_dataset("mnist", str(full_data / "tensorflow_datasets"))
    assert len(full_tfds.train_images) == 60000
    assert_same_arrays(full_tfds, full_mnist_idx)
    # So the same flags pick the same images: --num_train, the held-out --num_valid and
    # the fixed test binarization.
    subset = data.load_dataset("mnist", str(full_data / "tensorflow_datasets"), num_train=500)
    np.testing.assert_array_equal(subset.train_images, full_mnist_idx.train_images[:500])
    _, valid = data.split_validation(full_tfds, 10_000)
    np.testing.assert_array_equal(valid, full_mnist_idx.train_images[-10_000:])
    np.testing.assert_array_equal(
        data.eval_inputs(full_tfds.test_images, "dynamic"),
        data.eval_inputs(full_mnist_idx.test_images, "dynamic"),
    )


def test_tfds_positions_follow_tfds_s_own_shuffle():
    needs_tfds()
    from tensorflow_datasets.core import hashing

    positions = data.tfds_positions_in_idx_order("test", 50)
    assert sorted(positions) == list(range(50))
    # Record p holds the example whose salted md5 is the p-th smallest.
    hashes = [hashing.Hasher("test").hash_key(i) for i in range(50)]
    assert [hashes[i] for i in np.argsort(positions)] == sorted(hashes)


def test_num_train_keeps_the_first_images(tfds_dir, idx_dir, mnist_idx, mnist_tfds):
    for data_dir, full in ((tfds_dir, mnist_tfds), (idx_dir, mnist_idx)):
        subset = data.load_dataset("mnist", str(data_dir), num_train=300)
        np.testing.assert_array_equal(subset.train_images, full.train_images[:300])
        np.testing.assert_array_equal(subset.train_labels, full.train_labels[:300])
        np.testing.assert_array_equal(subset.test_images, full.test_images)
    with pytest.raises(InputError, match=f"--num_train=70000 exceeds the {SLICE_NUM_TRAIN}"):
        data.load_dataset("mnist", str(idx_dir), num_train=70000)


# --- Which copy is read: find_data ------------------------------------------------------


def test_a_data_dir_holding_data_is_read_as_it_is(tfds_dir, idx_dir, tmp_path):
    assert data.find_data("mnist", str(tfds_dir)) == ("tfds", str(tfds_dir))
    assert data.find_data("mnist", str(idx_dir)) == ("idx", str(idx_dir))
    # Plain (uncompressed) IDX files are a user's copy too.
    for path in idx_dir.glob("*.gz"):
        (tmp_path / path.name[:-3]).write_bytes(gzip.decompress(path.read_bytes()))
    assert data.find_data("mnist", str(tmp_path), allow_download=False) == ("idx", str(tmp_path))


def test_tfds_default_data_dir_comes_before_the_cache(tfds_dir, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tfds_dir))
    assert data.find_data("mnist") == ("tfds", str(tfds_dir))
    assert len(data.load_dataset("mnist", None, num_train=10).train_images) == 10


def test_with_no_copy_mnist_goes_to_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for name in ("mnist", "fashion_mnist"):
        with pytest.raises(InputError) as error:
            data.find_data(name, allow_download=False)
        message = str(error.value)
        assert str(tmp_path / "xdg" / "vae_jax" / name) in message
        assert "t10k-labels-idx1-ubyte.gz" in message and "--nodownload" in message
        assert "\n" not in message
    assert not (tmp_path / "xdg").exists()  # --nodownload creates nothing


def test_empty_or_new_data_dir_is_downloaded_into(tmp_path, idx_dir):
    (tmp_path / "empty").mkdir()
    (tmp_path / "cut_short").mkdir()
    shutil.copy(idx_dir / "train-images-idx3-ubyte.gz", tmp_path / "cut_short")
    for folder in ("empty", "new"):
        # The download is asked for (and refused: tests have no network).
        with pytest.raises(InputError, match="cannot download mnist: http://127.0.0.1"):
            data.find_data("mnist", str(tmp_path / folder))
    # A download cut short is completed, after verifying what it holds (a slice file,
    # not the published one, here): nothing is deleted.
    with pytest.raises(InputError, match="train-images-idx3-ubyte.gz is not the published"):
        data.find_data("mnist", str(tmp_path / "cut_short"))
    assert (tmp_path / "cut_short" / "train-images-idx3-ubyte.gz").is_file()


def test_a_data_dir_of_other_files_is_not_downloaded_into(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError) as error:
        data.load_dataset("mnist", str(tmp_path))
    message = str(error.value)
    assert f"dataset mnist not found in {tmp_path}" in message and "--data_dir" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_datasets_we_do_not_download_are_tfds_s_to_find(tmp_path, tfds_dir):
    with pytest.raises(InputError, match="dataset kmnist not found in .*downloads mnist and"):
        data.load_dataset("kmnist", None)
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
    with pytest.raises(InputError, match=f"t10k-labels-idx1-ubyte.gz holds {SLICE_NUM_TEST - 2}"):
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
    # Three of the four .gz files look like a download cut short: the download verifies
    # them first, and these (a slice, not the published files) fail.
    with pytest.raises(InputError, match="train-images-idx3-ubyte.gz is not the published mnist"):
        data.load_dataset("mnist", str(folder), allow_download=False)
    (folder / "README.txt").write_text("my own IDX files")
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


def test_batches_shuffle_each_image_once_per_epoch_key():
    images = np.arange(10 * 3, dtype=np.uint8).reshape(10, 3)  # row i holds 3i .. 3i + 2

    def epoch(key, **options):
        return [np.asarray(b) for b in data.batches(images, 4, key, **options)]

    first = epoch(jax.random.key(0))
    assert [b.shape for b in first] == [(4, 3), (4, 3)]  # the last 2 images dropped
    assert all(b.dtype == np.float32 and b.min() >= 0 and b.max() <= 1 for b in first)
    rows = np.rint(np.concatenate(first) * 255).astype(int)[:, 0] // 3
    assert len(set(rows)) == 8 and sorted(rows) != list(rows)  # distinct, shuffled
    whole = np.concatenate(epoch(jax.random.key(0), drop_remainder=False))
    np.testing.assert_array_equal(np.sort(np.rint(whole * 255), axis=0), images)
    np.testing.assert_array_equal(np.concatenate(epoch(jax.random.key(0))), np.concatenate(first))
    other = np.concatenate(epoch(jax.random.fold_in(jax.random.key(0), 1)))
    assert not np.array_equal(other, np.concatenate(first))


def test_batches_refuse_fewer_images_than_one_dropped_batch():
    images = np.zeros((100, 3), np.uint8)
    with pytest.raises(ValueError, match="batch_size=256 is more than the 100 images"):
        data.batches(images, 256, jax.random.key(0))  # at the call, not at the first batch
    kept = list(data.batches(images, 256, jax.random.key(0), drop_remainder=False))
    assert [b.shape for b in kept] == [(100, 3)]


def test_the_dataset_named_must_be_the_one_its_idx_files_are(idx_dir, monkeypatch):
    from test_download import slice_spec

    with pytest.raises(InputError, match="--dataset=nosuchset does not come as IDX files"):
        data.load_dataset("nosuchset", str(idx_dir))
    # Unidentified files (a slice, one's own) are read as the known dataset named ...
    assert len(data.load_dataset("fashion_mnist", str(idx_dir)).test_images) == SLICE_NUM_TEST
    # ... and files identified as one dataset's are not read as another's.
    monkeypatch.setitem(data.DATASETS, "mnist", slice_spec())
    assert data.load_dataset("mnist", str(idx_dir)).source == f"IDX files in {idx_dir}"
    with pytest.raises(InputError, match="holds the mnist IDX files, not fashion_mnist's"):
        data.load_dataset("fashion_mnist", str(idx_dir))


def test_all_of_mnist_is_not_read_as_fashion_mnist(full_data):
    # Its training images were recompressed; its test images are the published .gz.
    with pytest.raises(InputError, match="pass --dataset=mnist"):
        data.load_dataset("fashion_mnist", str(full_data / "mnist_idx"))
