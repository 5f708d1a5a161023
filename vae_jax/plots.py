"""Pictures as PNG files: image grids, reconstructions, loss curves.

Grids of images are written as PNG directly (`write_png`), so they need no image library
and the core install draws them; plots with axes use matplotlib's object API with the Agg
canvas (no pyplot), so nothing global changes and no display is needed.
"""

import struct
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vae_jax.models import decode_probabilities, posterior

UPSCALE = 3  # screen pixels per image pixel in the grids
PAD = 2  # image pixels between grid cells


# matplotlib is imported where a picture is drawn, not with this module: a run that is
# refused, or found finished, answers without paying for it.
def _figure(size: tuple[float, float]):
    """A matplotlib Figure of `size` inches at 100 dpi, on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _integer_epochs(axes) -> None:
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def tile_images(images: np.ndarray, image_shape: Sequence[int], num_columns: int) -> np.ndarray:
    """[n, pixels] in [0, 1] -> one [rows * (h + PAD) + PAD, cols * (w + PAD) + PAD, c] mosaic."""
    _check_count(num_columns=num_columns, **{"len(images)": len(images)})
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


def _check_count(**counts) -> None:
    """ValueError naming the first count that is not a positive int."""
    for name, value in counts.items():
        if not (isinstance(value, int | np.integer) and value >= 1):
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def save_mosaic(mosaic: np.ndarray, path: str) -> None:
    """Writes a `tile_images` mosaic in [0, 1] as a PNG, upscaled `UPSCALE` times."""
    mosaic = np.clip(mosaic, 0.0, 1.0).repeat(UPSCALE, axis=0).repeat(UPSCALE, axis=1)
    write_png(path, np.round(mosaic * 255.0).astype(np.uint8))


def write_png(path: str, pixels: np.ndarray) -> None:
    """Writes uint8 pixels [height, width, channels] (1: gray, 3: RGB, 4: RGBA) as a PNG.

    An image grid needs no image library: the format's three chunks, with the standard
    library's zlib, are all of it. So the core install, which has no matplotlib, draws
    digits too (`save_image_grid`); the plots with axes need matplotlib.
    """
    height, width, channels = pixels.shape
    color_type = {1: 0, 3: 2, 4: 6}[channels]
    rows = np.ascontiguousarray(pixels, np.uint8).reshape(height, width * channels)
    # Each row is preceded by its filter type, 0: the bytes as they are.
    scanlines = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(scanlines, 9)))
        f.write(chunk(b"IEND", b""))


def save_image_grid(
    images: np.ndarray, image_shape: Sequence[int], path: str, num_columns: int = 8
) -> None:
    """Writes images [n, pixels] in [0, 1] as a grid PNG, `num_columns` per row."""
    save_mosaic(tile_images(images, image_shape, num_columns), path)


def save_reconstructions(
    originals: np.ndarray, reconstructions: np.ndarray, image_shape: Sequence[int], path: str
) -> None:
    """Writes originals [n, pixels] in one row and their reconstructions in the row below."""
    pairs = np.concatenate([np.asarray(originals), np.asarray(reconstructions)])
    save_mosaic(tile_images(pairs, image_shape, num_columns=len(originals)), path)


def save_loss_curves(history: Sequence[dict[str, Any]], path: str) -> None:
    """Plots train and test loss (nats/image) against epoch from metrics records."""
    figure = _figure((6, 4))
    axes = figure.add_subplot()
    epochs = [record["epoch"] for record in history]
    for key, label in (("train_loss", "train"), ("test_loss", "test")):
        axes.plot(epochs, [record[key] for record in history], marker="o", label=label)
    axes.set_xlabel("epoch")
    _integer_epochs(axes)
    axes.set_ylabel("recon + beta * KL (nats / image)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)


# --- Pictures of the latent space (each takes a model and its params) ------------------


def interpolate_latents(z0: np.ndarray, z1: np.ndarray, num_steps: int, spherical: bool = False):
    """Points from z0 to z1, ends included: [latent] x 2 -> [num_steps, latent].

    Linear, or spherical (slerp), which keeps the norm typical of N(0, I) samples
    instead of cutting through the low-density centre. `num_steps` >= 2.
    """
    if not (isinstance(num_steps, int | np.integer) and num_steps >= 2):
        raise ValueError(f"num_steps must be an int of at least 2 (the ends), got {num_steps!r}")
    z0, z1 = np.asarray(z0, np.float64), np.asarray(z1, np.float64)
    t = np.linspace(0.0, 1.0, num_steps)[:, None]
    if not spherical:
        return (1 - t) * z0 + t * z1
    cos_angle = np.dot(z0, z1) / (np.linalg.norm(z0) * np.linalg.norm(z1))
    angle = np.arccos(np.clip(cos_angle, -1.0, 1.0))
    if angle < 1e-6:  # Parallel: slerp tends to lerp.
        return (1 - t) * z0 + t * z1
    return (np.sin((1 - t) * angle) * z0 + np.sin(t * angle) * z1) / np.sin(angle)


def _decode_probabilities(model, params, z) -> np.ndarray:
    return np.asarray(decode_probabilities(model, params, np.asarray(z, np.float32)))


def _posterior_means(model, params, images) -> np.ndarray:
    return np.asarray(posterior(model, params, np.asarray(images, np.float32))[0])


def save_interpolations(
    model, params, starts, ends, image_shape, path, num_steps: int = 10, spherical: bool = False
) -> None:
    """One row per pair of images: decoded points between their posterior means."""
    z_starts, z_ends = (
        _posterior_means(model, params, starts),
        _posterior_means(model, params, ends),
    )
    rows = [
        interpolate_latents(a, b, num_steps, spherical)
        for a, b in zip(z_starts, z_ends, strict=True)
    ]
    decoded = _decode_probabilities(model, params, np.concatenate(rows))
    save_mosaic(tile_images(decoded, image_shape, num_steps), path)


def save_traversals(
    model, params, image, dims, image_shape, path, span: float = 3.0, num_steps: int = 11
) -> None:
    """One row per latent dimension in `dims`: that coordinate of the image's posterior
    mean swept over [-span, span], the others held."""
    _check_count(num_steps=num_steps, dims=len(dims))
    center = _posterior_means(model, params, np.asarray(image)[None])[0]
    values = np.linspace(-span, span, num_steps)
    z = np.repeat(center[None], len(dims) * num_steps, axis=0)
    for row, dim in enumerate(dims):
        z[row * num_steps : (row + 1) * num_steps, dim] = values
    save_mosaic(tile_images(_decode_probabilities(model, params, z), image_shape, num_steps), path)


def save_manifold(model, params, image_shape, path, grid_size: int = 20) -> None:
    """For a 2-d latent: decoded grid over the N(0, I) quantiles 0.05 .. 0.95 of each axis."""
    from statistics import NormalDist

    _check_count(grid_size=grid_size)
    if tuple(model.latent_sizes) != (2,):
        raise ValueError(f"the manifold picture needs one 2-d latent, got {model.latent_sizes}")
    quantiles = [NormalDist().inv_cdf(q) for q in np.linspace(0.05, 0.95, grid_size)]
    z = np.array([[x, y] for y in reversed(quantiles) for x in quantiles], np.float32)
    save_mosaic(tile_images(_decode_probabilities(model, params, z), image_shape, grid_size), path)


def latent_projection(means: np.ndarray) -> tuple[np.ndarray, tuple[str, str]]:
    """[n, latent] -> [n, 2]: the latent itself if 2-d, else its first two principal components."""
    means = np.asarray(means, np.float64)
    if means.shape[1] <= 2:
        points, names = means, ("z_1", "z_2")
    else:
        centered = means - means.mean(0)
        _, _, components = np.linalg.svd(centered, full_matrices=False)
        points, names = centered @ components[:2].T, ("PC 1", "PC 2")
    # A 1-d latent, or fewer points than two components: the missing axis is 0.
    return np.pad(points, ((0, 0), (0, 2 - points.shape[1]))), names


def save_latent_scatter(model, params, images, labels, path) -> None:
    """Posterior means of `images`, coloured by label (PCA-projected above 2 dimensions)."""
    points, (x_label, y_label) = latent_projection(_posterior_means(model, params, images))
    figure = _figure((6, 5))
    axes = figure.add_subplot()
    scatter = axes.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=3, alpha=0.7)
    figure.colorbar(scatter, ax=axes, label="label")
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.set_title("posterior means of test images")
    figure.tight_layout()
    figure.savefig(path)


def save_training_curves(history: Sequence[dict[str, Any]], path: str) -> None:
    """Train and test reconstruction, KL and total loss per epoch, in three panels."""
    figure = _figure((12, 3.6))
    epochs = [record["epoch"] for record in history]
    for i, (term, title) in enumerate(
        (("recon", "reconstruction -log p(x|z)"), ("kl", "KL(q(z|x) || p(z))"), ("loss", "total"))
    ):
        axes = figure.add_subplot(1, 3, i + 1)
        for split in ("train", "test"):
            key = f"{split}_{term}"
            if key in history[0]:
                axes.plot(epochs, [record[key] for record in history], marker=".", label=split)
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.set_ylabel("nats / image")
        _integer_epochs(axes)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path)


def save_elbo_curves(histories: Mapping[str, Sequence[dict[str, Any]]], path: str) -> None:
    """Test (and, with --num_valid, validation) negative ELBO per epoch, a panel per run.

    `histories` maps a run's name to its metrics records. The epoch of the best
    validation ELBO is marked; runs of over 100 epochs get a log-scale epoch axis, so
    that the early drop and the late tail both show.
    """
    figure = _figure((5 * len(histories), 3.8))
    for i, (name, history) in enumerate(histories.items()):
        axes = figure.add_subplot(1, len(histories), i + 1)
        epochs = np.array([record["epoch"] for record in history])
        # Missing or null (non-finite) values are NaN: matplotlib leaves them out.
        curves = {
            label: np.array([record.get(key) for record in history], dtype=float)
            for key, label in (("test_elbo", "test"), ("valid_elbo", "validation"))
        }
        for label, values in curves.items():
            if not np.isnan(values).all():
                axes.plot(epochs, values, label=label)
        valid = curves["validation"]
        if not np.isnan(valid).all():
            best = int(epochs[np.nanargmin(valid)])
            axes.axvline(best, color="gray", linestyle=":", label=f"best valid: epoch {best}")
        if epochs[-1] > 100:
            axes.set_xscale("log")
        else:
            _integer_epochs(axes)
        axes.set_title(name)
        axes.set_xlabel("epoch")
        axes.set_ylabel("negative ELBO (nats / image)")
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path)


def save_rate_distortion(
    rates: Sequence[float], distortions: Sequence[float], labels: Sequence[str], path: str
) -> None:
    """The rate-distortion curve: KL (rate) against reconstruction (distortion), in nats."""
    figure = _figure((5.5, 4.5))
    axes = figure.add_subplot()
    order = np.argsort(rates)
    axes.plot(np.asarray(rates)[order], np.asarray(distortions)[order], marker="o")
    for rate, distortion, label in zip(rates, distortions, labels, strict=True):
        axes.annotate(label, (rate, distortion), textcoords="offset points", xytext=(5, 5))
    axes.set_xlabel("rate: KL(q(z|x) || p(z)), nats / image")
    axes.set_ylabel("distortion: -log p(x|z), nats / image")
    axes.set_title("rate-distortion on the test set")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)


def save_grids_side_by_side(
    image_sets: Sequence[np.ndarray],
    titles: Sequence[str],
    image_shape: Sequence[int],
    path: str,
    num_columns: int = 4,
) -> None:
    """One titled grid per image set [n, pixels], left to right (e.g. samples per beta)."""
    figure = _figure((2.2 * len(image_sets), 2.6))
    for i, (images, title) in enumerate(zip(image_sets, titles, strict=True)):
        axes = figure.add_subplot(1, len(image_sets), i + 1)
        mosaic = np.clip(tile_images(images, image_shape, num_columns), 0.0, 1.0)
        axes.imshow(mosaic[..., 0] if mosaic.shape[-1] == 1 else mosaic, cmap="gray")
        axes.set_title(title)
        axes.set_axis_off()
    figure.tight_layout()
    figure.savefig(path)
