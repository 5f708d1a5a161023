"""Where a run's records go besides metrics.jsonl: TensorBoard, or a writer of your own.

A writer is any object with three methods (`Writer`):

    write_scalars(step, scalars)   step: the epoch; scalars: {name: float}, every
                                   number of the epoch's metrics.jsonl record
    write_images(step, images)     images: {name: float32 [height, width, channels]
                                   in [0, 1]}, the sample and reconstruction grids
    close()

`train_and_evaluate(config, writers=[...])` calls them on process 0 after each epoch,
beside the TensorBoard writer that `--tensorboard` (on by default) adds. A writer for
W&B or MLflow is a few lines: `wandb.log(dict(scalars), step=step)` or
`mlflow.log_metrics(dict(scalars), step=step)` in `write_scalars` (docs/flags.md).
"""

from collections.abc import Mapping
from typing import Protocol

import numpy as np

TENSORBOARD_DIR = "tensorboard"  # in the workdir: `tensorboard --logdir runs` finds it


class Writer(Protocol):
    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None: ...

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None: ...

    def close(self) -> None: ...


class TensorBoardWriter:
    """Event files in `logdir`, written with tensorboardX, which needs no TensorFlow.

    `purge_step`: on resume, the first epoch trained again. TensorBoard hides whatever
    an earlier process logged at that step or later (epochs past the checkpoint it
    resumed from), so the curves continue without duplicate steps.
    """

    def __init__(self, logdir: str, purge_step: int | None = None):
        from tensorboardX import SummaryWriter  # the [all] extra

        self._writer = SummaryWriter(logdir, purge_step=purge_step)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        for name, value in scalars.items():
            self._writer.add_scalar(name, value, step)
        self._writer.flush()  # An epoch's points show at once in a live TensorBoard.

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        for name, image in images.items():
            self._writer.add_image(name, np.clip(image, 0.0, 1.0), step, dataformats="HWC")
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def scalars_of(record: Mapping) -> dict[str, float]:
    """The numbers of a metrics record, less its epoch (the step): {name: float}."""
    return {
        name: float(value)
        for name, value in record.items()
        if name != "epoch" and isinstance(value, int | float) and not isinstance(value, bool)
    }
