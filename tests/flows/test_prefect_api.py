"""flows/prefect_api.py: what every flow command sets up first, here the sweep of Prefect servers a killed flow left."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from flows.prefect_api import PREFECT_SERVER_COMMANDS
from tests.helpers import TINY, make_workspace, sh, tool_env, wait_for


def prefect_servers(pid: int) -> list[psutil.Process]:
    """Prefect's temporary API servers among the descendants of ``pid``."""
    return [
        child
        for child in psutil.Process(pid).children(recursive=True)
        if any(name in " ".join(child.cmdline()) for name in PREFECT_SERVER_COMMANDS)
    ]


@pytest.mark.slow  # a Prefect server starts
def test_the_next_flow_command_stops_the_prefect_server_a_killed_flow_left(tmp_path: Path) -> None:
    """Mutation caught: without the sweep in one_line_errors, Prefect's server (no parent-death signal) lives on."""
    workspace = make_workspace(tmp_path / "workspace", TINY)
    env = tool_env(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_API_URL="")
    flow = subprocess.Popen(
        [sys.executable, "-m", "flows.training"],
        cwd=workspace,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = None
    try:
        (server,) = wait_for("Prefect's temporary server", lambda: prefect_servers(flow.pid), timeout=180, every=0.5)
        flow.send_signal(signal.SIGKILL)  # as `kill -9`: no finally, no atexit
        flow.wait()
        assert server.is_running()  # Prefect stops it only on a clean exit: left behind, parent PID 1
        done = sh(workspace, sys.executable, "-m", "flows.training", "--set", "no.such=1", check=False, **env)
        assert done.returncode == 1 and "no.such" in done.stderr  # the next command, failing fast on bad input
        assert wait_for("the left server to stop", lambda: not server.is_running(), timeout=10, every=0.2)
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            flow.kill()
            if server is not None:
                server.kill()
