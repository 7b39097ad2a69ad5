"""The one exception type for bad user input: reported as a single line, never as a traceback."""


class UserError(Exception):
    """Invalid configuration or data, detected before (or instead of) expensive work."""


class RunFailure(Exception):
    """A run that cannot go on for a reason worth one clear line (e.g. a non-finite loss), not a bug."""


class RunInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint. `forward` passes the signal on afterwards."""

    def __init__(self, message: str, forward=None):
        super().__init__(message)
        self.forward = forward
