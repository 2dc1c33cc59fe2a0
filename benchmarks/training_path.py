"""The training path's CPU-side costs, the proxies for a GPU kept busy (issue 17's target 1 without a GPU).

    python benchmarks/training_path.py [--mnist ../shared/data/mnist] [--repeats 3] [--results]

- input path: ``tasks.train.shard_batches`` over data/augmented-style shards of MNIST t10k ×6 (60,000 images,
  the default 16,384-image shards), one epoch of batches fetched and nothing else, images/s in steady epochs (the
  second and later), at batch 64 and 512; set beside the bare-Keras GPU rates measured on an H200 (issue 17:
  37,009 images/s at batch 64, 307,355 at 512): the target is ≥ 10× those;
- per-epoch work: the callbacks ``tasks.train.fit`` adds (history CSV, MLflow's per-epoch metrics, the
  BackupAndRestore checkpoint, early stopping, learning-rate plateau) on the seed CNN, their ``on_epoch_end`` timed
  over 20 epochs against a real SQLite MLflow store; target ≤ 2 % of a 0.2 s epoch (4 ms).

Medians of ``--repeats``; with --results writes the "Training path" section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from results import machine, today, write_section  # noqa: E402

BARE_GPU = {64: 37_009, 512: 307_355}  # images/s, bare Keras on JAX, H200, mixed_float16 (issue 17)
EPOCH_SECONDS = 0.2
SECTION = "Training path"


def mnist_x6(mnist: Path, out: Path, dtype: str) -> Path:
    """data/augmented-style shards of 60,000 MNIST images (t10k ×6, every copy shifted so none repeats)."""
    from tasks.lib import artifacts
    from tasks.lib.artifacts import Dataset, Split
    from tasks.lib.sources import load_idx_dir

    loaded = load_idx_dir(mnist)
    x = np.concatenate([np.roll(loaded.x, k, axis=2) for k in range(6)])
    y = np.tile(loaded.y, 6)
    if dtype == "float32":  # what normalize stored before it kept uint8 (the "before" of issue 17)
        x = x.astype(np.float32) / 255.0
    dataset = Dataset(splits={"train": Split(x, y)}, classes=tuple(str(i) for i in range(10)), info={})
    artifacts.write_dataset(out, dataset, 16_384)
    return out


def input_rate(path: Path, batch: int, epochs: int = 4) -> float:
    """Steady images/s of shard_batches alone: every batch of an epoch fetched, epochs 2.. timed."""
    from tasks import train
    from tasks.lib import artifacts

    batches = train.shard_batches(artifacts.open_dataset(path), "train", batch, seed=0)
    rates = []
    for epoch in range(epochs):
        start, images = time.perf_counter(), 0
        for i in range(len(batches)):
            x, _ = batches[i]
            images += len(x)
        batches.on_epoch_end()
        if epoch:
            rates.append(images / (time.perf_counter() - start))
    return statistics.median(rates)


def per_epoch_ms(epochs: int = 20) -> dict[str, float]:
    """Median ms of each callback's on_epoch_end (and all together) on the seed CNN, MLflow on SQLite."""
    import keras

    from tasks import train
    from tasks.lib import tracking
    from tasks.lib.config import load_params

    params = load_params(ROOT / "params.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        settings = params.tracking.model_copy(update={"uri": f"sqlite:///{tmp}/mlflow.db"})
        run_id = (
            tracking.client(settings)
            .create_run(tracking.client(settings).create_experiment("bench", artifact_location=f"{tmp}/a"))
            .info.run_id
        )
        scale = {"method": "scale", "scale": 1 / 255, "mean": [0.0], "std": [1.0]}
        model = train.build_classifier((28, 28, 1), 10, params.train, scale)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(np.zeros((64, 28, 28, 1), np.uint8), np.zeros(64, np.int64), epochs=1, verbose=0)
        callbacks = train.epoch_callbacks(
            params.train, Path(tmp) / "backup", Path(tmp) / "history.csv", [tracking.epoch_callback(settings, run_id)]
        )
        timings: dict[str, list[float]] = {type(c).__name__: [] for c in callbacks}
        for c in callbacks:
            c.set_model(model)
            c.on_train_begin()
        for epoch in range(epochs):
            logs = {"loss": 1.0 / (epoch + 1), "accuracy": 0.9, "val_loss": 1.0 / (epoch + 1), "val_accuracy": 0.9}
            for c in callbacks:
                c.on_epoch_begin(epoch)
            for c in callbacks:
                start = time.perf_counter()
                c.on_epoch_end(epoch, dict(logs))
                timings[type(c).__name__].append((time.perf_counter() - start) * 1000)
        for c in callbacks:
            c.on_train_end()
        keras.backend.clear_session()
    result = {name: statistics.median(values[1:]) for name, values in timings.items()}
    result["all"] = sum(result.values())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=ROOT.parent / "shared/data/mnist")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=["uint8", "float32"], default="uint8", help="float32: the shards before")
    parser.add_argument("--results", action="store_true")
    args = parser.parse_args(argv)
    from tasks.lib.quiet import import_keras

    import_keras()
    with tempfile.TemporaryDirectory() as tmp:
        data = mnist_x6(args.mnist, Path(tmp) / "augmented", args.dtype)
        rates = {b: statistics.median(input_rate(data, b) for _ in range(args.repeats)) for b in BARE_GPU}
    runs = [per_epoch_ms() for _ in range(args.repeats)]
    epoch = {name: statistics.median(r[name] for r in runs) for name in runs[0]}
    out = {"input_images_per_s": rates, "per_epoch_ms": epoch}
    print(json.dumps(out, indent=1))
    if args.results:
        rows = "".join(
            f"| input path, batch {b} (images/s) | ≥ {10 * BARE_GPU[b]:,} (10× bare GPU) | {rates[b]:,.0f} | "
            f"{rates[b] / BARE_GPU[b]:.1f}× | {'✅' if rates[b] >= 10 * BARE_GPU[b] else '❌'} |\n"
            for b in BARE_GPU
        )
        rows += "".join(
            f"| per-epoch work: {name} (ms) | | {ms:.2f} | | |\n" for name, ms in epoch.items() if name != "all"
        )
        share = epoch["all"] / (EPOCH_SECONDS * 1000)
        rows += (
            f"| per-epoch work, all callbacks (ms) | ≤ 4 (2 % of a 0.2 s epoch) | {epoch['all']:.2f} | {share:.1%} | "
            f"{'✅' if share <= 0.02 else '❌'} |\n"
        )
        write_section(
            SECTION,
            f"`python benchmarks/training_path.py --repeats {args.repeats} --results`; {today()}; {machine()}.\n"
            "The proxies for a busy GPU without one (see the script's docstring): the input path alone against the "
            "bare-Keras GPU rate of issue 17's H200 table, and the callbacks' per-epoch work. Medians of "
            f"{args.repeats}.\n\n"
            "| figure | target | median | ratio | met |\n| --- | --- | --- | --- | --- |\n" + rows,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
