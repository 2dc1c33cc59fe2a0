"""flows/runners.py: the task runner params choose, and the Prefect internal behind the shared temporary API."""

from __future__ import annotations

import pytest

from flows.runners import task_runner
from tasks.lib.config import Params


def test_params_choose_the_task_runner(params: Params, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    threads = task_runner(params.flow.model_copy(update={"task_runner": "threads", "workers": 3}))
    assert isinstance(threads, ThreadPoolTaskRunner) and threads._max_workers == 3
    dask = params.flow.model_copy(update={"task_runner": "dask", "workers": 2})
    local = task_runner(dask)
    assert isinstance(local, DaskTaskRunner) and local.address is None
    assert local.cluster_kwargs["n_workers"] == 2 and local.cluster_kwargs["processes"] is True
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://10.1.2.3:8786")
    assert task_runner(dask).address == "tcp://10.1.2.3:8786"  # an existing scheduler, from the environment
    assert task_runner(dask.model_copy(update={"dask_address": "tcp://h:1"})).address == "tcp://h:1"  # params win


def test_the_prefect_internal_behind_the_shared_api_still_exists() -> None:
    """share_prefect_api starts Prefect's own temporary server class; an upgrade that renames or reshapes it fails
    here (the slow Dask test in test_training.py starts it for real)."""
    from prefect.server.api.server import SubprocessASGIServer

    assert callable(SubprocessASGIServer.start) and callable(SubprocessASGIServer.stop)
    assert isinstance(SubprocessASGIServer.api_url, property)
