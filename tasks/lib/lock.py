"""One pipeline run at a time per workspace: an exclusive, advisory `flock` on a lock file in the repo root; and a
waiting lock for one-time set-ups several processes may race on (a new SQLite tracking store).

The kernel drops the lock when its holder exits, killed or not, so a crash never leaves the workspace locked.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.lib.errors import TrainflowError


@contextmanager
def workspace_lock(path: Path, owner: str) -> Iterator[None]:
    """Hold the workspace lock for the body, or fail at once naming who holds it.

    Args:
        path: the lock file (``paths.lock``).
        owner: what is running, for the message another run shows (e.g. ``stage train``).

    Raises:
        TrainflowError: when another process holds the lock.
    """
    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 300, 0).decode(errors="replace").strip() or "another process"
            raise TrainflowError(
                f"{path}: the workspace is busy ({holder}); wait for that run to finish, then start again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{owner}, pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextmanager
def waiting_lock(path: Path, what: str, timeout: float = 300.0) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` for the body, waiting up to ``timeout`` seconds for another holder.

    Args:
        path: the lock file (created when missing, left in place).
        what: what the lock guards, for the message when the wait is too long.
        timeout: seconds to wait.

    Raises:
        TrainflowError: another process held the lock for ``timeout`` seconds.
    """
    fd = os.open(Path(path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TrainflowError(
                        f"{path}: another process held this lock for {timeout:.0f} s ({what}); "
                        "if none is running, start again"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
