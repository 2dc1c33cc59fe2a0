"""The project's own tool config: analytics off for DVC and for a Prefect server started in the project."""

from __future__ import annotations

import os
import subprocess
import sys

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
