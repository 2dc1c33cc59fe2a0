"""tasks/lib/tracking.py opening a SQLite store: a new store shared by runs that start together (issue 26)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, tool_env

# What train does first (start_run): open the store and get or create the experiment. The process imports
# everything, says so, and opens the store when told, so that both of a pair open it at the same moment.
FIRST_RUN = """
import sys
import mlflow
from tasks.lib import tracking
from tasks.lib.config import TrackingParams
settings = TrackingParams(uri=sys.argv[1], artifacts="mlartifacts", experiment="trainflow")
print("ready", flush=True)
sys.stdin.readline()
print(tracking.experiment_id(tracking.client(settings), settings), flush=True)
"""


@pytest.mark.slow  # a few pairs of processes that import MLflow
def test_two_first_runs_on_a_new_shared_sqlite_store_both_succeed(tmp_path: Path) -> None:
    """MLflow creates and migrates a new SQLite store on first use: unlocked, two processes doing it at once failed
    one ("table ... already exists", "Online migration expected to match one row")."""
    env = tool_env(PYTHONPATH=str(REPO))
    env.pop("MLFLOW_TRACKING_URI", None)
    for pair in range(3):
        shared = tmp_path / f"shared-{pair}"  # a folder outside any clone, no database yet
        shared.mkdir()
        uri = f"sqlite:///{shared / 'mlflow.db'}"
        runs = [
            subprocess.Popen(
                [sys.executable, "-c", FIRST_RUN, uri],
                cwd=tmp_path,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        for run in runs:
            assert run.stdout is not None and run.stdout.readline().strip() == "ready"
        for run in runs:  # go, both at once
            assert run.stdin is not None
            run.stdin.write("go\n")
            run.stdin.flush()
        outcomes = [run.communicate(timeout=300) for run in runs]
        for run, (_, err) in zip(runs, outcomes, strict=True):
            assert run.returncode == 0, f"pair {pair}: {err.strip().splitlines()[-1:]}"
        assert outcomes[0][0].strip() == outcomes[1][0].strip() != ""  # one experiment, the same for both
