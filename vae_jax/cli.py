"""What the two commands share: absl's flags parsed with one-line errors.

absl reports a bad flag on two lines ("FATAL Flags parsing error: ..." and a pointer to
--helpfull) with exit status 1; the commands promise one line and status 2 for every
mistake of the user's, so `app.run(main, flags_parser=parse_flags)` parses them here.
"""

import sys

from absl import flags


def fail(message: str) -> None:
    """Prints `error: message` on one line to stderr and exits with status 2."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, for `app.run(..., flags_parser=parse_flags)`: a bad flag or a
    stray argument is one line on stderr and exit status 2."""
    try:
        remaining = flags.FLAGS(argv)
    except flags.Error as e:
        fail(f"{e}; python -m {_command(argv)} --helpfull lists the flags")
    if len(remaining) > 1:
        fail(f"unexpected arguments {remaining[1:]}; settings are --flags (--helpfull lists them)")
    return remaining


def _command(argv: list[str]) -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else argv[0]
