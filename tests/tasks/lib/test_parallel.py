"""tasks/lib/parallel.py and the per-shard work it maps: order, processes, Dask, and memory bounded by the shard
size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from tasks import augment, clean, normalize
from tasks.lib import artifacts, parallel
from tasks.lib.artifacts import Dataset, Split
from tasks.lib.config import ParallelParams, Params
from tasks.lib.errors import TransientError
from tests.helpers import TINY, free_port, make_workspace, processes_in, sh, tool_env, wait_for

SHARD = 1000  # 28×28 images: 0.78 MB of uint8 per shard


def pid_after(pause: float, i: int) -> tuple[int, int]:
    import time

    time.sleep(pause)
    return i, os.getpid()


def test_process_map_keeps_the_order_of_the_calls_and_uses_other_processes() -> None:
    calls = [(0.05 * (6 - i), i) for i in range(6)]  # the first calls finish last
    done = parallel.process_map(2, "pid", pid_after, calls)
    assert [i for i, _ in done] == list(range(6))
    assert os.getpid() not in {pid for _, pid in done}
    assert parallel.process_map(1, "pid", pid_after, calls[:2]) == [(0, os.getpid()), (1, os.getpid())]  # in-process
    assert parallel.process_map(2, "none", pid_after, []) == []


def test_params_choose_processes_or_dask(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    local = parallel.mapper(ParallelParams(workers=3, dask_address=None))
    assert local.func is parallel.process_map and local.args == (3,)
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:1")
    assert parallel.mapper(ParallelParams(workers=None, dask_address=None)).args == ("tcp://127.0.0.1:1",)
    chosen = parallel.mapper(ParallelParams(workers=None, dask_address="tcp://127.0.0.1:2"))  # params win
    assert chosen.func is parallel.dask_map and chosen.args == ("tcp://127.0.0.1:2",)


def test_a_scheduler_that_does_not_answer_is_a_transient_error_naming_it() -> None:
    import dask

    address = f"tcp://127.0.0.1:{free_port()}"
    message = f"parallel.dask_address {address}: no Dask scheduler answers"
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}), pytest.raises(TransientError, match=message):
        parallel.dask_map(address, "x", pid_after, [(0, 1)])


def workspace(params: Params, root: Path, train_shards: int) -> Params:
    """params with every path under ``root``, and data/raw holding ``train_shards`` shards of train."""
    paths = {name: str(root / value) for name, value in params.paths.model_dump().items()}
    in_process = params.parallel.model_copy(update={"workers": 1})  # tracemalloc sees this process only
    p = params.model_copy(update={"paths": params.paths.model_copy(update=paths), "parallel": in_process})
    rng = np.random.default_rng(train_shards)
    splits = {}
    for name, n in {"train": train_shards * SHARD, "val": 2 * SHARD, "test": 2 * SHARD}.items():
        splits[name] = Split(rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8), np.arange(n) % 10)
    artifacts.write_dataset(Path(p.paths.raw), Dataset(splits, tuple("0123456789")), SHARD)
    return p


STAGES = {"clean": (clean, ()), "augment": (augment, (clean,)), "normalize": (normalize, (clean, augment))}


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_data_stage_holds_a_shard_at_a_time_not_the_dataset(stage: str, params: Params, tmp_path: Path) -> None:
    module, upstream = STAGES[stage]
    peaks = {}
    for shards in (4, 4, 16):  # the first run pays one-off allocations (GX context, imports)
        p = workspace(params, tmp_path / f"x{shards}-{len(peaks)}", shards)
        for before in upstream:
            before.run(p)
        tracemalloc.start()
        try:
            module.run(p)
            peaks[shards] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    grown = peaks[16] - peaks[4]
    # 12 more train shards are 9.4 MB of uint8 (37.6 MB as float32); a stage that held the dataset would grow by
    # that much. Bounded: the growth is the per-image bookkeeping (hashes, labels), far below one shard per 4.
    assert grown < 2 * SHARD * 28 * 28, f"{stage}: peak {peaks[4] / 1e6:.1f} MB → {peaks[16] / 1e6:.1f} MB"
    print(f"{stage}: traced peak {peaks[4] / 1e6:.2f} MB with 4 train shards, {peaks[16] / 1e6:.2f} MB with 16")


DATA = ("data/clean", "data/augmented", "data/normalized")


STAGES_MAPPED = ("clean", "augment", "normalize")
ASK = """import json, sys
from distributed import Client
with Client(sys.argv[1], timeout="10s") as client:
    print(json.dumps(client.run(lambda dask_worker: dask_worker.state.executed_count)))
"""


def dask_workers(address: str) -> dict[str, int]:
    """The cluster's workers and how many tasks each ran, asked by a client process of its own (a client in this
    test process would share its event loops and state with whatever ran in it before)."""
    done = subprocess.run([sys.executable, "-c", ASK, address], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-500:])
    return json.loads(done.stdout)


@contextmanager
def dask_cluster(tmp_path: Path, code: Path) -> Iterator[str]:
    """A real Dask scheduler and two worker processes on loopback, each started in a folder of its own and importing
    the project's code from ``code`` (as a deployment would install it); stopped afterwards."""
    tmp_path.mkdir()
    address = f"tcp://127.0.0.1:{free_port()}"
    dask = str(Path(sys.executable).parent / "dask")
    env = tool_env(DASK_LOGGING__DISTRIBUTED="warning")
    scheduler = [dask, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--no-dashboard"]
    logs = [tmp_path / "scheduler.log", tmp_path / "worker-0.log", tmp_path / "worker-1.log"]
    with logs[0].open("wb") as log:
        started = [subprocess.Popen(scheduler, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)]
    for i in range(2):
        folder = tmp_path / f"worker-{i}"
        folder.mkdir()
        worker = [dask, "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard", "--name", f"w{i}"]
        with logs[i + 1].open("wb") as log:
            env_i = {**env, "PYTHONPATH": str(code)}
            started.append(subprocess.Popen(worker, cwd=folder, env=env_i, stdout=log, stderr=subprocess.STDOUT))
    try:
        try:
            wait_for("a Dask scheduler with two workers", lambda: len(dask_workers(address)) == 2, timeout=120)
        except BaseException:
            for path in logs:
                print(f"--- {path.name}\n{path.read_text(errors='replace')[-2000:]}")  # shown with the failure
            raise
        yield address
    finally:
        for process in reversed(started):
            process.terminate()
        for process in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.mark.slow
def test_dvc_repro_maps_the_data_stages_on_a_dask_cluster_with_the_same_bytes(tmp_path: Path) -> None:
    root = make_workspace(tmp_path / "ws", {**TINY, "data": {"shard_size": 300}})
    sh(root, "dvc", "repro", "normalize")  # local worker processes

    def files() -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for d in DATA for p in (root / d).rglob("*") if p.is_file()}

    alone = files()
    assert len([name for name in alone if name.startswith("data/clean/train/x-")]) == 5  # 1,257 images / 300
    with dask_cluster(tmp_path / "dask", root) as address:
        done = sh(root, "dvc", "repro", "--force", "--single-item", *STAGES_MAPPED, DASK_SCHEDULER_ADDRESS=address)
        executed = dask_workers(address)
    log = done.stdout + done.stderr
    assert all(f"Running stage '{stage}'" in log for stage in STAGES_MAPPED)
    assert f"clean-inspect: 7 calls on the Dask cluster at {address}" in log  # 5 + 1 + 1 shards
    assert len(executed) == 2 and sum(executed.values()) >= 7 + 7 + 12  # clean (twice), augment (train twice)
    assert files() == alone
    assert processes_in(root) == []
