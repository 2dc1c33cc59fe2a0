"""The one exception type for bad input: its message is the single line a user sees, never with a credential."""

import re

# user:password@ in any URI (MLFLOW_TRACKING_URI, remote URLs), and the values of secret-looking query parameters
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;][^=&\s]*(?:token|password|passwd|secret|key|signature)[^=&\s]*=)[^&\s]+", re.I
)


def redact(text: str) -> str:
    """``text`` with the credentials of every URI in it replaced by ``***`` (``https://***@host/…``)."""
    return _SECRET_QUERY.sub(r"\g<key>***", _USERINFO.sub(r"\g<scheme>***@", text))


class TrainflowError(Exception):
    """Bad data, bad params or a failed check; the message names the file, key or value (credentials redacted)."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


class TransientError(TrainflowError):
    """A failure that may pass on a retry (a download, a remote service)."""


# The exit status of a stage that failed with a TransientError (sysexits' EX_TEMPFAIL): the flow retries only these.
EXIT_TRANSIENT = 75
