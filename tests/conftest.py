"""Shared fixtures: the repo's real params and a builder of tiny datasets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tasks import warm
from tasks.artifacts import Dataset, Split
from tasks.config import Params, load_params

REPO = Path(__file__).resolve().parents[1]

MakeDataset = Callable[..., Dataset]


@pytest.fixture(scope="session", autouse=True)
def _stop_warm_servers() -> Iterator[None]:
    """Stage processes the tests start hand over to warm servers (tasks/warm.py): stop them at the end."""
    yield
    warm.stop_servers()


@pytest.fixture(scope="session")
def params() -> Params:
    """The default config: the repo's own params.yaml."""
    return load_params(REPO / "params.yaml")


def tiny_dataset(
    counts: dict[str, int] | None = None,
    shape: tuple[int, int, int] = (6, 6, 1),
    num_classes: int = 3,
    seed: int = 0,
) -> Dataset:
    """Random, all-distinct, non-constant uint8 images with labels cycling over the classes."""
    counts = counts or {"train": 30, "val": 9, "test": 9}
    rng = np.random.default_rng(seed)
    splits = {}
    for name, n in counts.items():
        x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
        x[:, 0, 0, 0], x[:, 0, 1, 0] = 0, 255  # never constant
        splits[name] = Split(x, np.arange(n, dtype=np.int64) % num_classes)
    return Dataset(splits=splits, classes=tuple(f"c{i}" for i in range(num_classes)))


@pytest.fixture
def make_dataset() -> MakeDataset:
    return tiny_dataset
