"""The one exception family that means "the user must change something".

The command-line entry points turn these into a single readable log line; anything else is a
bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input, bad settings or a missing tool; the message says what to change."""
