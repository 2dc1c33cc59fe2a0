"""Time the whole validation of a boundary (summary table + GX checkpoint + Data Docs) → benchmarks/RESULTS.md.

    python benchmarks/validation_speed.py [MNIST_IDX_DIR] [--repeats 3] [--results]

MNIST_IDX_DIR defaults to ../shared/data/mnist. The 600,000-image set is the MNIST images tiled 60 times, one pixel
changed per copy so every image stays distinct. Each figure is the median of ``--repeats`` runs with its min–max,
after a warm-up that pays GX's import and context set-up; that import, which a data-stage process pays only for
validation, is timed apart: ``import great_expectations`` in ``--repeats`` fresh interpreters that have imported
the validation module (numpy, pydantic and the project's modules already loaded, as in a stage).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import headline_row, headline_table, machine, spread, today, write_section

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


def timings(repeats: int, fn: Callable[[], object]) -> list[float]:
    """Seconds of each of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


GX_IMPORT = (
    "import time, tasks.lib.validation; start = time.perf_counter(); "
    "import great_expectations, great_expectations.checkpoint; print(time.perf_counter() - start)"
)


def gx_import(repeats: int) -> list[float]:
    """Seconds of ``import great_expectations`` in fresh interpreters that have the validation module loaded."""
    return [
        float(
            subprocess.run(
                [sys.executable, "-c", GX_IMPORT], cwd=REPO, capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(repeats)
    ]


def measure(dataset: Dataset, params: Params, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds of the shard summaries + summary table, and of the whole validation, ``repeats`` runs each."""
    validation.validate_dataset("raw", dataset, params)  # warm-up: GX import, context and suite setup
    shard_size = params.data.shard_size
    table = timings(repeats, lambda: stats.summary_table(stats.summarize_dataset(dataset, shard_size)))
    whole = timings(repeats, lambda: validation.validate_dataset("raw", dataset, params))
    return table, whole


def cell(values: list[float]) -> str:
    median, low_high = spread(values, 3)
    return f"{median} ({low_high})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mnist", type=Path, nargs="?", default=REPO.parent / "shared/data/mnist")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--factor", type=int, default=60, help="the large set: MNIST tiled this many times")
    parser.add_argument("--results", action="store_true", help="write the 'Validation speed' section of RESULTS.md")
    args = parser.parse_args(argv)
    loaded = load_idx_dir(args.mnist)
    x, y = (loaded.x_test, loaded.y_test) if loaded.x_test is not None else (loaded.x, loaded.y)
    base = load_params(REPO / "params.yaml")
    rows, headlines = [], []
    imports = gx_import(args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        paths = base.paths.model_copy(
            update={"gx": f"{tmp}/gx", "data_docs": f"{tmp}/data_docs", "validation": f"{tmp}/validation"}
        )
        params = base.model_copy(update={"paths": paths})
        for label, (xs, ys) in (
            (f"{len(y):,} MNIST images", (x, y)),
            (f"{len(y) * args.factor:,} images (MNIST ×{args.factor})", tiled(x, y, args.factor)),
        ):
            table, whole = measure(as_dataset(xs, ys), params, args.repeats)
            rows.append(f"| {label} | {cell(table)} | {cell(whole)} |")
            headlines.append(headline_row(f"whole validation of one boundary, {label} (s)", whole, 3))
            print(rows[-1], flush=True)
    headlines.append(
        headline_row("`import great_expectations`, paid by each data-stage process for validation (s)", imports, 2)
    )
    body = "\n".join(
        [
            f"`python benchmarks/validation_speed.py --repeats {args.repeats} --factor {args.factor}`: the `raw` "
            "suite on MNIST from "
            f"`{args.mnist.name}/`; median (min–max) of {args.repeats} runs, after a warm-up that pays GX's import "
            "and context setup. The summaries are computed here over the whole in-memory dataset, cut into "
            "`data.shard_size` shards; in a stage each worker summarises the shard it has just processed.",
            f"Machine: {machine()}; {today()}. `import great_expectations` (the warm-up's import, which every "
            f"data-stage process pays only for validation): {cell(imports)} s, in {args.repeats} fresh interpreters "
            "with the validation module already loaded.",
            "",
            "| dataset | shard summaries + summary table (s) "
            "| whole validation: summaries + checkpoint + Data Docs (s) |",
            "| --- | --- | --- |",
            *rows,
            "",
            headline_table(headlines),
        ]
    )
    print(body)
    if args.results:
        write_section("Validation speed", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
