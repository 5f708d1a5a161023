"""What the commands share: absl's flags parsed with one-line errors, and signals.

absl reports a bad flag on two lines ("FATAL Flags parsing error: ..." and a pointer to
--helpfull) with exit status 1; the commands promise one line and status 2 for every
mistake of the user's, so `app.run(main, flags_parser=parse_flags)` parses them here.
A training command stops on SIGINT or SIGTERM after the current epoch, with a checkpoint
(`StopOnSignal`); before training begins, Ctrl-C stops at once (`InterruptBeforeTraining`).
"""

import os
import signal
import sys
import threading

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
