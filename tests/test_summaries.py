"""TensorBoard event files and writers of one's own: every epoch's record, once."""

import os
import shutil

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from vae_jax import summaries, workdir
from vae_jax.config import Config
from vae_jax.run import train_and_evaluate

TINY = dict(num_train=256, batch_size=128, epochs=2, latent=4, hidden_sizes=(32,))


def events(folder) -> event_accumulator.EventAccumulator:
    """TensorBoard's own reader over a run's event files."""
    accumulator = event_accumulator.EventAccumulator(
        os.path.join(folder, summaries.TENSORBOARD_DIR), size_guidance={"images": 0}
    )
    accumulator.Reload()
    return accumulator


def metrics(folder) -> list[dict]:
    return workdir.read_metrics(os.path.join(folder, workdir.METRICS_FILE))


class ListWriter:
    """A writer of one's own, as one for W&B or MLflow would be."""

    def __init__(self):
        self.scalars, self.images = [], []

    def write_scalars(self, step, scalars):
        self.scalars.append((step, dict(scalars)))

    def write_images(self, step, images):
        self.images.append((step, {name: image.shape for name, image in images.items()}))

    def close(self):
        raise AssertionError("a writer passed in is the caller's to close")


@pytest.mark.slow
def test_every_epoch_s_scalars_and_grids_reach_tensorboard_and_other_writers(idx_dir, tmp_path):
    config = Config(**TINY, data_dir=str(idx_dir), workdir=str(tmp_path / "w"))
    own = ListWriter()
    train_and_evaluate(config.validate(), writers=[own])
    records = metrics(config.workdir)
    accumulator = events(config.workdir)
    scalar_keys = set(summaries.scalars_of(records[0])) | set(summaries.scalars_of(records[1]))
    assert scalar_keys <= set(accumulator.Tags()["scalars"])
    for key in scalar_keys:
        points = [(e.step, e.value) for e in accumulator.Scalars(key)]
        expected = [(r["epoch"], r[key]) for r in records if key in r]
        assert [step for step, _ in points] == [step for step, _ in expected], key
        np.testing.assert_allclose([v for _, v in points], [v for _, v in expected], rtol=1e-6)
    # The grids: at the last epoch (every 5 epochs by default), as the PNGs show them.
    for name in ("samples", "reconstructions"):
        assert [e.step for e in accumulator.Images(name)] == [2]
    assert [(step, scalars) for step, scalars in own.scalars] == [
        (r["epoch"], summaries.scalars_of(r)) for r in records
    ]
    assert own.images == [(2, {"samples": (242, 242, 1), "reconstructions": (62, 482, 1)})]


@pytest.mark.slow
def test_resume_continues_the_curves_without_duplicate_steps(idx_dir, tmp_path):
    settings = {**TINY, "epochs": 3}
    config = Config(**settings, data_dir=str(idx_dir), workdir=str(tmp_path / "w"))
    train_and_evaluate(config)
    # As if the run had died after logging epoch 3 but before its checkpoint.
    shutil.rmtree(tmp_path / "w" / "checkpoints" / "3")
    train_and_evaluate(config)
    accumulator = events(config.workdir)
    for key in ("test_elbo", "train_loss"):
        assert [e.step for e in accumulator.Scalars(key)] == [1, 2, 3], key
    np.testing.assert_allclose(
        [e.value for e in accumulator.Scalars("test_elbo")],
        [r["test_elbo"] for r in metrics(config.workdir)],
        rtol=1e-6,
    )


def test_notensorboard_writes_no_event_files(idx_dir, tmp_path):
    settings = {**TINY, "epochs": 1, "tensorboard": False}
    config = Config(**settings, data_dir=str(idx_dir), workdir=str(tmp_path / "w"))
    train_and_evaluate(config)
    assert not os.path.exists(tmp_path / "w" / summaries.TENSORBOARD_DIR)
    assert len(metrics(config.workdir)) == 1
