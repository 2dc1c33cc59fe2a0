"""tasks/lock.py: one run per workspace; a second one fails at once, naming the holder; a killed holder frees it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.lib.errors import TrainflowError
from tasks.lib.lock import waiting_lock, workspace_lock
from tests.helpers import REPO, committed_params_file, tool_env

HOLD = (
    "import sys, time; from tasks.lib.lock import workspace_lock\nwith workspace_lock(sys.argv[1], 'stage test'):\n"
    "    print('held', flush=True); time.sleep(60)"
)


def test_a_second_holder_fails_naming_the_first(tmp_path: Path) -> None:
    lock = tmp_path / ".trainflow.lock"
    with (
        workspace_lock(lock, "stage train"),
        pytest.raises(TrainflowError, match=r"workspace is busy \(stage train, pid \d+, since "),
        workspace_lock(lock, "stage clean"),
    ):
        pass
    with workspace_lock(lock, "stage clean"):  # released on exit
        pass


def test_a_waiting_lock_waits_for_its_holder_then_gives_up_in_one_line(tmp_path: Path) -> None:
    lock = tmp_path / "mlflow.db.lock"
    with waiting_lock(lock, "opening MLflow store x"):
        started = time.monotonic()
        with (
            pytest.raises(TrainflowError, match=r"mlflow.db.lock: another process held this lock for 0 s \(opening"),
            waiting_lock(lock, "opening MLflow store x", timeout=0.3),
        ):
            pass
        assert time.monotonic() - started >= 0.3  # it waited before giving up
    with waiting_lock(lock, "opening MLflow store x", timeout=0.3):  # released on exit
        pass


def test_a_stage_cli_refuses_a_busy_workspace_and_a_killed_holder_frees_it(tmp_path: Path) -> None:
    params = (committed_params_file()).read_text()
    (tmp_path / "params.yaml").write_text(params)
    env = tool_env(PYTHONPATH=str(REPO))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / ".trainflow.lock")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        busy = subprocess.run(
            [sys.executable, "-m", "tasks.clean"], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
        )
        assert busy.returncode == 1
        assert busy.stderr.strip().splitlines()[-1].startswith("error: clean: .trainflow.lock: the workspace is busy")
        assert not (tmp_path / "data").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
    time.sleep(0.1)
    freed = subprocess.run(
        [sys.executable, "-m", "tasks.clean"], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    assert "busy" not in freed.stderr and "data/raw/manifest.json: not found" in freed.stderr
