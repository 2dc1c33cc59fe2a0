"""Time the whole validation of a boundary (summary table + GX checkpoint + Data Docs) → benchmarks/RESULTS.md.

Usage: python benchmarks/validation_speed.py [MNIST_IDX_DIR] (default ../shared/data/mnist). The 600,000-image
set is the MNIST images tiled 60 times, one pixel changed per copy so every image stays distinct.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import machine, today, write_section

from tasks.lib import stats, validation
from tasks.lib.artifacts import Dataset, Split
from tasks.lib.config import Params, load_params
from tasks.lib.sources import load_idx_dir

REPO = Path(__file__).resolve().parents[1]


def as_dataset(x: np.ndarray, y: np.ndarray) -> Dataset:
    n = len(y)
    a, b = int(n * 0.7), int(n * 0.85)
    splits = {"train": Split(x[:a], y[:a]), "val": Split(x[a:b], y[a:b]), "test": Split(x[b:], y[b:])}
    return Dataset(splits=splits, classes=tuple(str(i) for i in range(10)))


def tiled(x: np.ndarray, y: np.ndarray, times: int) -> tuple[np.ndarray, np.ndarray]:
    big = np.tile(x, (times, 1, 1, 1))
    big.reshape(len(big), -1)[:, 0] = np.repeat(np.arange(times, dtype=np.uint8), len(x))
    return big, np.tile(y, times)


def best_of(repeats: int, fn: object) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return min(times)


def measure(dataset: Dataset, params: Params, repeats: int) -> tuple[float, float]:
    validation.validate_dataset("raw", dataset, params)  # warm-up: GX import, context and suite setup
    shard_size = params.data.shard_size
    table = best_of(repeats, lambda: stats.summary_table(stats.summarize_dataset(dataset, shard_size)))
    whole = best_of(repeats, lambda: validation.validate_dataset("raw", dataset, params))
    return table, whole


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared/data/mnist"
    loaded = load_idx_dir(source)
    x, y = (loaded.x_test, loaded.y_test) if loaded.x_test is not None else (loaded.x, loaded.y)
    base = load_params(REPO / "params.yaml")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = base.paths.model_copy(
            update={"gx": f"{tmp}/gx", "data_docs": f"{tmp}/data_docs", "validation": f"{tmp}/validation"}
        )
        params = base.model_copy(update={"paths": paths})
        for label, (xs, ys), repeats in (
            (f"{len(y):,} MNIST images", (x, y), 5),
            (f"{len(y) * 60:,} images (MNIST ×60)", tiled(x, y, 60), 2),
        ):
            table, whole = measure(as_dataset(xs, ys), params, repeats)
            rows.append(f"| {label} | {table:.3f} | {whole:.3f} |")
            print(rows[-1])
    write_section(
        "Validation speed",
        "\n".join(
            [
                "`python benchmarks/validation_speed.py`: the `raw` suite (9 expectations) on MNIST from "
                f"`{source.name}/`; best of several runs, after a warm-up that pays GX's import and context setup. "
                "The summaries are computed here over the whole in-memory dataset, cut into `data.shard_size` shards; "
                "in a stage each worker summarises the shard it has just processed.",
                f"Machine: {machine()}; {today()}.",
                "",
                "| dataset | shard summaries + summary table (s) "
                "| whole validation: summaries + checkpoint + Data Docs (s) |",
                "| --- | --- | --- |",
                *rows,
            ]
        ),
    )


if __name__ == "__main__":
    main()
