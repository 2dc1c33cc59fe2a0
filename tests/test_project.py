"""The project's own tool config: analytics off for DVC and for a Prefect server started in the project."""

from __future__ import annotations

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
