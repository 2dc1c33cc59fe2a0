"""No process outlives its command: the pipeline's children get a parent-death signal (Linux ``PR_SET_PDEATHSIG``).

The kernel sends the signal when the thread that started the process exits, killed (SIGKILL included) or not, so a
`kill -9` of `dvc repro` or of a flow takes down the stage it runs and any server that stage started. The setting is
per process and cleared on fork: each link of the chain sets its own (MLflow sets it for the uvicorn it starts). Off
Linux these are no-ops; the next run's sweep (:mod:`tasks.lib.serving_check`) is the fallback there.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


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
