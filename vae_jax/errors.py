"""The one error type for a user's mistake (flags, files, data).

`vae_jax.main` turns it into a one-line message and exit status 2; anything else is a
bug and keeps its traceback.
"""


class InputError(Exception):
    """A problem with what the user gave us; the message says what and what to do."""


class WriteError(Exception):
    """A run's file could not be written (a full disk, no permission): the message names
    the file and the OS error. `vae_jax.main` makes it one line and exit status 1."""


# What the commands need beyond the core install (the maths): `pip install 'vae_jax[all]'`.
# tensorflow_datasets is not among them: it is imported only to read a TFDS data dir, and
# tensorboardX only when a run writes TensorBoard files (`run_modules`).
COMMAND_MODULES = ("absl", "matplotlib", "orbax.checkpoint", "tqdm")
TENSORBOARD_MODULE = "tensorboardX"


def run_modules(tensorboard: bool) -> tuple[str, ...]:
    """What `train_and_evaluate` imports: checkpoints, pictures, and TensorBoard's writer."""
    return ("matplotlib", "orbax.checkpoint") + ((TENSORBOARD_MODULE,) if tensorboard else ())


def missing_modules(names) -> list[str]:
    """Those of the module `names` that cannot be imported here."""
    import importlib.util

    def installed(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except (ModuleNotFoundError, ValueError):  # a missing parent package
            return False

    return [name for name in names if not installed(name)]


def extra_message(what: str, missing) -> str:
    """One line: `what` needs the [all] extra, which lacks `missing`, and how to fix it."""
    fix = "pip install 'vae_jax[all]', or ./run.sh, which installs it"
    if list(missing) == [TENSORBOARD_MODULE]:
        fix = "pip install tensorboardX, or pass --notensorboard (Config(tensorboard=False))"
    missing = ", ".join(missing)
    return f"{what} needs the [all] extra, which is not installed (missing {missing}): {fix}"


def require_command_extra(command: str, as_command: bool, names=COMMAND_MODULES) -> None:
    """Stops `command` in one line when modules of the [all] extra it needs are missing.

    `as_command`: it runs as a command (print the line, exit 2); else raise ImportError.
    """
    import sys

    missing = missing_modules(names)
    if not missing:
        return
    message = extra_message(command, missing)
    if not as_command:
        raise ImportError(message)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
