"""The one boundary for images: every public function that takes them goes through here.

`check_images` turns what a caller passes into what the maths expects, or refuses it
with a `ValueError` that names what was expected:

- dtype: uint8 pixels (0..255) pass as they are, and the jitted maths divides them by
  255; bool (0/1), float16, bfloat16 and float64 become float32; other integer dtypes
  are refused, since their scale is unknown (int64 of 0 and 1 is a binarized array, of
  0..255 pixels), as is anything else (complex, strings, objects);
- shape: [batch, pixels] with the model's pixel count; [batch, H, W] and [batch, H, W, C]
  images with that many pixels are flattened; a single image, an empty batch or another
  pixel count is refused;
- values: inside the likelihood's pixel range ([0, 1] for the Bernoulli family) and
  finite, so a [0, 255] float image or a NaN pixel never becomes a NaN loss.

The dtype and shape are checked statically, so they cost nothing even inside a jitted
function. Values are read where that costs no wait on the device: NumPy inputs (and
lists) always, on the host, before any device work; `jax.Array`s outside a jitted
function when `check_values` is on, which every function but the training step asks
for (a training loop never waits on the device for a check). Values of arrays traced
inside a user's own `jax.jit` cannot be checked: docs/api.md says so.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

UNIT_INTERVAL = (0.0, 1.0)
MAX_PIXEL = 255  # integer pixels are 0..255


def to_unit_interval(images: jax.Array) -> jax.Array:
    """Model inputs in [0, 1] from pixels [..., pixels] as `load_dataset` gives them.

    Integer pixels (uint8, 0..255) become float32 / 255; floating-point images are taken
    to be in [0, 1] already (`check_images` made sure) and pass unchanged. The jitted maths
    calls it, so uint8 and float images give the same numbers.
    """
    if jnp.issubdtype(images.dtype, jnp.integer):
        return images.astype(jnp.float32) / MAX_PIXEL
    return images


def _is_traced(array) -> bool:
    return isinstance(array, jax.core.Tracer)


def _as_array(images):
    if isinstance(images, jax.Array | np.ndarray):
        return images
    try:
        return np.asarray(images)
    except (TypeError, ValueError) as e:
        kind = type(images).__name__
        raise ValueError(f"images must be an array of pixels; got {kind} ({e})") from None


def _converted_dtype(images, name: str):
    """images as uint8 (kept: the jitted maths divides by 255) or float32."""
    dtype = images.dtype
    xp = np if isinstance(images, np.ndarray) else jnp
    if dtype == np.uint8 or dtype == np.float32:
        return images
    if dtype == np.bool_:
        return images.astype(xp.float32)
    if jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(
            f"{name} of dtype {dtype} have no known scale (0..255 pixels, or 0/1?): pass "
            f"{name}.astype(np.uint8) for pixels 0..255, {name}.astype(bool) for binary "
            "pixels, or floats in [0, 1]"
        )
    if jnp.issubdtype(dtype, jnp.floating):
        return images.astype(xp.float32)
    raise ValueError(
        f"{name} must be uint8 pixels (0..255), bool, or floats in [0, 1]; got dtype {dtype}"
    )


def _flattened(images, image_size: int | None, name: str):
    """images [batch, ...] -> [batch, image_size], or a ValueError naming the shape expected."""
    shape = tuple(images.shape)
    expected = f"[batch, {image_size}]" if image_size else "[batch, pixels]"
    if image_size:
        expected += f" (or [batch, H, W] / [batch, H, W, C] with H*W*C = {image_size})"
    if len(shape) < 2:
        hint = "; for one image, pass images[None]" if len(shape) == 1 else ""
        raise ValueError(f"{name} must be a batch of images, {expected}; got shape {shape}{hint}")
    if shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {shape}); pass at least one image")
    pixels = math.prod(shape[1:])
    if image_size is not None and pixels != image_size:
        raise ValueError(
            f"{name} must have {image_size} pixels per image for this model, {expected}; "
            f"got shape {shape} ({pixels} pixels)"
        )
    return images if len(shape) == 2 else images.reshape(shape[0], pixels)


@jax.jit
def _range_of(images: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    return jnp.min(images), jnp.max(images), jnp.all(jnp.isfinite(images))


def check_values(images, pixel_range: tuple[float, float] | None, name: str = "images") -> None:
    """Raises ValueError unless every value of `images` (uint8 or float32) is finite and
    in `pixel_range` (None: any finite value). Reads a jax.Array's three summaries."""
    if images.dtype == np.uint8 or _is_traced(images):
        return
    summaries = None if isinstance(images, np.ndarray) else _range_of(images)
    if summaries is None or any(_is_traced(value) for value in summaries):
        # A host array, or a concrete one captured by a function being traced (where
        # jax's own operations are staged out, not run): its values are read on the host.
        host = np.asarray(images)
        low, high, finite = host.min(), host.max(), np.isfinite(host).all()
    else:
        low, high, finite = (np.asarray(value) for value in jax.device_get(summaries))
    if not finite:
        raise ValueError(f"{name} holds NaN or infinite values; every pixel must be finite")
    if pixel_range is not None and (low < pixel_range[0] or high > pixel_range[1]):
        lo, hi = pixel_range
        slip = " (pixels in 0..255? divide by 255, or pass them as uint8)" if high > 1.5 else ""
        outside = [f"{_exact(low)} < {lo:g}"] if low < lo else []
        outside += [f"{_exact(high)} > {hi:g}"] if high > hi else []
        raise ValueError(
            f"{name} must be in [{lo:g}, {hi:g}] for this likelihood; got values in "
            f"[{_exact(low)}, {_exact(high)}]: {' and '.join(outside)}{slip}"
        )


def _exact(value) -> str:
    """A float as the shortest decimal that is exactly it: 1.0000001, not 1."""
    return np.format_float_positional(value, unique=True, trim="-")


def check_images(
    images,
    image_size: int | None,
    pixel_range: tuple[float, float] | None = UNIT_INTERVAL,
    *,
    check_values_on_device: bool = True,
    name: str = "images",
):
    """images as the maths takes them: [batch, image_size], uint8 or float32.

    A NumPy input stays on the host, a jax.Array on its device; see the module docstring
    for what is converted, flattened, checked and refused.

    Args:
      images: the caller's images (NumPy, jax.Array, or nested lists).
      image_size: the model's pixels per image; None accepts any.
      pixel_range: (low, high) of the likelihood's support; None: any finite value.
      check_values_on_device: also read the values of a jax.Array (a small wait on the
        device); off in the training step.

    Raises:
      ValueError: naming what was expected and what came.
    """
    images = _flattened(_converted_dtype(_as_array(images), name), image_size, name)
    if isinstance(images, np.ndarray) or check_values_on_device:
        check_values(images, pixel_range, name)
    return images


def check_pixels(images, outputs=None, pixel_range=UNIT_INTERVAL, name: str = "images"):
    """The losses' boundary: images [..., pixels] matching `outputs` [..., pixels].

    The loss functions are per-example and broadcast over leading axes, so no batch
    shape is imposed; the dtype and values are checked as by `check_images`, and uint8
    pixels are scaled to [0, 1] here (the losses compute in floats). `outputs` None (a
    likelihood of its own, which may have several outputs per pixel): no pixel count
    is compared.
    """
    images = _converted_dtype(_as_array(images), name)
    if images.ndim == 0 or images.size == 0:
        raise ValueError(f"{name} must hold at least one pixel per image; got shape {images.shape}")
    if outputs is not None and not _matches(images.shape, jnp.shape(outputs)):
        raise ValueError(
            f"{name} {tuple(images.shape)} and the decoder's output {tuple(jnp.shape(outputs))} "
            "must have the same number of pixels on their last axis and the same batch "
            "axes (or 1 where sample axes lead); flatten images to [batch, pixels]"
        )
    check_values(images, pixel_range, name)
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / MAX_PIXEL
    return images


def _matches(images_shape, outputs_shape) -> bool:
    """Whether images [..., pixels] score against outputs [..., pixels] one to one: the same
    rank and pixels, each other axis equal or 1 (the leading sample axes of a bound)."""
    return (
        len(images_shape) == len(outputs_shape)
        and images_shape[-1] == outputs_shape[-1]
        and all(i in (1, o) for i, o in zip(images_shape[:-1], outputs_shape[:-1], strict=True))
    )


def check_batch(images, name: str = "images"):
    """A batch [N, pixels] of a dataset (uint8 or floats), for `data.batches`."""
    return check_images(images, None, UNIT_INTERVAL, name=name)


def check_per_image(nll, output, images, name: str = "the likelihood's nll"):
    """`nll` of a likelihood, if it is one number per image: the batch axes of `output`
    [..., outputs] and `images` [..., pixels], broadcast. Checked statically, at trace
    time; a ValueError naming the fix otherwise (a sum over the batch would train on a
    loss of another scale, and per-pixel values break the bound's shapes)."""
    expected = jnp.broadcast_shapes(jnp.shape(output)[:-1], jnp.shape(images)[:-1])
    if jnp.shape(nll) != expected:
        raise ValueError(
            f"{name} gave shape {tuple(jnp.shape(nll))} for decoder outputs "
            f"{tuple(jnp.shape(output))} and images {tuple(jnp.shape(images))}; it must give "
            f"-log p(x|z) of each image, shape {expected}: sum over the pixels (axis=-1) "
            "only, with no sum or mean over images (PyTorch's reduction='sum')"
        )
    return nll
