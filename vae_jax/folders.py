"""Folders a command makes, and removes again when it fails before using them: a failed
command leaves nothing behind (an unwritten workdir, a download folder that got no file).
"""

import contextlib
import os
import shutil
from collections.abc import Iterator

LOCK_FILE = ".vae_jax.lock"  # the lock file of a workdir and of a download folder


@contextlib.contextmanager
def removed_unless_used(folder: str) -> Iterator[None]:
    """Runs the block; if it fails, removes `folder` and the parents made with it when
    they hold nothing but a lock file and empty folders. So a command that fails leaves
    no folder it made behind, while one holding anything else is kept."""
    made, path = [], os.path.abspath(folder)
    while not os.path.exists(path):  # the deepest first
        made.append(path)
        path = os.path.dirname(path)
    try:
        yield
    except BaseException:
        for path in made:
            if _unused(path):
                shutil.rmtree(path, ignore_errors=True)
        raise


def _unused(folder: str) -> bool:
    """Whether `folder` holds nothing but lock files and folders that are themselves unused."""
    if not os.path.isdir(folder):
        return False
    return all(
        entry.name == LOCK_FILE or (entry.is_dir() and _unused(entry.path))
        for entry in os.scandir(folder)
    )
