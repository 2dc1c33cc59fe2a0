"""Library noise kept out of a run's output: a CPU run prints only what the user needs.

TensorFlow's native code logs before its log is set up (absl: oneDNN notes, CPU feature lists, CUDA probes that fail
on a machine without a GPU), which ``TF_CPP_MIN_LOG_LEVEL`` does not reach: :func:`import_keras` filters those lines
out of the process's stderr while Keras, TensorFlow and the device probe load. Any other line still shows.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tasks.lib.errors import redact_logs

NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|I\d{4} [\d:.]+ +\d+ \S+\] "  # absl INFO lines
    r"|To enable the following instructions"
    r"|.*(failed call to cuInit|Could not find cuda drivers|Unable to register cu\w+ factory))"
)


# MLflow warns, when it logs the served model, that it reads no input schema from predict's type hints (the
# signature comes from the input example); its log_model resets warning filters (once per call), so these are dropped
# where warnings are shown.
MLFLOW_TYPE_HINTS = re.compile(r".*type hint", re.IGNORECASE)


def _drop_mlflow_type_hint_warnings(show: Any) -> Any:
    if getattr(show, "trainflow_quiet", False):
        return show

    def showwarning(message: Any, category: Any, filename: str, *args: Any, **kwargs: Any) -> None:
        if f"{os.sep}mlflow{os.sep}" in filename and MLFLOW_TYPE_HINTS.match(str(message)):
            return
        show(message, category, filename, *args, **kwargs)

    showwarning.trainflow_quiet = True  # type: ignore[attr-defined]
    return showwarning


def _not_an_mlflow_type_hint_warning(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not (f"{os.sep}mlflow{os.sep}" in message and re.search(r"type hint", message, re.IGNORECASE))


def quiet_libraries() -> None:
    """Set before the libraries load: TensorFlow's C++ log level, no GX analytics or MLflow telemetry, no MLflow
    progress bars or repeated warnings, and the libraries' INFO chatter (HTTP clients, migrations, MLflow,
    TensorFlow). A value the user set in the environment is kept. Every log line and traceback of the process is
    redacted from here on."""
    redact_logs()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # MLflow 3 sends usage data unless told not to
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow sets its logger's level when imported
    # MLflow prints "View run … at: <tracking URI>" after each run against a server: with its credentials, if any
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow(\.|$)")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"mlflow(\.|$)")
    warnings.showwarning = _drop_mlflow_type_hint_warnings(warnings.showwarning)
    # ... and where a library routes warnings to logging (logging.captureWarnings) after this
    logging.getLogger("py.warnings").addFilter(_not_an_mlflow_type_hint_warning)
    for name in ("httpx", "alembic", "great_expectations", "mlflow", "tensorflow"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextmanager
def native_stderr_filtered() -> Iterator[None]:
    """File descriptor 2 goes to a temporary file for the body; afterwards its lines, less :data:`NOISE`, are
    written to stderr (all of them, also when the body raised)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(True) if not NOISE.match(line)]
            sys.stderr.write("".join(kept))


def import_keras() -> Any:
    """``import keras`` (and its backend) with TensorFlow's start-up lines filtered; the GPU probe runs here too."""
    if "keras" in sys.modules:
        return sys.modules["keras"]
    quiet_libraries()
    with native_stderr_filtered():
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # the CUDA probe logs once, here
    return keras
