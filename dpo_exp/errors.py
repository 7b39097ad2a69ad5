"""The exception types a run reports as a single line, never as a traceback, and that line."""


class UserError(Exception):
    """Invalid configuration or data, detected before (or instead of) expensive work."""


class RunFailure(Exception):
    """A run that cannot go on for a reason worth one clear line (e.g. a non-finite loss), not a bug."""


class RunInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint. `forward` passes the signal on afterwards."""

    def __init__(self, message: str, forward=None):
        super().__init__(message)
        self.forward = forward


def error_line(exc: BaseException) -> str:
    """`Type: first line of the message`, as summary.json records a failure."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{type(exc).__name__}: {message}"
