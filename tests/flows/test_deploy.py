"""End to end: a real `prefect server start`, the served deployment training/nightly, a run triggered from the CLI."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from tasks.lib.config import load_params
from tests.conftest import copy_run
from tests.helpers import STAGES, TINY, free_port, make_workspace, ran, sh, tool_env, wait_for

pytestmark = pytest.mark.slow

PREFECT = str(Path(sys.executable).parent / "prefect")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (background jobs ignore SIGINT), then SIGKILL if it does not exit."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A real Prefect server on a free loopback port, with its own PREFECT_HOME; stopped afterwards."""
    port = free_port()
    env = tool_env(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_RUNNER_POLL_FREQUENCY="2",
    )
    with (tmp_path / "server.log").open("wb") as log:
        server = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            "the Prefect server",
            lambda: urllib.request.urlopen(f"{env['PREFECT_API_URL']}/health", timeout=2),
            timeout=120,
        )
        yield env
    finally:
        stop(server)


def test_nightly_deployment_is_scheduled_and_a_run_after_dvc_repro_runs_no_stage(
    tmp_path: Path, prefect_server: dict[str, str], tiny_run: Path
) -> None:
    workspace = copy_run(tiny_run, tmp_path / "workspace")  # after `dvc repro` (the session's run, tests/conftest.py)
    uri = f"sqlite:///{workspace / 'mlflow.db'}"
    registry = MlflowClient(tracking_uri=uri, registry_uri=uri)  # whatever registry URI an earlier test set
    name = load_params(workspace / "params.yaml").deploy.model_name
    assert len(registry.search_model_versions(f"name='{name}'")) == 1
    schedule = load_params(workspace / "params.yaml").schedule
    with (tmp_path / "serve.log").open("wb") as log:
        serve = subprocess.Popen(
            [sys.executable, "-m", "flows.deploy"],
            cwd=workspace,
            env=prefect_server,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        with (
            temporary_settings({PREFECT_API_URL: prefect_server["PREFECT_API_URL"]}),
            get_client(sync_client=True) as client,
        ):
            deployment = wait_for(
                "the deployment", lambda: client.read_deployment_by_name("training/nightly"), timeout=120
            )
            (entry,) = deployment.schedules
            assert entry.active
            assert entry.schedule.cron == schedule.cron
            assert entry.schedule.timezone == schedule.timezone

            triggered = sh(
                workspace,
                PREFECT,
                "deployment",
                "run",
                "training/nightly",
                PREFECT_API_URL=prefect_server["PREFECT_API_URL"],
                PREFECT_HOME=prefect_server["PREFECT_HOME"],
            )
            run_id = UUID(re.search(r"flow-run/([0-9a-f-]{36})", triggered.stdout).group(1))
            final = wait_for(
                "the triggered run to finish",
                lambda: (run := client.read_flow_run(run_id)).state.is_final() and run,
                timeout=300,
                every=2,
            )
        served = (tmp_path / "serve.log").read_text()
        assert final.state.name == "Completed", served[-3000:]
        assert "HTTP Request:" not in served  # no httpx line for every poll
        # DVC decided: every stage was up to date, nothing trained, nothing new in the registry
        assert "Running stage" not in served and served.count("was up to date (DVC skipped it)") == len(STAGES)
        assert len(registry.search_model_versions(f"name='{name}'")) == 1
        assert json.loads((workspace / "reports/deploy.json").read_text())["serving"]["ok"] is True
        assert ran(sh(workspace, "dvc", "repro").stdout) == []
    finally:
        stop(serve)


def test_deploy_without_a_server_says_how_to_start_one(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path, TINY)
    done = sh(workspace, sys.executable, "-m", "flows.deploy", check=False, PREFECT_API_URL="")
    assert done.returncode == 1
    assert "PREFECT_API_URL is not set" in done.stderr
