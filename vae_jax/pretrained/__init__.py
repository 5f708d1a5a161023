"""Trained models that ship inside the package: load one, then sample or score it, with no
training and no download.

    from vae_jax import pretrained
    pretrained.names()                  # ('mnist_binarized', 'mnist_reference', ...)
    pretrained.card("mnist_binarized")  # how it was trained and what it scores: a dict
    run = pretrained.load("mnist_binarized")  # a LoadedRun, as load_model(workdir) gives

Each model is two files beside this one: `<name>.msgpack`, its `params` collection as
`flax.serialization` writes it (float32, the numbers trained and scored), and
`<name>.json`, its card: the settings the model is built from, the weight file's size and
SHA-256, the command that trained it and the bounds it scores (docs/pretrained.md).
`load` checks the file against its card before it reads a number from it.
"""

import hashlib
import importlib.resources
import json
import os
from typing import Any

from vae_jax.config import config_from_dict
from vae_jax.errors import InputError
from vae_jax.workdir import IMAGE_SHAPE_KEY, LoadedRun, load_model, params_from_bytes

_FOLDER = importlib.resources.files(__name__)
_REINSTALL = (
    "reinstall vae_jax (pip install --force-reinstall vae_jax; in a git clone, "
    "git checkout vae_jax/pretrained)"
)


def names() -> tuple[str, ...]:
    """The shipped models, by name, sorted."""
    cards = [entry.name for entry in _FOLDER.iterdir() if entry.name.endswith(".json")]
    return tuple(sorted(name.removesuffix(".json") for name in cards))


def card(name: str) -> dict[str, Any]:
    """The card of shipped model `name`, a fresh dict: `config` (its settings and image
    shape), `weights` (file, bytes, sha256, parameters), `data`, `training` (the command,
    epochs, minutes, date, machine, versions, commit) and `evaluation` (the bounds -L_k on
    the test set in nats, their standard errors, active units; docs/pretrained.md).

    Raises InputError for a name that is not shipped.
    """
    if name not in names():
        raise InputError(
            f"no shipped model is named {name!r}; the shipped ones are {', '.join(names())}"
        )
    return json.loads((_FOLDER / f"{name}.json").read_text())


def weights_path(name: str) -> str:
    """Where the weight file of shipped model `name` is installed."""
    return str(_FOLDER / card(name)["weights"]["file"])


def load(name: str) -> LoadedRun:
    """Shipped model `name` as (model, params, config, image_shape): the `LoadedRun` that
    `vae_jax.load_model(workdir)` gives for a run of one's own, so every function that
    takes a trained model takes it.

    The weight file is checked against the SHA-256 on its card first. Raises InputError,
    naming the file and saying to reinstall, when it is missing or does not match, and for
    a name that is not shipped.
    """
    model_card, path = card(name), weights_path(name)
    try:
        with open(path, "rb") as f:
            content = f.read()
    except OSError as e:
        raise InputError(f"cannot read {path} ({e.strerror}); {_REINSTALL}") from None
    expected = model_card["weights"]["sha256"]
    found = hashlib.sha256(content).hexdigest()
    if found != expected:
        raise InputError(
            f"{path} is damaged: its SHA-256 is {found[:12]}..., its card says "
            f"{expected[:12]}... ({len(content):,} of {model_card['weights']['bytes']:,} "
            f"bytes); {_REINSTALL}"
        )
    values = dict(model_card["config"])
    image_shape = tuple(values.pop(IMAGE_SHAPE_KEY))
    config = config_from_dict(values)
    model = config.build_model(image_shape)
    params = params_from_bytes(model, content, path, f"the card {name}.json", _REINSTALL)
    return LoadedRun(model, params, config, image_shape)


def load_any(name_or_workdir: str) -> LoadedRun:
    """A shipped model by name, or else a finished run's final parameters by its folder
    (what `--init_from` accepts). Raises InputError when it is neither."""
    if name_or_workdir in names():
        return load(name_or_workdir)
    if os.path.isdir(name_or_workdir):
        return load_model(name_or_workdir)
    raise InputError(
        f"{name_or_workdir!r} is neither a shipped model ({', '.join(names())}) nor a "
        "folder; name one, or a finished run's --workdir"
    )
