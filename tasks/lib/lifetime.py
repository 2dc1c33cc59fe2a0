"""No process outlives its command: the pipeline's children get a parent-death signal (Linux ``PR_SET_PDEATHSIG``).

The kernel sends the signal when the thread that started the process exits, killed (SIGKILL included) or not, so a
`kill -9` of `dvc repro` or of a flow takes down the stage it runs and any server that stage started. The setting is
per process and cleared on fork: each link of the chain sets its own (MLflow sets it for the uvicorn it starts), and a
stage whose parent is DVC's shell rather than DVC watches DVC itself (:func:`die_with_dvc`). Off Linux these are
no-ops. A server a library starts without one (Prefect's temporary API server) or that escaped it carries its
workspace and its starter in its environment (:func:`owned_by_this_process`), so the next run of that workspace stops
it (:func:`stop_leftovers`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable

import psutil

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# In a server's environment (inherited by its children): the workspace it serves, and the process that started it
WORKSPACE_VAR = "TRAINFLOW_WORKSPACE"
OWNER_VAR = "TRAINFLOW_OWNER_PID"


def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, looked up in this process (never in a forked child, where loading a library may deadlock)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(how: signal.Signals = signal.SIGKILL) -> bool:
    """Have the kernel send ``how`` to this process when its parent exits; False where the platform cannot."""
    prctl = _prctl()
    return prctl is not None and prctl(_PR_SET_PDEATHSIG, int(how)) == 0


def die_with_dvc(how: signal.Signals = signal.SIGKILL) -> bool:
    """For a stage that DVC runs (``DVC_STAGE`` set): get ``how`` when the ``dvc`` process running it exits.

    DVC starts a stage through ``$SHELL -c``: bash replaces itself with the command, so DVC is the parent and the
    parent-death signal covers it; dash (``/bin/sh`` on Debian, used where ``SHELL`` is unset, as under cron or CI)
    stays in between. Then a daemon thread waits on a pidfd of DVC's process, the nearest ancestor that DVC did not
    start (no ``DVC_STAGE`` in its environment), and sends ``how`` to this process when it exits. False where the
    platform can do neither.
    """
    if not die_with_parent(how):
        return False
    try:
        runner = psutil.Process().parent()
        while runner is not None and "DVC_STAGE" in runner.environ():
            runner = runner.parent()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        runner = None
    if runner is None or runner.pid == os.getppid():
        return True  # DVC is the parent (or cannot be told apart from it): the signal is set
    threading.Thread(target=_signal_self_when_gone, args=(runner, how), name="die-with-dvc", daemon=True).start()
    return True


def _signal_self_when_gone(process: psutil.Process, how: signal.Signals) -> None:
    """Block until ``process`` exits, then send ``how`` to this process."""
    try:
        fd = os.pidfd_open(process.pid)
    except OSError:  # no pidfd (Linux < 5.3), or gone already
        while process.is_running():
            time.sleep(1.0)
    else:
        if process.is_running():  # psutil compares start times: the pid still names the same process
            select.select([fd], [], [])
        os.close(fd)
    os.kill(os.getpid(), how)


def dies_with_this_process(how: signal.Signals = signal.SIGKILL) -> Callable[[], None] | None:
    """A ``preexec_fn`` for :class:`subprocess.Popen`: the child gets ``how`` when the calling thread exits.

    A parent killed between the fork and the ``prctl`` would send nothing, so the child checks that its parent is
    still the caller and, if not, ends itself at once. Call :class:`~subprocess.Popen` from the thread that waits for
    the child (the kernel watches that thread, not the whole process).
    """
    prctl, parent = _prctl(), os.getpid()
    if prctl is None:
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(how))
        if os.getppid() != parent:
            os.kill(os.getpid(), how)

    return preexec


def owned_by_this_process(workspace: str) -> dict[str, str]:
    """Environment variables marking a process as started by this process for ``workspace`` (see :func:`leftovers`)."""
    return {WORKSPACE_VAR: workspace, OWNER_VAR: str(os.getpid())}


def _orphaned(process: psutil.Process, workspace: str) -> bool:
    """Whether ``process`` was started for ``workspace`` by a process that no longer runs."""
    try:
        env = process.environ()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False  # gone already, or another user's
    owner = env.get(OWNER_VAR, "")
    if env.get(WORKSPACE_VAR) != workspace or not owner.isdigit():
        return False
    try:  # a pid reused by a younger process is not the owner
        return psutil.Process(int(owner)).create_time() > process.info["create_time"]
    except psutil.NoSuchProcess:
        return True


def leftovers(workspace: str, commands: Iterable[str]) -> list[psutil.Process]:
    """Processes whose command line holds one of ``commands``, started for ``workspace`` by a process now gone.

    Only processes marked by :func:`owned_by_this_process` count: another user's, another workspace's and a running
    command's servers are never touched.
    """
    commands = tuple(commands)
    return [
        process
        for process in psutil.process_iter(["cmdline", "create_time"])
        if any(name in " ".join(process.info["cmdline"] or []) for name in commands) and _orphaned(process, workspace)
    ]


def stop_leftovers(workspace: str, commands: Iterable[str], what: str) -> list[int]:
    """Kill the :func:`leftovers` a killed run of ``workspace`` left (``what`` names them in the log); their pids."""
    found = leftovers(workspace, commands)
    for process in found:
        logger.warning("%s: stopping pid %d, left by a killed run: %s", what, process.pid, process.info["cmdline"])
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(found, timeout=10)
    return [process.pid for process in found]
