"""The one exception type for bad user input: reported as a single line, never as a traceback."""


class UserError(Exception):
    """Invalid configuration or data, detected before (or instead of) expensive work."""


class RunFailure(Exception):
    """A run that cannot go on for a reason worth one clear line (e.g. a non-finite loss), not a bug."""
