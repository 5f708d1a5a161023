"""Pictures as PNG files: image grids, reconstructions, loss curves.

Uses matplotlib's object API with the Agg canvas (no pyplot), so nothing global changes
and no display is needed.
"""

from collections.abc import Sequence
from typing import Any

import matplotlib.image
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

UPSCALE = 3  # screen pixels per image pixel in the grids
PAD = 2  # image pixels between grid cells


def tile_images(images: np.ndarray, image_shape: Sequence[int], num_columns: int) -> np.ndarray:
    """[n, pixels] in [0, 1] -> one [rows * (h + PAD) + PAD, cols * (w + PAD) + PAD, c] mosaic."""
    height, width, channels = image_shape
    images = np.asarray(images, np.float32).reshape(-1, height, width, channels)
    num_rows = -(-len(images) // num_columns)
    mosaic = np.ones(
        (num_rows * (height + PAD) + PAD, num_columns * (width + PAD) + PAD, channels),
        np.float32,
    )
    for i, image in enumerate(images):
        top = PAD + (i // num_columns) * (height + PAD)
        left = PAD + (i % num_columns) * (width + PAD)
        mosaic[top : top + height, left : left + width] = image
    return mosaic


def _save_mosaic(mosaic: np.ndarray, path: str) -> None:
    mosaic = np.clip(mosaic, 0.0, 1.0).repeat(UPSCALE, axis=0).repeat(UPSCALE, axis=1)
    if mosaic.shape[-1] == 1:
        matplotlib.image.imsave(path, mosaic[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
    else:
        matplotlib.image.imsave(path, mosaic)


def save_image_grid(
    images: np.ndarray, image_shape: Sequence[int], path: str, num_columns: int = 8
) -> None:
    """Writes images [n, pixels] in [0, 1] as a grid PNG, `num_columns` per row."""
    _save_mosaic(tile_images(images, image_shape, num_columns), path)


def save_reconstructions(
    originals: np.ndarray, reconstructions: np.ndarray, image_shape: Sequence[int], path: str
) -> None:
    """Writes originals [n, pixels] in one row and their reconstructions in the row below."""
    pairs = np.concatenate([np.asarray(originals), np.asarray(reconstructions)])
    _save_mosaic(tile_images(pairs, image_shape, num_columns=len(originals)), path)


def save_loss_curves(history: Sequence[dict[str, Any]], path: str) -> None:
    """Plots train and test loss (nats/image) against epoch from metrics records."""
    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    epochs = [record["epoch"] for record in history]
    for key, label in (("train_loss", "train"), ("test_loss", "test")):
        axes.plot(epochs, [record[key] for record in history], marker="o", label=label)
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("recon + beta * KL (nats / image)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
