"""tasks/lib/errors.py: one redaction, by pattern (credentials inside URLs) and by value (the environment's secrets),
applied to log lines and tracebacks of every entry point."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest

from tasks.lib.errors import environment_secrets, redact, redact_logs, redact_tree
from tests.helpers import REPO, tool_env


def test_the_environments_credentials_are_redacted_wherever_they_appear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-0123456789")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://alice:pw-in-uri-42@mlflow.example/")
    monkeypatch.setenv("DATABASE_URL", "postgresql://bob@db.example/x?sslpassword=pw-in-query-7")
    monkeypatch.setenv("SHORT_KEY", "true")  # too short to replace by value
    assert {"tok-0123456789", "pw-in-uri-42", "pw-in-query-7"} <= environment_secrets()
    text = "server said: bad token tok-0123456789 for pw-in-uri-42 (pw-in-query-7); true"
    assert redact(text) == "server said: bad token *** for *** (***); true"


def test_a_tree_is_redacted_in_every_string_and_keeps_its_shape() -> None:
    tree = {"a": ["http://u:p4ss@h/x", 3, ("sqlite:///m.db?password=p4ss",)], "b": {"c": None, "d": b"bytes"}}
    assert redact_tree(tree) == {
        "a": ["http://***@h/x", 3, ("sqlite:///m.db?password=***",)],
        "b": {"c": None, "d": b"bytes"},
    }


def test_log_records_and_their_tracebacks_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    factory = logging.getLogRecordFactory()
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    logger = logging.getLogger("trainflow.test.redaction")
    handler = Keep()
    logger.addHandler(handler)
    try:
        redact_logs()
        redact_logs()  # twice: still one layer
        logger.warning("store %s is down", "http://alice:hunter22@h")
        try:
            raise RuntimeError("cannot open sqlite:///o.db?password=hunter33")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
        logging.setLogRecordFactory(factory)
    text = "\n".join(records)
    assert "store http://***@h is down" in text and "password=***" in text and "Traceback" in text
    assert "hunter22" not in text and "hunter33" not in text


def test_every_entry_point_redacts_its_log_lines_and_an_uncaught_traceback() -> None:
    code = textwrap.dedent(
        """
        import logging
        from tasks.lib.quiet import quiet_libraries
        quiet_libraries()  # what every stage, flow and trial process calls first
        logging.basicConfig(level=logging.INFO)
        logging.getLogger("stage").info("tracking store http://alice:hunter44@h")
        raise RuntimeError("MLflow store postgresql://bob:hunter55@db/x is unreachable")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=tool_env(), capture_output=True, text=True, check=False
    )
    assert done.returncode == 1 and "RuntimeError: MLflow store postgresql://***@db/x" in done.stderr, done.stderr
    assert "http://***@h" in done.stderr
    assert "hunter44" not in done.stdout + done.stderr and "hunter55" not in done.stdout + done.stderr


def test_a_variable_unset_while_the_environment_is_read_is_skipped() -> None:
    """MLflow's telemetry thread unsets _MLFLOW_TELEMETRY_SESSION_ID while train redacts its params: os.environ then
    lists a name it no longer has. Mutation: iterating ``environ.items()`` again (KeyError)."""
    from collections.abc import Iterator, Mapping

    class Vanishing(Mapping[str, str]):
        def __iter__(self) -> Iterator[str]:
            return iter(["_GONE", "MLFLOW_TRACKING_TOKEN"])

        def __len__(self) -> int:
            return 2

        def __getitem__(self, name: str) -> str:
            if name == "_GONE":
                raise KeyError(name)
            return "tok-0123456789"

    assert environment_secrets(Vanishing()) == {"tok-0123456789"}
