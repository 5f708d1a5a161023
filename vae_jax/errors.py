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
COMMAND_MODULES = (
    "absl",
    "matplotlib",
    "orbax.checkpoint",
    "tensorboardX",
    "tensorflow_datasets",
    "tqdm",
)


def require_command_extra(command: str, as_command: bool) -> None:
    """Stops `command` in one line when the [all] extra it needs is not installed.

    `as_command`: it runs as a command (print the line, exit 2); else raise ImportError.
    """
    import importlib.util
    import sys

    def installed(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a missing parent package
            return False

    missing = [name for name in COMMAND_MODULES if not installed(name)]
    if not missing:
        return
    message = (
        f"{command} needs the [all] extra, which is not installed (missing "
        f"{', '.join(missing)}): pip install 'vae_jax[all]', or ./run.sh, which installs it"
    )
    if not as_command:
        raise ImportError(message)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
