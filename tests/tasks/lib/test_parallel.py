"""tasks/parallel.py and the per-shard work it maps: order, threads, and memory bounded by the shard size."""

from __future__ import annotations

import threading
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tasks import augment, clean, normalize
from tasks.lib import artifacts
from tasks.lib.artifacts import Dataset, Split
from tasks.lib.config import Params
from tasks.lib.parallel import local_map

SHARD = 1000  # 28×28 images: 0.78 MB of uint8 per shard


def test_local_map_keeps_the_order_of_the_calls_and_uses_threads() -> None:
    threads: set[int] = set()

    def work(i: int, pause: float) -> int:
        threads.add(threading.get_ident())
        threading.Event().wait(pause)
        return i * i

    calls = [(i, 0.05 * (8 - i)) for i in range(8)]  # the first calls finish last
    assert local_map("square", work, calls) == [i * i for i in range(8)]
    assert len(threads) >= min(2, __import__("os").cpu_count() or 1)
    assert local_map("none", work, []) == []


def serial(name: str, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> list[Any]:
    return [fn(*args) for args in calls]


def workspace(params: Params, root: Path, train_shards: int) -> Params:
    """params with every path under ``root``, and data/raw holding ``train_shards`` shards of train."""
    paths = {name: str(root / value) for name, value in params.paths.model_dump().items()}
    p = params.model_copy(update={"paths": params.paths.model_copy(update=paths)})
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
            before.run(p, mapper=serial)
        tracemalloc.start()
        try:
            module.run(p, mapper=serial)
            peaks[shards] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    grown = peaks[16] - peaks[4]
    # 12 more train shards are 9.4 MB of uint8 (37.6 MB as float32); a stage that held the dataset would grow by
    # that much. Bounded: the growth is the per-image bookkeeping (hashes, labels), far below one shard per 4.
    assert grown < 2 * SHARD * 28 * 28, f"{stage}: peak {peaks[4] / 1e6:.1f} MB → {peaks[16] / 1e6:.1f} MB"
    print(f"{stage}: traced peak {peaks[4] / 1e6:.2f} MB with 4 train shards, {peaks[16] / 1e6:.2f} MB with 16")
