"""What every flow command (`python -m flows.training`, `flows.tune`, `flows.deploy`) sets up before Prefect starts,
and the one line it prints when a run cannot start or fails on bad input."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.lib.errors import TrainflowError, redact
from tasks.lib.lifetime import owned_by_this_process, stop_leftovers
from tasks.lib.quiet import quiet_libraries

# Prefect's own setting: how long a command waits for its temporary API server (no PREFECT_API_URL). The project sets
# it in pyproject.toml ([tool.prefect.server.ephemeral], read when Prefect is imported); the environment's value wins.
STARTUP_TIMEOUT = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
# Prefect's temporary API server: `python -m uvicorn ... prefect.server.api.server:create_app`, started without a
# parent-death signal; it inherits this process's environment, so the next flow command of the workspace finds it
PREFECT_SERVER_COMMANDS = ("prefect.server.api.server:create_app",)


@contextmanager
def one_line_errors(what: str) -> Iterator[None]:
    """Set up logging and Prefect's start-up settings; bad input or a server that cannot start → one line, exit 1.

    Args:
        what: the command, for the message (``training flow``).
    """
    quiet_libraries()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # No telemetry from the temporary API server: pyproject.toml's [tool.prefect.server] (its heartbeat also raced the
    # server's own start-up for the SQLite database, "database is locked" in the log)
    workspace = str(Path.cwd().resolve())
    stop_leftovers(workspace, PREFECT_SERVER_COMMANDS, "Prefect's temporary API server")  # a killed flow's
    os.environ.update(owned_by_this_process(workspace))
    try:
        yield
    except TrainflowError as exc:
        print(f"error: {what}: {exc}", file=sys.stderr)
        sys.exit(1)
    except RuntimeError as exc:
        if "ephemeral Prefect API server" not in str(exc):
            raise
        from prefect.settings import get_current_settings

        seconds = get_current_settings().server.ephemeral.startup_timeout_seconds
        print(
            f"error: {what}: Prefect's temporary API server did not start within {seconds} s on this machine; "
            f"set {STARTUP_TIMEOUT} higher, or start `prefect server start` and set PREFECT_API_URL "
            f"({redact(str(exc).splitlines()[0])[:200]})",
            file=sys.stderr,
        )
        sys.exit(1)
