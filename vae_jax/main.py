"""Command line: `python -m vae_jax.main --beta=1 --latent=64` trains, evaluates, draws.

One flag per `Config` field (see vae_jax/config.py for the settings and their help).
"""

from vae_jax.errors import require_command_extra

require_command_extra("python -m vae_jax.main", as_command=__name__ == "__main__")

import dataclasses
import os
import sys

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
        with cli.InterruptBeforeTraining():
            data.find_data(config.dataset, config.data_dir, config.download)
        with cli.StopOnSignal() as stop:
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


define_flags()

if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
