"""The training input path as Keras ``fit`` pulls it, beside ``fit`` on the same arrays in memory.

    python benchmarks/training_path.py [--mnist ../shared/data/mnist] [--repeats 3] [--images 60000] [--results]

- input path: the same near-zero model (uint8 28×28 → Rescaling → Flatten → Dense(10), so the model costs little
  and the input path shows) fitted on CPU with the TensorFlow backend, twice in each repeat:
  A, as ``tasks.train`` does it: ``model.fit(shard_batches(open_dataset(data/augmented), "train", batch, seed),
  shuffle=False)`` over shards of ``data.shard_size`` images (params.yaml);
  B, the same images as NumPy arrays passed to ``model.fit(x, y, batch_size=batch)`` (Keras shuffles them).
  The images: MNIST t10k ×6 (60,000, every copy shifted so none repeats) from ``--mnist``, or random uint8 images
  where the folder is absent. images/s of an epoch is the images over the epoch's wall time (a callback), the
  median of the epochs after the first (which traces the step and loads the first shards); A and B alternate
  order between repeats; the headline is A ÷ B per repeat, median and min–max, at batch 64 and 512;
- per-epoch work: the callbacks ``tasks.train.fit`` adds (history CSV, MLflow's per-epoch metrics, the timed
  BackupAndRestore checkpoint, early stopping, learning-rate plateau) on the seed CNN, with params.yaml's train
  section: all their work in a training of 20 epochs of 0.2 s (a sleep stands for each epoch's training; epoch hooks
  and the end of training) divided by 20, against a real SQLite MLflow store; target ≤ 2 % of a 0.2 s epoch (4 ms).

With --results writes the "Training path" section of RESULTS.md (and so its summary).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from results import headline_row, headline_table, machine, paired, spread, today, write_section  # noqa: E402

BATCHES = (64, 512)
EPOCH_SECONDS = 0.2
SECTION = "Training path"


def images(mnist: Path, count: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``count`` uint8 28×28×1 images and labels: MNIST t10k tiled with shifts, or random where ``mnist`` is absent."""
    if (mnist / "t10k-images-idx3-ubyte.gz").exists() or (mnist / "t10k-images-idx3-ubyte").exists():
        from tasks.lib.sources import load_idx_dir

        loaded = load_idx_dir(mnist)
        copies = -(-count // len(loaded.y))
        x = np.concatenate([np.roll(loaded.x, k, axis=2) for k in range(copies)])[:count]
        return x, np.tile(loaded.y, copies)[:count], f"MNIST t10k ×{copies} from `{mnist.name}/`"
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (count, 28, 28, 1), dtype=np.uint8)
    return x, rng.integers(0, 10, count).astype(np.int64), "random uint8 images (no MNIST folder)"


def write_shards(x: np.ndarray, y: np.ndarray, out: Path, shard_size: int) -> Path:
    """The images as data/augmented-style shards (train split only), as augment writes them."""
    from tasks.lib import artifacts
    from tasks.lib.artifacts import Dataset, Split

    dataset = Dataset(splits={"train": Split(x, y)}, classes=tuple(str(i) for i in range(10)), info={})
    artifacts.write_dataset(out, dataset, shard_size)
    return out


def tiny_model(shape: tuple[int, ...]) -> Any:
    """uint8 images → Rescaling → Flatten → Dense(10), compiled as train compiles: the model costs next to nothing."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input(shape, dtype="uint8"),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def epoch_seconds() -> tuple[Any, list[float]]:
    """A callback that appends each epoch's wall seconds to the list it returns with."""
    import keras

    seconds: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            seconds.append(time.perf_counter() - self.start)

    return Timer(), seconds


def fit_rate(source: str, data: Path, x: np.ndarray, y: np.ndarray, batch: int, epochs: int) -> float:
    """Steady images/s of ``fit`` on the tiny model: ``source`` "pipeline" (shard_batches, as train) or "memory"."""
    from tasks import train
    from tasks.lib import artifacts

    model = tiny_model(x.shape[1:])
    timer, seconds = epoch_seconds()
    if source == "pipeline":
        batches = train.shard_batches(artifacts.open_dataset(data), "train", batch, seed=0)
        model.fit(batches, epochs=epochs, shuffle=False, callbacks=[timer], verbose=0)
    else:
        model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=True, callbacks=[timer], verbose=0)
    return len(y) / statistics.median(seconds[1:])


def input_path(
    data: Path, x: np.ndarray, y: np.ndarray, repeats: int, epochs: int
) -> dict[int, dict[str, list[float]]]:
    """images/s of fit from shard_batches and from arrays in memory, alternated, ``repeats`` pairs per batch size."""
    found: dict[int, dict[str, list[float]]] = {b: {"pipeline": [], "memory": []} for b in BATCHES}
    for i in range(repeats):
        for batch in BATCHES:
            for source in ("pipeline", "memory") if i % 2 == 0 else ("memory", "pipeline"):
                found[batch][source].append(fit_rate(source, data, x, y, batch, epochs))
            print(f"repeat {i}, batch {batch}: {json.dumps({k: v[-1] for k, v in found[batch].items()})}", flush=True)
    return found


def per_epoch_ms(epochs: int = 20) -> dict[str, float]:
    """Each callback's work in a training of ``epochs`` epochs of ``EPOCH_SECONDS`` (its epoch hooks, and the end of
    training: MLflow's last flush, the backup's removal) divided by ``epochs``, in ms, and all together; the seed
    CNN, MLflow on SQLite, params.yaml's train section (``checkpoint_seconds`` included)."""
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
        metrics = tracking.epoch_callback(settings, run_id)
        callbacks = train.epoch_callbacks(
            params.train, Path(tmp) / "backup", Path(tmp) / "history.csv", [metrics], metrics.flush
        )
        spent: dict[str, float] = {type(c).__name__: 0.0 for c in callbacks}

        def timed(c: Any, hook: str, *args: Any) -> None:
            start = time.perf_counter()
            getattr(c, hook)(*args)
            spent[type(c).__name__] += (time.perf_counter() - start) * 1000

        for c in callbacks:
            c.set_model(model)
            c.set_params({"epochs": epochs, "steps": 1, "verbose": 0})
            c.on_train_begin()
        for epoch in range(epochs):
            logs = {"loss": 1.0 / (epoch + 1), "accuracy": 0.9, "val_loss": 1.0 / (epoch + 1), "val_accuracy": 0.9}
            for c in callbacks:
                timed(c, "on_epoch_begin", epoch)
            time.sleep(EPOCH_SECONDS)  # the epoch's training: time-based backups see the time pass
            for c in callbacks:
                timed(c, "on_epoch_end", epoch, dict(logs))
        for c in callbacks:
            timed(c, "on_train_end")
        keras.backend.clear_session()
    result = {name: total / epochs for name, total in spent.items()}
    result["all"] = sum(result.values())
    return result


def report(rates: dict[int, dict[str, list[float]]], epoch: list[dict[str, float]], how: str, what: str) -> str:
    """The section: images/s of both fits and their ratio per batch size, then the callbacks' per-epoch work."""
    lines = [
        f"`{how}`; {today()}; {machine()}; TensorFlow backend, CPU.",
        f"Data: {what}. The model: uint8 28×28 → Rescaling → Flatten → Dense(10), so that the input path shows. "
        "Pipeline: `model.fit(tasks.train.shard_batches(...), shuffle=False)`, as train calls it; in memory: "
        "`model.fit(x, y, batch_size=…)` on the same images as NumPy arrays. images/s: median of the epochs after "
        f"the first; the two alternate within each of {len(epoch)} repeats, and the ratio pairs them.",
        "",
        "| batch | pipeline `fit` (images/s) | min–max | in-memory `fit` (images/s) | min–max | pipeline ÷ in-memory "
        "| min–max |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for batch, found in rates.items():
        ratio = spread(paired(found["pipeline"], found["memory"]), 2)
        lines.append(
            f"| {batch} | {' | '.join(spread(found['pipeline'], -1))} | {' | '.join(spread(found['memory'], -1))} "
            f"| {ratio[0]}× | {ratio[1]}× |"
        )
    lines += [
        "",
        f"Per-epoch work: each callback's work in a training of 20 epochs of {EPOCH_SECONDS} s (a sleep stands for the "
        "training) with params.yaml's train section, divided by 20; median and min–max of the repeats.",
        "",
        "| per-epoch work of `tasks.train.fit`'s callbacks (ms) | median | min–max |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| {name if name != 'all' else 'all callbacks'} | {' | '.join(spread([r[name] for r in epoch], 2))} |"
        for name in epoch[0]
    ]
    all_ms = [r["all"] for r in epoch]
    rows = [
        headline_row(
            f"training input path: `fit` from `shard_batches` ÷ `fit` on arrays in memory, batch {batch}, CPU",
            paired(found["pipeline"], found["memory"]),
            2,
            "×",
        )
        for batch, found in rates.items()
    ]
    rows.append(
        headline_row(
            "per-epoch work of the callbacks (ms)",
            all_ms,
            1,
            target=f"≤ {EPOCH_SECONDS * 20:.0f} (2 % of a {EPOCH_SECONDS} s epoch)",
            met=statistics.median(all_ms) <= EPOCH_SECONDS * 20,
        )
    )
    return "\n".join([*lines, "", headline_table(rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=ROOT.parent / "shared/data/mnist")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=60_000, help="how many images (smaller for a smoke run)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per fit; the first is not timed")
    parser.add_argument("--results", action="store_true")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be ≥ 2: the first epoch is not timed")
    os.environ["KERAS_BACKEND"] = "tensorflow"
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the CPU's figures, on any machine
    from tasks.lib.quiet import import_keras

    import_keras()
    shard_size = int(yaml.safe_load((ROOT / "params.yaml").read_text())["data"]["shard_size"])
    x, y, what = images(args.mnist, args.images)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_shards(x, y, Path(tmp) / "augmented", shard_size)
        rates = input_path(data, x, y, args.repeats, args.epochs)
    epoch = [per_epoch_ms() for _ in range(args.repeats)]
    print(json.dumps({"images_per_s": rates, "per_epoch_ms": epoch}, indent=1))
    if args.results:
        how = f"python benchmarks/training_path.py --repeats {args.repeats} --images {args.images} --results"
        what = f"{len(y):,} {what}, shards of {shard_size:,}"
        write_section(SECTION, report(rates, epoch, how, what))
    return 0


if __name__ == "__main__":
    sys.exit(main())
