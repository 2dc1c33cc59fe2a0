"""train: data/augmented + data/normalized's statistics → models/model.keras (a Keras 3 classifier of raw uint8 pixels
or raw strings, the statistics as its first layers) + history."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.lib import architecture, artifacts, drift, tracking, vectorize
from tasks.lib.architecture import Architecture
from tasks.lib.config import Params, TrainParams
from tasks.lib.errors import TrainflowError
from tasks.lib.quiet import import_keras

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)


def detect_device() -> dict[str, Any]:
    """The Keras backend and the accelerator it will use: GPU when present, else CPU."""
    import keras

    backend = keras.backend.backend()
    names: list[str] = []
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
    elif backend == "jax":
        import jax

        names = [d.device_kind for d in jax.devices() if d.platform == "gpu"]
    elif backend == "torch":
        import torch

        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if names:
        return {"backend": backend, "device": "GPU", "device_name": names[0], "device_count": len(names)}
    return {
        "backend": backend,
        "device": "CPU",
        "device_name": platform.processor() or platform.machine(),
        "device_count": os.cpu_count() or 1,
    }


def build_classifier(
    input_shape: tuple[int, ...], num_classes: int, params: TrainParams, stats: dict, model: Architecture | None = None
) -> keras.Model:
    """The model on raw uint8 pixels: normalize's statistics as its first layers, then ``train.model``'s function
    (architectures/), then the float32 softmax head. Training and serving run the same preprocessing: the TensorFlow
    Transform pattern.

    Args:
        input_shape: (H, W, C) of one image.
        num_classes: width of the softmax output.
        params: the train section.
        stats: normalize's statistics (data/normalized/statistics.json): ``x * scale``, then ``(· - mean) / std``
            for ``standardize``.
        model: ``train.model`` resolved (default: resolved here).

    Returns:
        An uncompiled Keras model whose output is float32 class probabilities.
    """
    import keras
    from keras import layers

    model = model or architecture.resolve(params, "images")
    inputs = keras.Input(shape=input_shape, dtype="uint8", name="pixels")
    x = layers.Rescaling(stats["scale"], name="rescale")(inputs)
    if stats["method"] == "standardize":
        x = layers.Normalization(mean=stats["mean"], variance=np.square(stats["std"]).tolist(), name="standardize")(x)
    outputs = architecture.build(model, x, num_classes, "images")
    return keras.Model(inputs, outputs, name=f"trainflow_{model.function.__name__}")


def build_text_classifier(
    vocabulary_size: int, length: int, num_classes: int, params: TrainParams, model: Architecture | None = None
) -> keras.Model:
    """The text model on word ids (normalize's vocabulary): ``train.model``'s function (the built-in: embedding, a
    recurrent layer, a ReLU dense layer), then the float32 softmax head.

    Trained on ids that the data pipeline makes (:func:`shard_batches`); :func:`text_model` puts the vectorisation in
    front of it for evaluation and serving.
    """
    import keras

    model = model or architecture.resolve(params, "text")
    inputs = keras.Input(shape=(length,), dtype="int32", name="tokens")
    outputs = architecture.build(model, inputs, num_classes, "text", vocabulary_size)
    return keras.Model(inputs, outputs, name=f"trainflow_{model.function.__name__}")


def build_model(data: artifacts.Stored, stats: dict, params: TrainParams, model: Architecture) -> keras.Model:
    """The classifier ``train.model`` builds for ``data`` (images: on raw pixels; text: on word ids)."""
    if data.kind == "text":
        return build_text_classifier(
            stats["vocabulary_size"], stats["sequence_length"], len(data.classes), params, model
        )
    return build_classifier(data.image_shape, len(data.classes), params, stats, model)


def check_model(data: artifacts.Stored, stats: dict, params: TrainParams) -> tuple[Architecture, dict[str, str]]:
    """Resolve and build ``train.model`` once, before any MLflow run or training: a bad hook is one line here.
    Returns it and its MLflow tags (name, arguments, parameter count)."""
    import keras

    model = architecture.resolve(params, data.kind)
    tags = architecture.describe(model, build_model(data, stats, params, model))
    keras.backend.clear_session()  # the real build starts from the same layer names and random state
    return model, tags


def require_backend(kind: str, backend: str) -> None:
    """Refuse what a backend cannot save: Keras' TextVectorization runs inside a model on TensorFlow only, so the
    text model (which takes raw strings) needs ``KERAS_BACKEND=tensorflow``; images train on any backend."""
    if kind == "text" and backend != "tensorflow":
        raise TrainflowError(
            f"a text model needs KERAS_BACKEND=tensorflow, not {backend}: its vectorisation layer (Keras "
            "TextVectorization, inside the served model) runs only on TensorFlow"
        )


def text_model(vectorizer: Any, classifier: keras.Model) -> keras.Model:
    """The served model: raw strings (N,) → ``vectorizer`` (normalize's vocabulary) → ``classifier``'s probabilities."""
    import keras

    inputs = keras.Input(shape=(), dtype="string", name="text")
    return keras.Model(inputs, classifier(vectorizer(inputs)), name=classifier.name)


@contextmanager
def distribution(params: TrainParams) -> Iterator[int]:
    """Build, compile and fit inside this; yields how many replicas train in sync.

    ``train.distribute: mirrored`` trains one replica per visible GPU with all-reduced gradients (TensorFlow's
    ``MirroredStrategy``; JAX: Keras' ``DataParallel``); ``train.batch_size`` is then the global batch, split across
    the replicas. On a machine without GPUs the replicas are its logical CPUs (one unless configured otherwise).
    ``none`` uses the default device.
    """
    import keras

    backend = keras.backend.backend()
    if params.distribute == "none":
        yield 1
    elif backend == "tensorflow":
        import tensorflow as tf

        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        devices = devices or [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
        with strategy.scope():
            yield strategy.num_replicas_in_sync
    elif backend == "jax":
        data_parallel = keras.distribution.DataParallel()
        previous = keras.distribution.distribution()
        keras.distribution.set_distribution(data_parallel)
        try:
            yield len(data_parallel.device_mesh.devices.flatten())
        finally:
            keras.distribution.set_distribution(previous)
    else:
        raise TrainflowError(f"train.distribute=mirrored needs KERAS_BACKEND tensorflow or jax, not {backend}")


def checkpoint_key(params: TrainParams, data_manifest: dict, seed: int, statistics: dict, code: str = "") -> str:
    """Identifies one training configuration, so a resumed run never picks up another run's checkpoint.

    ``statistics`` (normalize's) are part of it: the model's first layers apply them, and they change with
    normalize's params (``normalize.method``) while the data does not; so is ``code``, the model function's file hash.
    """
    hashes = {name: split["sha256"] for name, split in data_manifest["splits"].items()}
    blob = json.dumps(
        # how often the state is backed up changes nothing a backup holds: a resume may change it
        {
            "train": params.model_dump(mode="json", exclude={"checkpoint_seconds"}),
            "data": hashes,
            "seed": seed,
            "statistics": statistics,
        }
        | ({"code": code} if code else {}),
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def learning_rate(params: TrainParams, steps_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The optimizer's learning rate: constant (``plateau``, lowered by ReduceLROnPlateau) or a per-step schedule.

    ``cosine`` rises linearly from 0 to ``params.learning_rate`` over ``lr_warmup_epochs``, then follows a cosine
    down to 0 at the last step of ``params.epochs``. It is a function of the optimizer's step count, which the
    checkpoint saves, so a resumed training continues the curve where it stopped.

    Args:
        params: the train section.
        steps_per_epoch: batches per epoch.

    Returns:
        What ``keras.optimizers.Adam(learning_rate=...)`` takes.
    """
    import keras

    if params.lr_schedule == "plateau":
        return params.learning_rate
    warmup = params.lr_warmup_epochs * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else params.learning_rate,
        decay_steps=(params.epochs - params.lr_warmup_epochs) * steps_per_epoch,
        warmup_target=params.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


SHUFFLE_SHARDS = 4  # shards shuffled together each epoch (in memory: three groups, loaded and gathered)


def shard_batches(
    stored: artifacts.Stored,
    split: str,
    batch_size: int,
    seed: int | None,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> keras.utils.PyDataset:
    """Batches of a stored split, a few shards in memory at a time: training streams data of any size.

    With a seed, every epoch visits the shards in a fresh random order, in groups of ``SHUFFLE_SHARDS`` whose
    images are shuffled together (a shuffle buffer of that many shards, as sharded input pipelines interleave);
    without, in stored order (validation). Each group is gathered into its shuffled order once, in a background
    thread while the group before it trains; a batch is then a contiguous slice (a view), never a per-batch gather.
    Keras prefetches the batches (``tf.data`` on TensorFlow, device transfers on JAX). ``transform`` turns a gathered
    group's items into the model's input (texts into word ids), in the same background thread.
    """
    import keras

    counts = stored.shard_counts(split)

    class ShardBatches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=1, use_multiprocessing=False)  # no worker threads: slices need none
            self.batch_size = batch_size
            self.epoch = 0
            self.prefetch = ThreadPoolExecutor(1, thread_name_prefix="shard-batches")
            self.loaded: dict[int, artifacts.Split] = {}  # shards of the groups in use, kept across epochs
            self.lock = threading.Lock()  # self.loaded: filled by the prefetch thread, pruned by the caller
            self._plan()

        def _plan(self) -> None:
            rng = np.random.default_rng([seed, self.epoch]) if seed is not None else None
            shards = rng.permutation(len(counts)) if rng is not None else np.arange(len(counts))
            size = SHUFFLE_SHARDS if rng is not None else 1
            self.groups = [shards[start : start + size] for start in range(0, len(shards), size)]
            self.starts = np.cumsum([0, *(sum(counts[s] for s in group) for group in self.groups)])
            self.ready: dict[int, Any] = {}  # group → Future of its (x, y)

        def _gather(self, g: int, epoch: int, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """Group ``g``'s images in ``epoch``'s order: one scatter per shard into one array."""
            with self.lock:
                known = {int(s): self.loaded.get(int(s)) for s in group}
            parts = [known[int(s)] or stored.shard(split, int(s)) for s in group]
            with self.lock:
                self.loaded.update(zip(group.tolist(), parts, strict=True))
            n = sum(len(part.y) for part in parts)
            if seed is None and len(parts) == 1:
                return (transform or np.asarray)(parts[0].x), parts[0].y
            where = np.random.default_rng([seed, epoch, g]).permutation(n) if seed is not None else np.arange(n)
            x = np.empty((n, *parts[0].x.shape[1:]), dtype=np.result_type(*(part.x.dtype for part in parts)))
            y = np.empty(n, dtype=parts[0].y.dtype)
            offset = 0
            for part in parts:
                dest = where[offset : offset + len(part.y)]
                x[dest], y[dest] = part.x, part.y
                offset += len(part.y)
            return (transform(x) if transform else x), y

        def _group_ahead(self, g: int) -> None:
            if g < len(self.groups) and g not in self.ready:
                self.ready[g] = self.prefetch.submit(self._gather, g, self.epoch, self.groups[g])

        def group(self, g: int) -> tuple[np.ndarray, np.ndarray]:
            """Group ``g`` of this epoch, gathered (the next one starts gathering in the background)."""
            self._group_ahead(g)
            self._group_ahead(g + 1)  # the next group, gathered while this one trains
            for old in [k for k in self.ready if k < g - 1]:  # a batch may span two groups: keep the one before
                del self.ready[old]
            used = {int(s) for k in (g - 1, g, g + 1) if 0 <= k < len(self.groups) for s in self.groups[k]}
            with self.lock:
                for shard in self.loaded.keys() - used:
                    del self.loaded[shard]
            return self.ready[g].result()

        def __len__(self) -> int:
            return math.ceil(int(self.starts[-1]) / batch_size)

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            low, high = index * batch_size, min((index + 1) * batch_size, int(self.starts[-1]))
            g = int(np.searchsorted(self.starts, low, side="right")) - 1
            xs, ys = [], []
            while low < high:  # one slice, or two where the batch spans the end of a group
                x, y = self.group(g)
                a, b = low - int(self.starts[g]), min(high, int(self.starts[g + 1])) - int(self.starts[g])
                xs.append(x[a:b])
                ys.append(y[a:b])
                low, g = int(self.starts[g]) + b, g + 1
            return (xs[0], ys[0]) if len(xs) == 1 else (np.concatenate(xs), np.concatenate(ys))

        def on_epoch_end(self) -> None:
            self.epoch += 1
            if seed is not None:
                self._plan()
                self._group_ahead(0)  # the next epoch's first group, gathered while validation and callbacks run

        def start_epoch(self, epoch: int) -> None:
            """Serve ``epoch``'s order next (a resume starts at the epoch after its backup, not at 0)."""
            if epoch != self.epoch:
                self.epoch = epoch
                self._plan()

    return ShardBatches()


def keras_input(batches: keras.utils.PyDataset) -> Any:
    """What ``fit`` and ``predict`` read from :func:`shard_batches`: the batches themselves, or on TensorFlow a
    ``tf.data`` pipeline over the same groups: one Python call per gathered group, the batches cut by ``tf.data``.

    Keras reads a PyDataset on TensorFlow through ``Dataset.from_generator``, whose kernel sets glibc's mmap threshold
    to 128 KiB for the whole process (TensorFlow's workaround for a Python 3.11 leak): every tensor above it is then
    mapped and unmapped at each step, and the seed CNN trains at half speed on CPU (docs/performance.md). The order
    of the batches is the same; the epoch's order is set by :func:`epoch_order`.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return batches
    import tensorflow as tf

    x0, y0 = batches.group(0)
    out = (tf.as_dtype(x0.dtype), tf.as_dtype(y0.dtype))

    def items(g: tf.Tensor) -> tf.data.Dataset:
        x, y = tf.numpy_function(lambda g: batches.group(int(g)), [g], out, stateful=True)
        x, y = tf.ensure_shape(x, (None, *x0.shape[1:])), tf.ensure_shape(y, (None,))
        return tf.data.Dataset.from_tensor_slices((x, y))

    groups = tf.data.Dataset.range(len(batches.groups))
    data = groups.flat_map(items).batch(batches.batch_size).prefetch(tf.data.AUTOTUNE)
    return data.apply(tf.data.experimental.assert_cardinality(len(batches)))


def epoch_order(batches: keras.utils.PyDataset) -> Any:
    """The callback that serves each of ``fit``'s epochs in that epoch's shuffle (:func:`shard_batches`): a resumed
    fit starts at the epoch after its backup, and Keras peeks a batch of a PyDataset and ends its epoch once before
    the first, so the dataset's own count is not ``fit``'s."""
    import keras

    return keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs=None: batches.start_epoch(epoch))


def backup_due(unsaved: float, epoch: float, seconds: float) -> bool:
    """Whether to back up at this epoch's end: waiting for one more epoch (taking ``epoch`` seconds, as this one did)
    would leave more than ``seconds`` of training unsaved (``unsaved``: seconds since the last backup)."""
    return unsaved + epoch > seconds


def timed_backup(
    backup_dir: Path,
    seconds: float,
    before_backup: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Any:
    """Keras' ``BackupAndRestore`` (double checkpoint, deleted when training ends), written at the end of an epoch only
    when :func:`backup_due` says so, and after the last epoch: a kill loses at most ``seconds`` of training (or one
    epoch, where an epoch takes longer), and a resume never repeats an epoch whose backup was written.

    ``before_backup`` runs first (MLflow's flush): what the epochs before a backup logged is stored before it.
    ``clock``: seconds, for tests.
    """
    import keras

    class TimedBackupAndRestore(keras.callbacks.BackupAndRestore):
        def on_train_begin(self, logs: dict | None = None) -> None:
            super().on_train_begin(logs)
            self.saved_at = self.epoch_ended = clock()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            now = clock()
            last = epoch + 1 >= self.params["epochs"]
            if last or backup_due(now - self.saved_at, now - self.epoch_ended, seconds):
                if before_backup is not None:
                    before_backup()
                super().on_epoch_end(epoch, logs)
                now = self.saved_at = clock()
            self.epoch_ended = now

    # The backup is not written atomically; double_checkpoint keeps the previous one to fall back on if a kill
    # truncates it.
    return TimedBackupAndRestore(str(backup_dir), save_freq="epoch", double_checkpoint=True, delete_checkpoint=True)


def epoch_callbacks(
    params: TrainParams,
    backup_dir: Path,
    history_csv: Path,
    extra_callbacks: list[Any] | None = None,
    before_backup: Callable[[], None] | None = None,
) -> list[Any]:
    """The callbacks of :func:`fit`, in order: history row, ``extra_callbacks`` (MLflow), the timed backup
    (:func:`timed_backup`, ``before_backup`` first), early stopping, learning-rate plateau."""
    import keras

    # A schedule owns the learning rate; ReduceLROnPlateau could not set it (and would fight it).
    plateau = (
        [
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=params.lr_plateau_factor, patience=params.lr_plateau_patience
            )
        ]
        if params.lr_schedule == "plateau"
        else []
    )
    return [
        # The history row and the epoch's logging (extra_callbacks: MLflow, flushed by before_backup) come before the
        # backup: a kill before it repeats the epochs since the last backup on resume (history_rows keeps the last
        # row per epoch; MLflow keeps both values of such an epoch's step) rather than losing their rows or metrics.
        keras.callbacks.CSVLogger(str(history_csv), append=True),
        *(extra_callbacks or []),
        timed_backup(backup_dir, params.checkpoint_seconds, before_backup),
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=params.early_stopping_patience, restore_best_weights=True
        ),
        *plateau,
    ]


def fit(
    classifier: keras.Model,
    train: keras.utils.PyDataset,
    val: keras.utils.PyDataset,
    params: TrainParams,
    backup_dir: Path,
    history_csv: Path,
    extra_callbacks: list[Any] | None = None,
    before_backup: Callable[[], None] | None = None,
) -> float:
    """Compile and fit ``train`` (:func:`shard_batches`): early stopping on val loss, the learning rate of
    ``params.lr_schedule``, a checkpoint every ``params.checkpoint_seconds`` (:func:`timed_backup`), resume at the
    epoch after the last backup, in that epoch's shuffle. Returns the seconds ``model.fit`` took."""
    import keras

    steps_per_epoch = len(train)
    classifier.compile(
        optimizer=keras.optimizers.Adam(learning_rate(params, steps_per_epoch)),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    callbacks = [epoch_order(train), *epoch_callbacks(params, backup_dir, history_csv, extra_callbacks, before_backup)]
    start = time.perf_counter()
    classifier.fit(
        keras_input(train),
        validation_data=keras_input(val),
        epochs=params.epochs,
        shuffle=False,  # train shuffles itself, shard by shard (shard_batches)
        callbacks=callbacks,
        verbose=1 if sys.stdout.isatty() else 2,
    )
    return time.perf_counter() - start


def history_rows(history_csv: Path) -> bytes:
    """The per-epoch history, keeping the last row of an epoch that was repeated after a resume."""
    lines = history_csv.read_text().splitlines()
    by_epoch = {line.split(",", 1)[0]: line for line in lines[1:]}
    return ("\n".join([lines[0], *by_epoch.values()]) + "\n").encode()


def save_model(model: keras.Model, path: Path) -> None:
    """Save atomically (Keras needs the .keras suffix on the temporary name too)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    artifacts.remove_leftovers(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp.keras")
    os.close(fd)
    try:
        model.save(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def run(params: Params, callbacks: list[Any] | None = None) -> dict:
    """Fit on data/augmented with normalize's statistics as the model's first layers; save the raw-pixel (raw-string)
    model and the per-epoch history.

    ``callbacks``: more Keras callbacks for ``fit``, after the MLflow one (a tuning trial's pruning, flows/tune.py).
    """
    keras = import_keras()

    cfg = params.train
    device = detect_device()
    data = artifacts.open_dataset(Path(params.paths.augmented))
    stats = artifacts.read_statistics(Path(params.paths.normalized), data)
    require_backend(data.kind, device["backend"])
    model_fn, model_tags = check_model(data, stats, cfg)  # a bad train.model: one line, before any run or training
    if cfg.mixed_precision == "mixed_float16" or (cfg.mixed_precision == "auto" and device["device"] == "GPU"):
        keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(params.seed)
    manifest = data.manifest

    checkpoints = Path(params.paths.checkpoints)
    key = checkpoint_key(cfg, manifest, params.seed, stats, model_fn.source_hash())
    backup_dir, history_csv = checkpoints / key, checkpoints / f"{key}.history.csv"
    run_marker = checkpoints / f"{key}.mlflow_run"
    if backup_dir.exists() and run_marker.is_file():
        run_id = run_marker.read_text().strip()  # a resumed training continues its MLflow run
        log.info("train: resuming MLflow run %s from the checkpoint in %s", run_id, backup_dir)
        tracking.resume_run(params.tracking, Path(params.paths.run_info), run_id, params.train)
    else:
        history_csv.unlink(missing_ok=True)  # no checkpoint to resume from: start the history afresh
        run_id = tracking.start_run(params.tracking, Path(params.paths.run_info), params, device)
        checkpoints.mkdir(parents=True, exist_ok=True)
        artifacts.write_bytes(run_marker, run_id.encode())
    tracking.set_tags(params.tracking, run_id, model_tags)  # the architecture, its arguments and parameter count

    metrics = tracking.epoch_callback(params.tracking, run_id)  # async: flushed before each backup and at the end
    with distribution(cfg) as replicas:
        transform, vectorizer = None, None
        if data.kind == "text":
            vectorizer = vectorize.text_vectorizer(
                vocabulary=vectorize.read_vocabulary(Path(params.paths.normalized), stats),
                length=stats["sequence_length"],
            )

            def transform(texts: np.ndarray) -> np.ndarray:
                return np.asarray(vectorizer(texts), dtype=np.int32)

        model = build_model(data, stats, cfg, model_fn)
        try:
            fit_seconds = fit(
                model,
                shard_batches(data, "train", cfg.batch_size, params.seed, transform),
                shard_batches(data, "val", cfg.batch_size, None, transform),
                cfg,
                backup_dir,
                history_csv,
                extra_callbacks=[metrics, *(callbacks or [])],
                before_backup=metrics.flush,
            )
        finally:
            metrics.flush()  # also when a callback stopped fit (a pruned trial): its finished epochs are logged
        save_model(model if vectorizer is None else text_model(vectorizer, model), Path(params.paths.model))
    history = history_rows(history_csv)
    artifacts.write_bytes(Path(params.paths.history), history)
    drift.write_reference(artifacts.open_dataset(Path(params.paths.clean)), params)  # in raw pixel space
    epochs_run = history.count(b"\n") - 1
    tracking.log_datasets(params.tracking, run_id, params.paths.augmented, ("train", "val"))
    tracking.log_artifacts(params.tracking, run_id, [params.paths.history, params.paths.reference_stats], "train")
    tracking.set_tags(
        params.tracking,
        run_id,
        {"train.epochs_run": epochs_run, "train.fit_seconds": f"{fit_seconds:.1f}", "train.replicas": replicas},
    )
    history_csv.unlink()
    run_marker.unlink()
    shutil.rmtree(backup_dir, ignore_errors=True)
    report = {
        **device,
        "epochs_run": epochs_run,
        "fit_seconds": round(fit_seconds, 1),
        "replicas": replicas,
        "policy": keras.mixed_precision.global_policy().name,
    }
    log.info(
        "train: %s saved after %d epochs (model.fit %.1f s) on %s (%s)",
        params.paths.model,
        epochs_run,
        fit_seconds,
        device["device_name"],
        device["backend"],
    )
    return report


if __name__ == "__main__":
    from tasks.lib.cli import main

    main("train", run)
