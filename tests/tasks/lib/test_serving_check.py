"""tasks/lib/serving_check.py: comparing the served answers with evaluate's, stopping the servers a killed run left
(the server itself: test_tracking.py; a kill -9 during the check: tests/test_crash.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from tasks.lib.errors import TrainflowError
from tasks.lib.lifetime import OWNER_VAR, WORKSPACE_VAR, stop_leftovers
from tasks.lib.serving_check import SERVER_COMMANDS, compare


def probabilities(n: int, seed: int) -> np.ndarray:
    raw = np.random.default_rng(seed).random((n, 3)).astype(np.float32)
    return raw / raw.sum(axis=1, keepdims=True)


def test_compare_ok_within_tolerance() -> None:
    expected = probabilities(8, 2)
    check = compare(expected, expected + 1e-6, tolerance=1e-4)
    assert check["ok"] is True and check["classes_agree"] is True
    assert check["checked"] == 8
    assert 0 < check["max_abs_diff"] < 1e-4


def test_compare_fails_beyond_tolerance() -> None:
    expected = probabilities(8, 3)
    served = expected.copy()
    served[2, 0] += 0.001
    check = compare(expected, served, tolerance=1e-4)
    assert check["ok"] is False and check["classes_agree"] is True
    assert check["max_abs_diff"] == pytest.approx(0.001, rel=1e-3)


def test_compare_fails_when_classes_disagree_within_tolerance() -> None:
    expected = np.array([[0.50001, 0.49999], [0.9, 0.1]], dtype=np.float32)
    served = np.array([[0.49999, 0.50001], [0.9, 0.1]], dtype=np.float32)
    check = compare(expected, served, tolerance=1e-3)
    assert check["classes_agree"] is False and check["ok"] is False


def test_compare_shape_mismatch_is_an_error() -> None:
    with pytest.raises(TrainflowError, match=r"served output shape \(4, 2\) != expected \(4, 3\)"):
        compare(probabilities(4, 4), np.zeros((4, 2), np.float32), tolerance=1e-4)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


def test_stop_leftovers_kills_only_this_workspaces_servers_whose_deploy_is_gone(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()  # a deploy that was killed: its pid runs nothing now
    workspace, other = str(tmp_path / "workspace"), str(tmp_path / "other")

    def start(command: str, workspace: str, owner: int) -> subprocess.Popen[bytes]:
        # the command lines of MLflow's server and of its uvicorn, as arguments of a sleeping python
        args = [sys.executable, "-c", "import time; time.sleep(120)", *command.split()]
        env = {**os.environ, WORKSPACE_VAR: workspace, OWNER_VAR: str(owner)}
        processes.append(subprocess.Popen(args, env=env))
        return processes[-1]

    server = start("-m mlflow models serve -m runs:/x/model -p 5001", workspace, gone.pid)
    uvicorn = start("uvicorn --port 5001 mlflow.pyfunc.scoring_server.app:app", workspace, gone.pid)
    kept = [
        start("-m mlflow models serve -m runs:/y/model", workspace, os.getpid()),  # a check still running
        start("-m mlflow models serve -m runs:/z/model", other, gone.pid),  # another workspace's
        start("-m http.server 5002", workspace, gone.pid),  # not a scoring server
    ]
    assert psutil.wait_procs([psutil.Process(p.pid) for p in processes], timeout=0.5)[0] == []

    assert sorted(stop_leftovers(workspace, SERVER_COMMANDS, "serving check")) == sorted([server.pid, uvicorn.pid])
    assert server.poll() is not None and uvicorn.poll() is not None  # stop_leftovers waited (and here reaped)
    assert [p.poll() for p in kept] == [None, None, None]
    assert stop_leftovers(workspace, SERVER_COMMANDS, "serving check") == []
