"""The one exception type for bad input: its message is the single line a user sees."""


class TrainflowError(Exception):
    """Bad data, bad params or a failed check; the message names the file, key or value."""


class TransientError(TrainflowError):
    """A failure that may pass on a retry (a download, a remote service)."""
