"""The one error type for a user's mistake (flags, files, data).

`vae_jax.main` turns it into a one-line message and exit status 2; anything else is a
bug and keeps its traceback.
"""


class InputError(Exception):
    """A problem with what the user gave us; the message says what and what to do."""
