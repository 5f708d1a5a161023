"""Command line: `python -m vae_jax.main --beta=1 --latent=64` trains, evaluates, draws.

One flag per `Config` field (see vae_jax/config.py for the settings and their help).
"""

import dataclasses
import logging
import sys

from absl import app, flags

from vae_jax.config import Config
from vae_jax.errors import InputError


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines one absl flag per Config field, with the field's default and help."""
    for field in dataclasses.fields(Config):
        help_text = field.metadata["help"]
        choices = field.metadata.get("choices")
        if choices:
            flags.DEFINE_enum(
                field.name, field.default, choices, help_text, flag_values=flag_values
            )
        elif field.type is bool:
            flags.DEFINE_bool(field.name, field.default, help_text, flag_values=flag_values)
        elif field.type is int:
            flags.DEFINE_integer(field.name, field.default, help_text, flag_values=flag_values)
        elif field.type is float:
            flags.DEFINE_float(field.name, field.default, help_text, flag_values=flag_values)
        elif field.type == tuple[int, ...]:
            flags.DEFINE_list(
                field.name, [str(v) for v in field.default], help_text, flag_values=flag_values
            )
        else:
            flags.DEFINE_string(field.name, field.default, help_text, flag_values=flag_values)


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
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; settings are --flags")
    from vae_jax import train  # Deferred: importing JAX is slow, and --help should be fast.

    # JAX logs at INFO each accelerator plugin it did not find; not news on a CPU.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)

    try:
        train.train_and_evaluate(config_from_flags())
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


define_flags()

if __name__ == "__main__":
    app.run(main)
