"""Where the flow's tasks run: the task runner params choose, the data stages' per-shard tasks, and the shared
temporary Prefect API that a local Dask cluster's workers report to."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.lib.config import FlowParams


@task(cache_policy=NO_CACHE, persist_result=False)
def shard(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """One call of a data stage's per-shard work, on the flow's task runner (threads, or a Dask worker)."""
    return fn(*args)


def shard_map(name: str, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> list[Any]:
    """A stage's mapper (tasks/lib/parallel.py) under Prefect: one task run per call, ``<name>-<i>``, in order."""
    futures = [shard.with_options(task_run_name=f"{name}-{i}").submit(fn, args) for i, args in enumerate(calls)]
    return [future.result() for future in futures]


def task_runner(params: FlowParams) -> Any:
    """The task runner params choose for the per-shard tasks: a thread pool, or Dask (an existing scheduler from
    ``flow.dask_address`` or $DASK_SCHEDULER_ADDRESS, else a local cluster of worker processes)."""
    workers = params.workers or os.cpu_count() or 1
    if params.task_runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # read when distributed is imported
    from prefect_dask import DaskTaskRunner

    address = params.dask_address or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        return DaskTaskRunner(address=address)
    # dashboard on a free port: a second cluster on this machine must not collide with the first
    cluster = {"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": ":0"}
    return DaskTaskRunner(cluster_kwargs=cluster)


def share_prefect_api() -> None:
    """Without PREFECT_API_URL, start Prefect's temporary API server now and point the environment at it.

    Every process of a run then reports to that one server: Dask worker processes inherit the variable instead
    of each starting a temporary server of its own (~10 s each, and their task runs would land in their own).
    Prefect stops the server when this process exits. Prefect internal: ``SubprocessASGIServer``, the class behind
    its own temporary server (tested in tests/flows/test_runners.py).
    """
    if os.environ.get("PREFECT_API_URL"):
        return
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return
    server = SubprocessASGIServer()
    server.start()
    os.environ["PREFECT_API_URL"] = server.api_url
