"""Every picture function writes a PNG of the expected size; latent interpolation is right."""

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from vae_jax import plots
from vae_jax.models import VAE

SHAPE = (28, 28, 1)


def cell(n):
    """Pixels of a mosaic side with n images: gaps of PAD, upscaled by UPSCALE."""
    return plots.UPSCALE * (n * (28 + plots.PAD) + plots.PAD)


@pytest.fixture(scope="module")
def tiny():
    model = VAE(latent=2, hidden_sizes=(8,), image_size=784)
    params = model.init(jax.random.key(0), jnp.zeros((1, 784)), jax.random.key(1))["params"]
    images = np.random.default_rng(0).uniform(size=(20, 784)).astype(np.float32)
    return model, params, images


def read_shape(path):
    assert path.stat().st_size > 0
    return matplotlib.image.imread(path).shape[:2]


def test_grids(tiny, tmp_path):
    model, params, images = tiny
    plots.save_image_grid(images[:10], SHAPE, tmp_path / "g.png", num_columns=4)
    assert read_shape(tmp_path / "g.png") == (cell(3), cell(4))
    plots.save_reconstructions(images[:5], images[5:10], SHAPE, tmp_path / "r.png")
    assert read_shape(tmp_path / "r.png") == (cell(2), cell(5))
    plots.save_interpolations(
        model,
        params,
        images[:3],
        images[3:6],
        SHAPE,
        tmp_path / "i.png",
        num_steps=7,
        spherical=True,
    )
    assert read_shape(tmp_path / "i.png") == (cell(3), cell(7))
    plots.save_traversals(model, params, images[0], [1, 0], SHAPE, tmp_path / "t.png", num_steps=9)
    assert read_shape(tmp_path / "t.png") == (cell(2), cell(9))
    plots.save_manifold(model, params, SHAPE, tmp_path / "m.png", grid_size=6)
    assert read_shape(tmp_path / "m.png") == (cell(6), cell(6))


def test_figures(tiny, tmp_path):
    model, params, images = tiny
    plots.save_latent_scatter(model, params, images, np.arange(20) % 10, tmp_path / "s.png")
    assert read_shape(tmp_path / "s.png") == (500, 600)
    history = [
        {
            "epoch": e,
            "train_loss": 9.0 - e,
            "test_loss": 9.5 - e,
            "train_recon": 7.0 - e,
            "test_recon": 7.2 - e,
            "train_kl": 2.0,
            "test_kl": 2.3,
        }
        for e in (1, 2, 3)
    ]
    plots.save_training_curves(history, tmp_path / "c.png")
    assert read_shape(tmp_path / "c.png") == (360, 1200)
    plots.save_loss_curves(history, tmp_path / "l.png")
    assert read_shape(tmp_path / "l.png") == (400, 600)


def test_manifold_needs_a_2d_latent(tmp_path):
    model = VAE(latent=3, hidden_sizes=(8,))
    params = model.init(jax.random.key(0), jnp.zeros((1, 784)), jax.random.key(1))["params"]
    with pytest.raises(ValueError, match="2-d latent"):
        plots.save_manifold(model, params, SHAPE, tmp_path / "m.png")


def test_interpolation():
    z0, z1 = np.array([3.0, 0.0]), np.array([0.0, 3.0])
    linear = plots.interpolate_latents(z0, z1, 5)
    np.testing.assert_allclose(linear[[0, -1]], [z0, z1])
    np.testing.assert_allclose(linear[2], [1.5, 1.5])
    spherical = plots.interpolate_latents(z0, z1, 5, spherical=True)
    np.testing.assert_allclose(spherical[[0, -1]], [z0, z1], atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(spherical, axis=1), 3.0)  # stays on the sphere
    np.testing.assert_allclose(spherical[2], [3 / np.sqrt(2)] * 2)


def test_latent_projection_is_pca_above_two_dimensions():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(500, 5)) * np.array([5.0, 0.1, 0.1, 2.0, 0.1])
    points, labels = plots.latent_projection(means)
    assert labels == ("PC 1", "PC 2") and points.shape == (500, 2)
    np.testing.assert_allclose(np.var(points, axis=0), [25.0, 4.0], rtol=0.15)
    same, labels2 = plots.latent_projection(means[:, :2])
    assert labels2 == ("z_1", "z_2")
    np.testing.assert_array_equal(same, means[:, :2])


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png_files_hold_exactly_the_pixels_written(channels, tmp_path):
    pixels = np.random.default_rng(channels).integers(0, 256, (7, 5, channels), dtype=np.uint8)
    plots.write_png(str(tmp_path / "p.png"), pixels)
    read = np.rint(matplotlib.image.imread(tmp_path / "p.png") * 255).astype(np.uint8)
    np.testing.assert_array_equal(read.reshape(pixels.shape), pixels)


def test_counts_below_one_are_refused(tiny, tmp_path):
    model, params, images = tiny
    with pytest.raises(ValueError, match="num_columns must be a positive int, got 0"):
        plots.tile_images(images, SHAPE, 0)
    with pytest.raises(ValueError, match=r"len\(images\) must be a positive int, got 0"):
        plots.tile_images(images[:0], SHAPE, 4)
    with pytest.raises(ValueError, match="num_steps must be an int of at least 2"):
        plots.interpolate_latents(np.zeros(2), np.ones(2), 1)
    with pytest.raises(ValueError, match="num_steps must be a positive int, got 0"):
        plots.save_traversals(model, params, images[0], [0], SHAPE, tmp_path / "t.png", num_steps=0)
