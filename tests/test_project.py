"""The project's own tool config: analytics off for DVC and for a Prefect server started in the project."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO, sh


def test_dvc_analytics_are_off_in_the_repo_config() -> None:
    assert sh(REPO, "dvc", "config", "core.analytics").stdout.strip() == "false"


def test_prefect_reads_analytics_off_from_pyproject_in_the_project_only() -> None:
    code = "from prefect.settings import get_current_settings as s; print(s().server.analytics_enabled)"

    def enabled(cwd: object) -> str:
        done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True)
        return done.stdout.strip()

    assert enabled(REPO) == "False"
    assert enabled(REPO / "tests") == "True"  # negative control: Prefect's default where pyproject.toml is not read


def test_tests_keep_the_state_of_dvc_and_prefect_in_their_session_folder() -> None:
    """Mutation: without DVC_SITE_CACHE_DIR in tests/conftest.py, every workspace a test opens leaves a folder under
    /var/tmp/dvc/repo (DVC's site cache), outside the test session's folder."""
    home = os.environ["PREFECT_HOME"]
    code = "from dvc.dirs import site_cache_dir; print(site_cache_dir())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().startswith(home) and "trainflow-tests-" in home


def test_stages_and_flows_turn_mlflow_telemetry_and_gx_analytics_off() -> None:
    """What every stage, flow and trial process calls first (quiet_libraries) turns MLflow 3's telemetry off, for the
    process and the servers it starts. Negative control: without it, MLflow would send (outside CI and pytest, whose
    variables are removed here). Mutation: the MLFLOW_DISABLE_TELEMETRY line taken out of quiet_libraries fails."""
    code = (
        "import sys\n"
        "if sys.argv[1] == 'stage':\n"
        "    from tasks.lib.quiet import quiet_libraries; quiet_libraries()\n"
        "import os; from mlflow.telemetry.utils import is_telemetry_disabled\n"
        "print(is_telemetry_disabled(), os.environ.get('GX_ANALYTICS_ENABLED'))"
    )
    ci = {"CI", "PYTEST_CURRENT_TEST", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "PYTEST_XDIST_WORKER"}
    ci |= {"GX_ANALYTICS_ENABLED"}
    env = {key: value for key, value in os.environ.items() if key not in ci}

    def disabled(mode: str) -> str:
        done = subprocess.run([sys.executable, "-c", code, mode], cwd=REPO, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip()

    assert disabled("stage") == "True false"  # MLflow's telemetry and GX's analytics off
    assert disabled("bare") == "False None"


def test_a_flow_waits_180_s_for_its_temporary_prefect_server_in_the_project(tmp_path: Path) -> None:
    """pyproject.toml sets Prefect's start-up timeout, read when Prefect is imported (an environment variable set by
    the flow after that import was never seen: the flows waited Prefect's 20 s default, and failed on a busy machine).
    Negative control: outside the project, the default."""
    code = "import flows.training; from prefect.settings import get_current_settings as s\n"
    code += "print(s().server.ephemeral.startup_timeout_seconds)"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"}
    env["PYTHONPATH"] = str(REPO)

    def timeout(cwd: object) -> str:
        done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip()

    assert timeout(REPO) == "180"
    assert timeout(tmp_path) == "20"
