"""Command line: `python -m vae_jax.main --beta=1 --latent=64` trains, evaluates, draws.

One flag per `Config` field (see vae_jax/config.py for the settings and their help).
"""

from vae_jax.errors import require_command_extra

require_command_extra("python -m vae_jax.main", as_command=__name__ == "__main__")

import dataclasses
import os
import signal
import sys
import threading

from absl import app, flags
from absl import logging as absl_logging

from vae_jax import cli, errors
from vae_jax.config import Config
from vae_jax.errors import InputError, WriteError


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines one absl flag per Config field, with the field's default and help.

    Each flag is filed under its field's group (`config.GROUPS`), which `--helpfull`
    shows as a heading ("vae_jax.main: model", ...).
    """
    definers = {
        bool: flags.DEFINE_bool,
        int: flags.DEFINE_integer,
        float: flags.DEFINE_float,
    }
    for field in dataclasses.fields(Config):
        help_text, choices = field.metadata["help"], field.metadata.get("choices")
        where = dict(
            flag_values=flag_values, module_name=f"vae_jax.main: {field.metadata['group']}"
        )
        if choices:
            flags.DEFINE_enum(field.name, field.default, choices, help_text, **where)
        elif field.type == tuple[int, ...]:
            flags.DEFINE_list(field.name, [str(v) for v in field.default], help_text, **where)
        else:
            define = definers.get(field.type, flags.DEFINE_string)
            define(field.name, field.default, help_text, **where)


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> Config:
    """Builds and validates the Config from parsed flags."""
    values = {}
    for field in dataclasses.fields(Config):
        value = flag_values[field.name].value
        if field.type == tuple[int, ...]:
            try:
                value = tuple(int(v) for v in value)
            except ValueError:
                raise InputError(
                    f"--{field.name} must be comma-separated integers, got {','.join(value)}"
                ) from None
        values[field.name] = value
    return Config(**values).validate()


def main(argv: list[str]) -> None:
    del argv  # cli.parse_flags refused any argument that is not a flag
    # The console is for our progress lines: JAX's notes on absent accelerator plugins,
    # matplotlib's on building its font cache and orbax's record of each checkpoint
    # operation are INFO logs, kept off it.
    absl_logging.set_verbosity(absl_logging.WARNING)
    # Deferred: importing JAX is slow, and --help should be fast.
    from vae_jax import data, run

    try:
        config = config_from_flags()
        if config.tensorboard:  # the one module of the extra that a flag can spare
            errors.require_command_extra(
                "python -m vae_jax.main", True, errors.run_modules(tensorboard=True)
            )
        if config.distributed:
            from vae_jax import parallel

            parallel.initialize(config.coordinator_address, config.num_processes, config.process_id)
        # A finished run or a refused resume is answered from config.json, before any data.
        if run.finished_run(config) is not None:
            return
        # Fetch missing data before Ctrl-C comes to mean "finish this epoch".
        with InterruptBeforeTraining():
            data.find_data(config.dataset, config.data_dir, config.download)
        with StopOnSignal() as stop:
            record = run.train_and_evaluate(config, should_stop=stop.requested)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (WriteError, OSError) as e:
        where = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename else e
        print(
            f"error: {where}; free some space or fix the permissions of --workdir, then run "
            "the same command to resume",
            file=sys.stderr,
            flush=True,
        )
        sys.stdout.flush()
        # Exit at once, fd 2 closed to them: orbax's and tensorstore's writer threads,
        # stopped mid-write, would print tracebacks while the interpreter shuts down.
        # Every file of ours is closed and the workdir's lock released by now.
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        os._exit(1)
    if record.get("stopped"):
        sys.exit(128 + stop.signal_number)


class InterruptBeforeTraining:
    """SIGINT stops the block at once and exits 130 with one line.

    The signal raises KeyboardInterrupt as usual, and is also remembered. Where Python
    cannot raise it (inside a garbage-collection or weakref callback; JAX installs one),
    it reports and drops it instead: those reports are kept off stderr, and until the
    block has ended the signal is delivered again every `RESEND_S`, so it stops the
    block wherever it first lands.
    """

    RESEND_S = 0.1

    def __init__(self):
        self.interrupted = False
        self._leaving = False
        self._resend_lock = threading.Lock()

    def _handle(self, signal_number, frame):
        del frame
        if self._leaving:
            return
        self.interrupted = True
        threading.Timer(self.RESEND_S, self._resend, (signal_number,)).start()
        raise KeyboardInterrupt

    def _resend(self, signal_number):
        with self._resend_lock:
            if not self._leaving:
                os.kill(os.getpid(), signal_number)

    def _unraisable(self, unraisable):
        if not issubclass(unraisable.exc_type, KeyboardInterrupt):
            self._previous_hook(unraisable)

    def __enter__(self):
        self._previous = signal.signal(signal.SIGINT, self._handle)
        self._previous_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        return self

    def __exit__(self, exc_type, exc, traceback):
        self._leaving = True
        with self._resend_lock:  # No signal is sent from here on ...
            pass
        _run_pending_signal_handlers()  # ... and one already sent is ignored by _handle.
        signal.signal(signal.SIGINT, self._previous)
        sys.unraisablehook = self._previous_hook
        if self.interrupted or exc_type is KeyboardInterrupt:
            print(
                "interrupted before training began: the workdir is untouched, and a download "
                "keeps only the files it had verified",
                file=sys.stderr,
            )
            sys.exit(130)  # Replaces whatever the interrupted block raised.


def _run_pending_signal_handlers() -> None:
    """Does nothing: calling a Python function makes CPython run pending signal handlers."""


class StopOnSignal:
    """SIGINT or SIGTERM asks the run to stop after the current epoch, with a checkpoint;
    a second signal exits at once. Restores the previous handlers on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signal_number = 0
        self._previous = {}

    def requested(self) -> bool:
        return self.signal_number != 0

    def _handle(self, signal_number, frame):
        del frame
        if self.signal_number:
            print(f"\n{signal.Signals(signal_number).name} again: exiting now", file=sys.stderr)
            os._exit(128 + signal_number)
        self.signal_number = signal_number
        print(
            f"\n{signal.Signals(signal_number).name}: finishing this epoch, then writing a "
            "checkpoint (send it again to exit at once)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self):
        for number in self.SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info):
        for number, handler in self._previous.items():
            signal.signal(number, handler)


define_flags()

if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
