"""A run's folder: its files and their names, config.json, metrics.jsonl, the lock, and
`load_model`, which gives back a trained model without reading any data.

    <workdir>/config.json      the run's settings and the image shape
    <workdir>/metrics.jsonl    one JSON record per epoch
    <workdir>/params.msgpack   the final parameters (flax.serialization)
    <workdir>/best_params.msgpack  with --num_valid: those of the best validation ELBO
    <workdir>/samples.png, reconstructions.png, loss_curves.png
    <workdir>/checkpoints/     see vae_jax/checkpoint.py
    <workdir>/.vae_jax.lock    held by the process using the folder; empty otherwise
"""

import contextlib
import datetime
import fcntl
import functools
import json
import math
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from typing import Any, NamedTuple

import flax
import jax

from vae_jax import folders, train
from vae_jax.config import Config, check_compatible, config_from_dict
from vae_jax.errors import InputError

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
PARAMS_FILE = "params.msgpack"
SAMPLES_FILE = "samples.png"
RECONSTRUCTIONS_FILE = "reconstructions.png"
LOSS_CURVES_FILE = "loss_curves.png"
BEST_PARAMS_FILE = "best_params.msgpack"  # with --num_valid: the best epoch's parameters
LOCK_FILE = folders.LOCK_FILE
# What a finished run leaves (besides checkpoints/ and the lock file).
OUTPUTS = (
    METRICS_FILE,
    CONFIG_FILE,
    PARAMS_FILE,
    SAMPLES_FILE,
    RECONSTRUCTIONS_FILE,
    LOSS_CURVES_FILE,
)
IMAGE_SHAPE_KEY = "image_shape"  # in config.json, beside the Config fields


# --- Creating and locking -------------------------------------------------------------


def prepare(config: Config, outputs: tuple[str, ...]) -> None:
    """Creates the workdir and checks it is writable and holds none of `outputs`.

    Raises InputError, leaving any existing file untouched, when the folder cannot be
    written or already holds one of `outputs` and `config.overwrite` is off.
    """
    try:
        os.makedirs(config.workdir, exist_ok=True)
        with tempfile.TemporaryFile(dir=config.workdir):
            pass
    except OSError as e:
        raise InputError(
            f"--workdir={config.workdir} is not a writable folder ({e.strerror}); "
            "choose another --workdir"
        ) from None
    existing = [name for name in outputs if os.path.exists(os.path.join(config.workdir, name))]
    if existing and not config.overwrite:
        raise InputError(
            f"--workdir={config.workdir} already holds a run ({', '.join(existing)}); "
            "choose a new --workdir or pass --overwrite"
        )


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
    """Holds `workdir` for this process, or raises InputError naming the process that does.

    An exclusive `flock` on `<workdir>/.vae_jax.lock`, taken without waiting. The kernel
    drops it when the process ends, however it ends (SIGKILL included), so no stale lock
    survives. While held, the file says who holds it; it is emptied on release. The
    folder must exist.
    """
    path = os.path.join(workdir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise InputError(
            f"--workdir={workdir} is not a writable folder ({e.strerror}); choose another --workdir"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 1000).decode(errors="replace").strip() or "another process"
            raise InputError(
                f"--workdir={workdir} is in use by {holder}; wait for it to finish, or "
                "choose another --workdir"
            ) from None
        command = " ".join(
            os.path.basename(arg) if i == 0 else arg for i, arg in enumerate(sys.argv)
        )
        started = datetime.datetime.now().isoformat(timespec="seconds")
        holder = (
            f"process {os.getpid()} on {socket.gethostname()} ({command[:200]}; since {started})"
        )
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # Releases the lock.


# --- config.json -----------------------------------------------------------------------


def write_config(workdir: str, config: Config, image_shape: tuple[int, ...]) -> None:
    """Writes config.json: every setting, and the image shape the model was built for."""
    values = json.loads(config.to_json())
    values[IMAGE_SHAPE_KEY] = list(image_shape)
    _write_atomically(os.path.join(workdir, CONFIG_FILE), json.dumps(values, indent=2) + "\n")


def read_config(workdir: str) -> tuple[Config, tuple[int, ...] | None]:
    """The run's Config and image shape (None if config.json predates it).

    Raises InputError if config.json is missing or is not a vae_jax config.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    try:
        with open(path) as f:
            values = json.load(f)
        shape = values.pop(IMAGE_SHAPE_KEY, None)
        return config_from_dict(values), tuple(shape) if shape else None
    except OSError as e:
        raise InputError(f"cannot read {path} ({e.strerror})") from None
    except (ValueError, TypeError, AttributeError) as e:
        raise InputError(f"{path} is not a vae_jax config ({e})") from None


def is_same_run(workdir: str, config: Config) -> bool:
    """Whether `workdir` holds the config.json of a run that `config` may continue."""
    try:
        saved, _ = read_config(workdir)
        check_compatible(saved, config)
    except InputError:
        return False
    return True


# --- metrics.jsonl ----------------------------------------------------------------------


def _json_line(record: dict[str, Any]) -> str:
    """One line of strict JSON: NaN and infinities, which JSON lacks, become null."""

    def finite_or_none(value):
        return None if isinstance(value, float) and not math.isfinite(value) else value

    return json.dumps({k: finite_or_none(v) for k, v in record.items()}, allow_nan=False) + "\n"


def read_metrics(path: str, up_to_epoch: int | None = None) -> list[dict[str, Any]]:
    """The records of `metrics.jsonl` for epochs 1 .. up_to_epoch (all when None), in order.

    Raises InputError if `up_to_epoch` is given and an epoch up to it is missing.
    """
    records = []
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    break  # A line cut by a crash: it and what follows are redone.
                if up_to_epoch is not None and record.get("epoch", 0) > up_to_epoch:
                    break
                records.append(record)
    if up_to_epoch is None:
        return records
    if [r["epoch"] for r in records] != list(range(1, up_to_epoch + 1)):
        raise InputError(
            f"{path} lacks epochs of the checkpointed run (has {len(records)} of {up_to_epoch}); "
            "restore that file, or start afresh with --overwrite"
        )
    return records


def write_metrics(path: str, records: list[dict[str, Any]], append: bool = False) -> None:
    """Appends records, or replaces the file atomically (a crash leaves old or new)."""
    lines = "".join(_json_line(record) for record in records)
    if append:
        with open(path, "a") as f:
            f.write(lines)
    else:
        _write_atomically(path, lines)


def write_params(path: str, params) -> None:
    """Writes a `params` collection as msgpack (`flax.serialization`), atomically."""
    _write_atomically(path, flax.serialization.to_bytes(jax.device_get(params)))


def _write_atomically(path: str, content: str | bytes) -> None:
    with open(path + ".tmp", "wb" if isinstance(content, bytes) else "w") as f:
        f.write(content)
    os.replace(path + ".tmp", path)


# --- The trained model --------------------------------------------------------------------


class LoadedRun(NamedTuple):
    """What `load_model` reads back: everything needed to use a trained model."""

    model: Any  # the Flax module trained (`VAE`, `HierarchicalVAE`)
    params: Any  # its `params` collection, on the host
    config: Config  # the run's settings
    image_shape: tuple[int, ...]  # (height, width, channels) of its images, e.g. (28, 28, 1)


def load_model(workdir: str, params_file: str = PARAMS_FILE) -> LoadedRun:
    """A finished run's (model, params, config, image_shape), read from its folder alone.

    The model is the one trained (its `dtype` included; `models.with_dtype(model, jnp.float32)`
    scores it in float32), and `params` the `params` collection of `params_file` (the
    final one, or `BEST_PARAMS_FILE`) on the host.

    Raises InputError if the folder holds no finished run, or an unreadable one.
    """
    paths = {name: os.path.join(workdir, name) for name in (CONFIG_FILE, params_file)}
    missing = [name for name, path in paths.items() if not os.path.isfile(path)]
    if missing:
        fix = (
            "train with --num_valid=N to keep the best parameters"
            if params_file == BEST_PARAMS_FILE and CONFIG_FILE not in missing
            else "train with python -m vae_jax.main --workdir=... first"
        )
        raise InputError(f"{workdir} is not a finished run (no {', '.join(missing)}); {fix}")
    config, image_shape = read_config(workdir)
    if image_shape is None:
        raise InputError(
            f"{paths[CONFIG_FILE]} has no {IMAGE_SHAPE_KEY} (written by an older vae_jax); "
            f'add "{IMAGE_SHAPE_KEY}": [28, 28, 1] to it for MNIST'
        )
    model = config.build_model(image_shape)
    try:
        with open(paths[params_file], "rb") as f:
            content = f.read()
    except OSError as e:
        raise InputError(f"cannot read {paths[params_file]} ({e.strerror})") from None
    params = params_from_bytes(
        model, content, paths[params_file], paths[CONFIG_FILE], "was one of them replaced?"
    )
    return LoadedRun(model, params, config, tuple(image_shape))


def params_from_bytes(model, content: bytes, where: str, model_source: str, fix: str):
    """The `params` collection of `model` from msgpack bytes (`write_params`), on the host.

    Raises InputError naming `where` (the bytes' file) when they are not such a
    collection, or one of other shapes than the model of `model_source` (its settings'
    file) has, which `fix` says how to mend.
    """
    template = jax.eval_shape(functools.partial(train.init_params, model), jax.random.key(0))
    try:
        params = flax.serialization.from_bytes(template, content)
    except Exception as e:  # msgpack and flax raise several types for a bad file.
        raise InputError(f"cannot load {where} ({type(e).__name__}: {e})") from None
    shapes = jax.tree.map(lambda leaf: tuple(leaf.shape), (template, params))
    if shapes[0] != shapes[1]:
        raise InputError(f"{where} does not fit the model of {model_source}; {fix}")
    return params
