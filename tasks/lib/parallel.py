"""Where a data stage's per-shard work runs: local worker processes, or a Dask cluster when one is configured.

A stage's ``run(params)`` cuts its work into independent calls of a module-level function (a shard in, a shard written
and a small result out) and maps them with :func:`mapper`, whoever started the stage (`dvc repro` or the Prefect flow,
which runs it through DVC): so both drivers scale out alike. Each call is deterministic and writes only its own files,
so every mapper produces the same bytes. Paths in the calls are absolute: a Dask worker runs in a folder of its own.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from typing import Any, Protocol, TypeVar

from tasks.lib.config import ParallelParams
from tasks.lib.errors import TransientError

R = TypeVar("R")
log = logging.getLogger(__name__)


class Mapper(Protocol):
    def __call__(self, name: str, fn: Callable[..., R], calls: Sequence[tuple[Any, ...]]) -> list[R]:
        """``[fn(*args) for args in calls]``, in order, possibly in other processes; ``name`` labels the calls."""
        ...


def mapper(params: ParallelParams) -> Mapper:
    """The mapper params choose: a Dask scheduler (``parallel.dask_address``, else $DASK_SCHEDULER_ADDRESS), else
    ``parallel.workers`` local processes (null: one per core; 1: in this process)."""
    address = params.dask_address or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        return partial(dask_map, address)
    return partial(process_map, params.workers or os.cpu_count() or 1)


def importable(fn: Callable[..., R]) -> Callable[..., R]:
    """``fn`` by its module's import name: under `python -m tasks.clean` a stage's functions live in ``__main__``,
    which another process (a pool worker, a Dask worker) cannot import by that name."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if fn.__module__ == "__main__" and spec is not None:
        return getattr(importlib.import_module(spec.name), fn.__name__)
    return fn


def process_map(workers: int, name: str, fn: Callable[..., R], calls: Sequence[tuple[Any, ...]]) -> list[R]:
    """Map on up to ``workers`` local processes (one call or one worker: in this process)."""
    workers = min(len(calls), workers)
    if workers <= 1:
        return [fn(*args) for args in calls]
    # forkserver: fresh workers that inherit no threads or locks of this process; they end when it ends
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(importable(fn), *zip(*calls, strict=True)))


def dask_map(address: str, name: str, fn: Callable[..., R], calls: Sequence[tuple[Any, ...]]) -> list[R]:
    """Map on the Dask cluster whose scheduler is at ``address``: one task per call, ``<name>-<i>-<token>``.

    Raises:
        TransientError: the scheduler cannot be reached (a retry may pass).
    """
    from distributed import Client

    try:
        client = Client(address, set_as_default=False)  # waits distributed.comm.timeouts.connect (30 s)
    except (OSError, TimeoutError) as exc:
        raise TransientError(f"parallel.dask_address {address}: no Dask scheduler answers ({exc})") from None
    with client:
        token = uuid.uuid4().hex[:8]  # keys of their own: a shared cluster may run another stage's calls of this name
        keys = [f"{name}-{i}-{token}" for i in range(len(calls))]
        futures = client.map(importable(fn), *zip(*calls, strict=True), key=keys, pure=False) if calls else []
        log.info("%s: %d calls on the Dask cluster at %s", name, len(calls), address)
        return client.gather(futures)
