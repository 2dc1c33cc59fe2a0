"""The one exception type for bad input: its message is the single line a user sees, never with a credential.

:func:`redact` is the one redaction of the project: every MLflow param and tag, log line, error line, report and
Prefect artifact goes through it.
"""

import logging
import os
import re
import sys
import traceback
from collections.abc import Mapping
from typing import Any

# user:password@ in any URI (MLFLOW_TRACKING_URI, remote URLs), and the values of secret-looking query parameters
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;][^=&\s]*(?:token|password|passwd|secret|key|signature)[^=&\s]*=)[^&\s]+", re.I
)
_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s@:]*:(?P<password>[^/\s@]+)@")
# a name that looks like a secret's (a params key, an environment variable): its value is never shown
SECRET_NAME = re.compile(r"(token|password|passwd|secret|credential|(^|_)key)$", re.IGNORECASE)
# shorter values of secret-named variables ("true", "1") would blank out ordinary words: the patterns above remain
MIN_SECRET_CHARS = 6
MASK = "***"


def environment_secrets(environ: Mapping[str, str] | None = None) -> set[str]:
    """The credentials the environment holds: the values of secret-named variables (``MLFLOW_TRACKING_PASSWORD``,
    ``MLFLOW_TRACKING_TOKEN``, ``AWS_SECRET_ACCESS_KEY``) and the passwords and secret query values of its URLs
    (``MLFLOW_TRACKING_URI=https://alice:pw@host``)."""
    found = set()
    source = os.environ if environ is None else environ
    for name in list(source):  # by name, read once: MLflow's telemetry thread sets and unsets a variable meanwhile
        value = source.get(name)
        if value is None:
            continue
        if SECRET_NAME.search(name):
            found.add(value)
        found.update(match.group("password") for match in _PASSWORD.finditer(value))
        for match in _SECRET_QUERY.finditer(value):
            found.add(value[match.end("key") : match.end()])
    return {secret for secret in found if len(secret) >= MIN_SECRET_CHARS}


def redact(text: str) -> str:
    """``text`` with the credentials of every URI in it replaced by ``***`` (``https://***@host/…``), and every
    credential of the environment (:func:`environment_secrets`) wherever it appears."""
    text = _SECRET_QUERY.sub(rf"\g<key>{MASK}", _USERINFO.sub(rf"\g<scheme>{MASK}@", text))
    for secret in sorted(environment_secrets(), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def redact_tree(value: Any) -> Any:
    """Every string in a JSON-like tree (mappings, lists, tuples) redacted; other values as they are."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {key: redact_tree(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_tree(item) for item in value)
    return value


def redact_logs() -> None:
    """From now on in this process, every log record (its message and its traceback, whichever handler writes it:
    the console, Prefect's API) and an uncaught exception's traceback are redacted."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "trainflow_redacts", False):
        return

    def record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        made = factory(*args, **kwargs)
        try:
            message = made.getMessage()
        except Exception:  # a malformed record: logging reports it itself when it is written
            return made
        if (clean := redact(message)) != message:
            made.msg, made.args = clean, ()
        if made.exc_info and made.exc_info[0] is not None:
            made.exc_text = redact("".join(traceback.format_exception(*made.exc_info)).rstrip("\n"))
        return made

    record.trainflow_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(record)
    hook = sys.excepthook

    def excepthook(kind: type[BaseException], error: BaseException, tb: Any) -> None:
        sys.stderr.write(redact("".join(traceback.format_exception(kind, error, tb))))

    if not getattr(hook, "trainflow_redacts", False):
        excepthook.trainflow_redacts = True  # type: ignore[attr-defined]
        sys.excepthook = excepthook


class TrainflowError(Exception):
    """Bad data, bad params or a failed check; the message names the file, key or value (credentials redacted)."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


class TransientError(TrainflowError):
    """A failure that may pass on a retry (a download, a remote service)."""


# The exit status of a stage that failed with a TransientError (sysexits' EX_TEMPFAIL): the flow retries only these.
EXIT_TRANSIENT = 75
