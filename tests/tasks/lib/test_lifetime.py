"""tasks/lib/lifetime.py: a child started with a parent-death signal dies when its parent is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import REPO, committed_params_file, tool_env

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

# A parent that starts a child running ``code`` and prints the child's pid, then waits to be killed. Started "by
# DVC", the child gets DVC_STAGE, directly or through a shell that stays its parent (dash, DVC's shell where SHELL is
# unset: it does not exec the command)
PARENT = """
import os, subprocess, sys, time
from tasks.lib.lifetime import dies_with_this_process
code, death_signal, how = sys.argv[1:]
command, env = [sys.executable, "-c", code], dict(os.environ)
if how != "by hand":
    env["DVC_STAGE"] = "x"
if how == "through a shell":
    command = ["/bin/sh", "-c", '"$0" -c "$1"; exit $?', sys.executable, code]
child = subprocess.Popen(command, env=env, preexec_fn=dies_with_this_process() if death_signal == "1" else None)
print(child.pid, flush=True)
time.sleep(120)
"""


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_parent_of(code: str, tmp_path: Path, *, death_signal: bool, how: str = "by hand") -> int:
    """Start :data:`PARENT` with a child running ``code``; SIGKILL the parent once the child is ready; its pid."""
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, code, "1" if death_signal else "0", how],
        cwd=tmp_path,
        env=tool_env(PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    ready = tmp_path / "ready"
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.exists(), "the child did not start"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    return child


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not running(pid)


SLEEPER = "import pathlib, time; pathlib.Path('ready').touch(); time.sleep(120)"


def test_a_child_started_with_dies_with_this_process_dies_with_its_killed_parent(tmp_path: Path) -> None:
    child = kill_parent_of(SLEEPER, tmp_path, death_signal=True)
    assert gone_within(child, 5)


def test_without_it_the_child_outlives_its_killed_parent(tmp_path: Path) -> None:  # what the signal is for
    child = kill_parent_of(SLEEPER, tmp_path, death_signal=False)
    try:
        assert not gone_within(child, 1)
    finally:
        os.kill(child, signal.SIGKILL)


# A stage as DVC runs it: tasks.lib.cli.main, whose run() writes its pid, touches `ready` and never returns.
STAGE = (
    "import os, pathlib, sys, time; from tasks.lib.cli import main; "
    "main('x', lambda params: (pathlib.Path('pid').write_text(str(os.getpid())), pathlib.Path('ready').touch(), "
    "time.sleep(120)), ['--params', sys.argv[1]])"
)


@pytest.mark.parametrize("how", ["directly", "through a shell", "by hand"])
def test_a_stage_run_by_dvc_dies_with_it_and_only_then(tmp_path: Path, how: str) -> None:
    code = f"import sys; sys.argv[1:] = [{str(committed_params_file())!r}]; exec({STAGE!r})"
    child = kill_parent_of(code, tmp_path, death_signal=False, how=how)
    stage = int((tmp_path / "pid").read_text())
    assert (stage == child) is (how != "through a shell")
    try:  # a stage started by hand (nohup) outlives its shell, as before
        assert gone_within(stage, 5) is (how != "by hand")
        assert gone_within(child, 5) is (how != "by hand")
    finally:
        for pid in {stage, child}:
            if running(pid):
                os.kill(pid, signal.SIGKILL)
