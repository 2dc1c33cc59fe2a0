"""The per-shard work of the data stages, mapped by whoever drives the stage.

A stage's ``run(params, mapper)`` cuts its work into independent calls of a module-level function (a shard in,
a shard written and a small result out) and hands them to ``mapper``. ``python -m tasks <stage>`` (DVC) maps them
on a thread pool of this machine; the Prefect flow maps them as tasks on its task runner (threads or Dask,
``flow.task_runner``). Each call is deterministic and writes only its own files, so every mapper produces the same
bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

R = TypeVar("R")


class Mapper(Protocol):
    def __call__(self, name: str, fn: Callable[..., R], calls: Sequence[tuple[Any, ...]]) -> list[R]:
        """``[fn(*args) for args in calls]``, in order, possibly concurrently; ``name`` labels the calls."""
        ...


def local_map(name: str, fn: Callable[..., R], calls: Sequence[tuple[Any, ...]]) -> list[R]:
    """Map on a thread pool of one thread per core (numpy releases the GIL for the heavy work)."""
    workers = min(len(calls), os.cpu_count() or 1)
    if workers <= 1:
        return [fn(*args) for args in calls]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        return list(pool.map(lambda args: fn(*args), calls))
