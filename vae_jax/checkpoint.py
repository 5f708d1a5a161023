"""Checkpoints of a training run with orbax, in `<workdir>/checkpoints/<epoch>/`.

A checkpoint holds what makes a resumed run identical to an uninterrupted one: the
parameters, the optimiser state, the step counter, the run's training key (epoch e's
data order, binarization and z draws all derive from it and e), and, as JSON, the
epoch and the run's config. Orbax writes each checkpoint into a temporary folder and
renames it when complete, so a crash mid-write leaves the previous one intact.
Nothing here unpickles anything: arrays are stored by tensorstore, the rest as JSON.
"""

import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import orbax.checkpoint as ocp
from flax.training import train_state

from vae_jax.config import Config, check_compatible, config_from_dict
from vae_jax.errors import InputError, WriteError

CHECKPOINT_DIR = "checkpoints"
MANIFEST = "vae_jax_sha256.json"  # in each finished checkpoint folder
FORMAT_VERSION = 1
# What to do about a checkpoint that cannot be read.
_FIX = (
    "it is corrupt or truncated: delete that folder to resume from the one before, "
    "or choose a new --workdir"
)


class Restored(NamedTuple):
    state: train_state.TrainState
    train_key: jax.Array
    epoch: int  # the last finished epoch


def manager(workdir: str, keep: int = 3) -> ocp.CheckpointManager:
    """The run's checkpoint manager, keeping the last `keep` checkpoints."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        enable_async_checkpointing=False,  # A small state; a finished save is simpler.
        create=True,
        cleanup_tmp_directories=True,  # Drop a half-written checkpoint left by a crash.
    )
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)),
        options=options,
        item_names=("state", "meta"),
    )


def _file_digests(folder: str) -> dict[str, str]:
    """SHA-256 of every file below `folder` but the manifest, by relative path."""
    digests = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, folder)
            if relative != MANIFEST:
                with open(path, "rb") as f:
                    digests[relative] = hashlib.sha256(f.read()).hexdigest()
    return digests


def complete_epochs(workdir: str) -> list[int]:
    """Epochs whose checkpoint was finished: orbax wrote it and we wrote its manifest.

    A step folder without a manifest is a save cut short by a crash; it is ignored, so
    the checkpoint before it stands.
    """
    folder = os.path.join(workdir, CHECKPOINT_DIR)
    if not os.path.isdir(folder):
        return []
    return sorted(
        int(name)
        for name in os.listdir(folder)
        if name.isdigit() and os.path.isfile(os.path.join(folder, name, MANIFEST))
    )


def remove_unfinished(workdir: str) -> None:
    """Deletes step folders that lack a manifest: saves cut short, whose epoch is redone."""
    folder = os.path.join(workdir, CHECKPOINT_DIR)
    finished = set(complete_epochs(workdir))
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        if name.isdigit() and int(name) not in finished:
            shutil.rmtree(os.path.join(folder, name))


def has_checkpoint(workdir: str) -> bool:
    return bool(complete_epochs(workdir))


def _state_tree(state: train_state.TrainState, train_key: jax.Array) -> dict[str, Any]:
    tree = {
        "step": state.step,
        "params": state.params,
        "opt_state": state.opt_state,
        "train_key": jax.random.key_data(train_key),
    }
    if getattr(state, "ema_params", None) is not None:  # --ema_decay
        tree["ema_params"] = state.ema_params
    return tree


def save(
    checkpoints: ocp.CheckpointManager,
    epoch: int,
    state: train_state.TrainState,
    train_key: jax.Array,
    config: Config,
) -> None:
    """Writes the checkpoint of `epoch` (atomically) and prunes old ones."""
    meta = {"format_version": FORMAT_VERSION, "epoch": epoch, "config": dataclasses.asdict(config)}
    try:
        with _stderr_kept_unless_failed():
            checkpoints.save(
                epoch,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(_state_tree(state, train_key)),
                    meta=ocp.args.JsonSave(meta),
                ),
                force=True,
            )
            checkpoints.wait_until_finished()
    except Exception as e:  # orbax and tensorstore raise ValueError, OSError, ...
        # Orbax wrote into a temporary folder; drop it, so only finished checkpoints stay.
        for partial in glob.glob(os.path.join(str(checkpoints.directory), f"{epoch}.orbax-*")):
            shutil.rmtree(partial, ignore_errors=True)
        kept = max(complete_epochs(os.path.dirname(str(checkpoints.directory))), default=None)
        raise WriteError(
            f"cannot write the checkpoint of epoch {epoch} in {checkpoints.directory} "
            f"({_os_error(e)}); "
            + (f"the checkpoint of epoch {kept} is intact" if kept else "no checkpoint yet")
        ) from None
    if jax.process_index() != 0:
        return  # Process 0 alone writes files (orbax had every process take part).
    # The manifest marks the checkpoint complete and lets a resume detect corruption
    # before reading (orbax's readers fail noisily on a truncated file).
    step_folder = os.path.join(str(checkpoints.directory), str(epoch))
    manifest = os.path.join(step_folder, MANIFEST)
    digests = _file_digests(step_folder)
    with open(manifest + ".tmp", "w") as f:
        json.dump(digests, f, indent=0, sort_keys=True)
    os.replace(manifest + ".tmp", manifest)


@contextlib.contextmanager
def _stderr_kept_unless_failed() -> Iterator[None]:
    """Holds back what is written to file descriptor 2 in the block; lets it out unless
    the block raises.

    A failed orbax write (a full disk) makes each of its writer threads print a traceback,
    from Python and from tensorstore's C++ callbacks alike, dozens in all; the error
    raised here says it in one line instead. Those threads go on printing after the
    failure reaches us, so on failure fd 2 is held until they have been quiet for
    `_QUIET_S` (at most `_QUIET_MAX_S`). A save that succeeds shows its output.
    """
    sys.stderr.flush()
    with tempfile.TemporaryFile() as held:
        saved_fd = os.dup(2)
        os.dup2(held.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            _wait_until_quiet(held.fileno())
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            if not failed:
                held.seek(0)
                text = held.read()
                if text:
                    sys.stderr.buffer.write(text)
                    sys.stderr.flush()


_QUIET_S = 0.5
_QUIET_MAX_S = 5.0


def _wait_until_quiet(fd: int) -> None:
    """Returns once the file `fd` has not grown for `_QUIET_S`, or after `_QUIET_MAX_S`."""
    deadline = time.monotonic() + _QUIET_MAX_S
    size, quiet_since = os.fstat(fd).st_size, time.monotonic()
    while time.monotonic() - quiet_since < _QUIET_S and time.monotonic() < deadline:
        time.sleep(0.05)
        if (grown := os.fstat(fd).st_size) != size:
            size, quiet_since = grown, time.monotonic()


def _os_error(error: BaseException) -> str:
    """The OS's words for why a write failed, from orbax's or tensorstore's long message."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error)
    for reason in ("No space left on device", "Permission denied", "Read-only file system"):
        if reason in text:
            return reason
    return text.splitlines()[0][:200] if text else type(error).__name__


def restore_latest(
    checkpoints: ocp.CheckpointManager,
    template: train_state.TrainState,
    train_key: jax.Array,
    config: Config,
) -> Restored:
    """Restores the newest checkpoint into the structure of `template`.

    Raises InputError, touching no file, if the checkpoint is corrupt or truncated, was
    written by an incompatible version, or belongs to a run with other settings.
    """
    epoch = complete_epochs(config.workdir)[-1]
    where = os.path.join(config.workdir, CHECKPOINT_DIR, str(epoch))
    try:
        with open(os.path.join(where, MANIFEST)) as f:
            expected = json.load(f)
    except (OSError, ValueError):
        raise InputError(f"cannot read the manifest of checkpoint {where}; " + _FIX) from None
    if _file_digests(where) != expected:
        raise InputError(f"checkpoint {where} does not match its manifest; " + _FIX)
    try:
        meta = checkpoints.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    except Exception as e:  # orbax raises many types for unreadable files.
        raise InputError(f"cannot read checkpoint {where} ({type(e).__name__}); " + _FIX) from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise InputError(
            f"checkpoint {where} has format version {version}, this vae_jax reads "
            f"{FORMAT_VERSION}; resume it with the vae_jax that wrote it, or choose a new --workdir"
        )
    check_compatible(config_from_dict(meta["config"]), config)
    tree = _state_tree(template, train_key)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    try:
        restored = checkpoints.restore(
            epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        ).state
        # Orbax returns optax's named tuples as plain tuples: rebuild the live structure.
        restored = jax.tree.unflatten(jax.tree.structure(tree), jax.tree.leaves(restored))
    except Exception as e:
        raise InputError(f"cannot read checkpoint {where} ({type(e).__name__}); " + _FIX) from None
    state = template.replace(**{k: v for k, v in restored.items() if k != "train_key"})
    return Restored(state, jax.random.wrap_key_data(restored["train_key"]), int(meta["epoch"]))
