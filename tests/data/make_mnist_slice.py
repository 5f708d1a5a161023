"""Writes the small slice of real MNIST that the tests run on, from the full data.

    python tests/data/make_mnist_slice.py --full_data=../shared/data --out=tests/data/mnist_slice

The first `--num_train` training and `--num_test` test images of the IDX files become:
- `idx/`: the four IDX files, gzipped with a fixed header (byte-identical on every run);
- `tensorflow_datasets/mnist/3.0.1/`: a TFDS data dir holding the same examples, made
  without TensorFlow: the serialized records of the full TFDS dataset that hold those
  examples are copied, in TFDS's own (shuffled) order, into new array_record files, and
  `dataset_info.json` gets the new counts.
"""

import gzip
import json
import os
import shutil

import numpy as np
from absl import app, flags
from array_record.python import array_record_module

from vae_jax import data

_FULL_DATA = flags.DEFINE_string("full_data", "../shared/data", "Holds mnist_idx/ and tfds dirs.")
_OUT = flags.DEFINE_string("out", "tests/data/mnist_slice", "Where the slice is written.")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 2048, "First N training images.")
_NUM_TEST = flags.DEFINE_integer("num_test", 1024, "First N test images.")

TFDS_VERSION = "3.0.1"


def idx_bytes(array: np.ndarray) -> bytes:
    """An uint8 array as an IDX file: zeros, type 0x08, rank, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def write_idx_slice(full: data.Dataset, counts: dict[str, int], folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    height, width, _ = full.image_shape
    for (split, kind), stem in data.IDX_FILES.items():
        array = getattr(full, f"{split}_{kind}")[: counts[split]]
        if kind == "images":
            array = array.reshape(-1, height, width)
        with open(os.path.join(folder, stem + ".gz"), "wb") as f:
            # mtime=0 and no file name in the header: the same bytes on every run.
            f.write(gzip.compress(idx_bytes(array), compresslevel=9, mtime=0))


def example_key(image: np.ndarray, label: int) -> bytes:
    return image.tobytes() + bytes([int(label)])


def write_tfds_slice(full_idx: data.Dataset, counts, tfds_dir: str, out_dir: str) -> None:
    import tensorflow_datasets as tfds

    source_dir = os.path.join(tfds_dir, "mnist", TFDS_VERSION)
    target_dir = os.path.join(out_dir, "mnist", TFDS_VERSION)
    os.makedirs(target_dir, exist_ok=True)
    sources = tfds.data_source("mnist", data_dir=tfds_dir, download=False)
    with open(os.path.join(source_dir, "dataset_info.json")) as f:
        info = json.load(f)
    for split in ("train", "test"):
        images = getattr(full_idx, f"{split}_images")[: counts[split]]
        labels = getattr(full_idx, f"{split}_labels")[: counts[split]]
        wanted: dict[bytes, int] = {}
        for image, label in zip(images, labels, strict=True):
            key = example_key(image, label)
            wanted[key] = wanted.get(key, 0) + 1
        source = sources[split]
        chosen = []  # TFDS record indices, in TFDS order
        for index, record in enumerate(source.__getitems__(range(len(source)))):
            key = example_key(record["image"].reshape(-1), record["label"])
            if wanted.get(key, 0):
                wanted[key] -= 1
                chosen.append(index)
        assert len(chosen) == counts[split], f"{split}: found {len(chosen)} of {counts[split]}"
        name = f"mnist-{split}.array_record-00000-of-00001"
        reader = array_record_module.ArrayRecordReader(os.path.join(source_dir, name))
        records = reader.read(chosen)
        reader.close()
        writer = array_record_module.ArrayRecordWriter(
            os.path.join(target_dir, name), "group_size:1"
        )
        for record in records:
            writer.write(record)
        writer.close()
        for split_info in info["splits"]:
            if split_info["name"] == split:
                split_info["shardLengths"] = [str(len(records))]
                split_info["numBytes"] = str(sum(len(r) for r in records))
    with open(os.path.join(target_dir, "dataset_info.json"), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    shutil.copyfile(
        os.path.join(source_dir, "features.json"), os.path.join(target_dir, "features.json")
    )


def main(argv):
    del argv
    counts = {"train": _NUM_TRAIN.value, "test": _NUM_TEST.value}
    full = data.read_idx_dir(os.path.join(_FULL_DATA.value, "mnist_idx"))
    write_idx_slice(full, counts, os.path.join(_OUT.value, "idx"))
    write_tfds_slice(
        full,
        counts,
        os.path.join(_FULL_DATA.value, "tensorflow_datasets"),
        os.path.join(_OUT.value, "tensorflow_datasets"),
    )
    print(f"wrote {counts['train']} train and {counts['test']} test images to {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
