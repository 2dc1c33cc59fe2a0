"""tasks/train.py: the networks' shapes, batch norm, the learning-rate schedule, normalize's statistics as the model's
first layers, the uint8 input path, a tiny fit and its resume, the checkpoint key, and the stage itself: augment's
items and normalize's statistics in, a model of raw pixels or raw strings out."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from architectures.builtin import _conv_padding
from tasks.lib import tracking, vectorize
from tasks.lib.artifacts import Dataset, open_dataset, write_dataset
from tasks.lib.config import NormalizeParams, Params, TrainParams
from tasks.lib.errors import TrainflowError
from tasks.normalize import channel_sums, statistics
from tasks.train import (
    SHUFFLE_SHARDS,
    backup_due,
    build_classifier,
    build_text_classifier,
    checkpoint_key,
    distribution,
    epoch_order,
    fit,
    keras_input,
    learning_rate,
    require_backend,
    save_model,
    shard_batches,
    text_model,
    timed_backup,
)
from tests.conftest import REPO, MakeDataset, tiny_texts
from tests.helpers import committed_params_file


def scale(channels: int = 1) -> dict:
    """normalize.method=scale's statistics."""
    return {"method": "scale", "scale": 1 / 255, "mean": [0.0] * channels, "std": [1.0] * channels}


@pytest.fixture
def tiny(params: Params) -> TrainParams:
    small = {"filters": (4, 8), "dense_units": 16, "epochs": 1, "batch_size": 16}
    return params.train.model_copy(update=small)


@pytest.mark.parametrize("model", ["cnn", "mlp"])
@pytest.mark.parametrize(("shape", "classes"), [((8, 8, 1), 10), ((28, 28, 1), 10), ((32, 32, 3), 4)])
def test_build_classifier_shapes(tiny: TrainParams, model: str, shape: tuple[int, int, int], classes: int) -> None:
    net = build_classifier(shape, classes, tiny.model_copy(update={"model": model}), scale(shape[-1]))
    assert net.input_shape == (None, *shape) and net.inputs[0].dtype == "uint8"
    assert net.output_shape == (None, classes)
    out = keras.ops.convert_to_numpy(net(np.zeros((2, *shape), np.uint8), training=False))
    assert out.shape == (2, classes) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_cnn_uses_the_seed_layers(tiny: TrainParams) -> None:
    net = build_classifier((28, 28, 1), 10, tiny.model_copy(update={"l2": 0.01}), scale())
    convs = [layer for layer in net.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [4, 8]
    assert all(c.padding == "valid" and c.kernel_regularizer is not None for c in convs)
    assert sum(isinstance(layer, keras.layers.MaxPooling2D) for layer in net.layers) == 2


@pytest.mark.parametrize(
    ("model", "shape", "expected"), [("cnn", (28, 28, 1), 3), ("cnn", (8, 8, 1), 3), ("mlp", (8, 8, 1), 2)]
)
def test_batch_norm_before_every_hidden_relu(
    tiny: TrainParams, model: str, shape: tuple[int, int, int], expected: int
) -> None:
    plain = build_classifier(shape, 10, tiny.model_copy(update={"model": model}), scale(shape[-1]))
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in plain.layers)
    net = build_classifier(shape, 10, tiny.model_copy(update={"model": model, "batch_norm": True}), scale(shape[-1]))
    norms = [i for i, layer in enumerate(net.layers) if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == expected
    for i in norms:  # weights without bias → (max pooling) → batch norm → ReLU
        before = net.layers[i - 2] if isinstance(net.layers[i - 1], keras.layers.MaxPooling2D) else net.layers[i - 1]
        assert isinstance(before, keras.layers.Conv2D | keras.layers.Dense)
        assert not before.use_bias and before.activation is keras.activations.linear
        assert net.layers[i + 1].activation is keras.activations.relu
    out = keras.ops.convert_to_numpy(net(np.zeros((2, *shape), np.uint8), training=False))
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_plateau_is_a_constant_learning_rate(tiny: TrainParams) -> None:
    assert learning_rate(tiny, steps_per_epoch=10) == tiny.learning_rate


def test_cosine_warms_up_then_decays_to_zero(tiny: TrainParams) -> None:
    cfg = tiny.model_copy(update={"lr_schedule": "cosine", "epochs": 5, "lr_warmup_epochs": 1, "learning_rate": 0.01})
    schedule = learning_rate(cfg, steps_per_epoch=10)
    at = {step: float(keras.ops.convert_to_numpy(schedule(step))) for step in (0, 5, 10, 30, 50)}
    assert at[0] == 0.0
    assert at[5] == pytest.approx(0.005)  # halfway up the linear warm-up
    assert at[10] == pytest.approx(0.01)  # the peak at the end of the warm-up
    assert at[30] == pytest.approx(0.005)  # halfway down the cosine (epochs 1..5)
    assert at[50] == pytest.approx(0.0, abs=1e-9)
    no_warmup = learning_rate(cfg.model_copy(update={"lr_warmup_epochs": 0}), steps_per_epoch=10)
    assert float(keras.ops.convert_to_numpy(no_warmup(0))) == pytest.approx(0.01)


class _Interrupt(Exception):
    pass


class _Probe(keras.callbacks.Callback):
    """Records the optimizer's step and learning rate at every epoch start; raises at ``stop_at``, like a kill."""

    def __init__(self, stop_at: int | None = None, train: keras.utils.PyDataset | None = None) -> None:
        super().__init__()
        self.stop_at, self.seen, self.train, self.first_batches = stop_at, {}, train, {}

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if epoch == self.stop_at:
            raise _Interrupt
        optimizer = self.model.optimizer
        self.seen[epoch] = (int(optimizer.iterations), float(keras.ops.convert_to_numpy(optimizer.learning_rate)))
        if self.train is not None:  # the images the epoch starts with
            self.first_batches[epoch] = np.array(self.train[0][0])


def test_fit_with_batch_norm_and_cosine_follows_the_schedule_across_a_resume(
    tmp_path: Path, tiny: TrainParams, make_dataset: MakeDataset
) -> None:
    keras.utils.set_random_seed(0)
    cfg = tiny.model_copy(
        update={
            "batch_norm": True,
            "lr_schedule": "cosine",
            "epochs": 3,
            "lr_warmup_epochs": 1,
            "learning_rate": 0.01,
            "checkpoint_seconds": 0,  # a backup every epoch
        }
    )
    data = make_dataset({"train": 64, "val": 16}, shape=(8, 8, 1), num_classes=2)
    train, val = streams(tmp_path, data, cfg.batch_size)
    steps = 64 // cfg.batch_size
    schedule = learning_rate(cfg, steps)
    backup, history = tmp_path / "backup", tmp_path / "history.csv"

    killed = _Probe(stop_at=2)
    with pytest.raises(_Interrupt):
        fit(build_classifier((8, 8, 1), 2, cfg, scale()), train, val, cfg, backup, history, extra_callbacks=[killed])
    assert backup.exists()

    # a new process: new streams, which would start at epoch 0's shuffle (the defect this catches: fit not telling
    # the stream the epoch it resumes at, so the resumed epoch 2 repeats epoch 0's order)
    train, val = streams(tmp_path / "again", data, cfg.batch_size)
    resumed, classifier = _Probe(train=train), build_classifier((8, 8, 1), 2, cfg, scale())
    seconds = fit(classifier, train, val, cfg, backup, history, extra_callbacks=[resumed])
    assert seconds > 0
    assert list(resumed.seen) == [2]  # epochs 0 and 1 came from the checkpoint
    uninterrupted, _ = streams(tmp_path / "reference", data, cfg.batch_size)
    epoch_0 = np.array(uninterrupted[0][0])
    uninterrupted.on_epoch_end()
    uninterrupted.on_epoch_end()
    np.testing.assert_array_equal(resumed.first_batches[2], uninterrupted[0][0])  # epoch 2's shuffle, as unkilled
    assert not np.array_equal(epoch_0, resumed.first_batches[2])
    step, rate = resumed.seen[2]
    assert step == 2 * steps  # the optimizer's step count was restored, so the schedule continues
    assert rate == pytest.approx(float(keras.ops.convert_to_numpy(schedule(2 * steps))))
    assert int(classifier.optimizer.iterations) == 3 * steps
    with history.open() as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1", "2"]
    assert not backup.exists()


def test_a_backup_is_due_when_one_more_epoch_would_leave_more_than_checkpoint_seconds_unsaved() -> None:
    assert not backup_due(unsaved=0.5, epoch=0.5, seconds=1.0)  # the next epoch ends at 1.0 s: still within
    assert backup_due(unsaved=0.6, epoch=0.5, seconds=1.0)  # it would end at 1.1 s: back up now
    assert backup_due(unsaved=3.0, epoch=3.0, seconds=1.0)  # epochs longer than checkpoint_seconds: every epoch
    assert backup_due(unsaved=0.001, epoch=0.001, seconds=0.0)  # 0: every epoch


class _Clock(keras.callbacks.Callback):
    """A fake clock that each epoch advances by ``seconds[epoch]``; records the backups' epochs, as a resume reads
    them, and what ran before each (``flushed``); raises at ``stop_at``, like a kill."""

    def __init__(self, backup: Path, seconds: list[float], stop_at: int | None = None) -> None:
        super().__init__()
        self.backup, self.seconds, self.stop_at = backup, seconds, stop_at
        self.now, self.backups, self.flushed, self.trained = 0.0, [], [], []
        self.seen = self.backed_up()  # a backup there before (a resume's)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if epoch == self.stop_at:
            raise _Interrupt
        self.trained.append(epoch)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.now += self.seconds[epoch]  # before the backup's callback: the epoch's training took this long

    def flush(self) -> None:
        self.flushed.append(self.now)

    def saved(self) -> None:  # after the backup's callback: a new backup?
        if (epoch := self.backed_up()) != self.seen:
            self.backups.append((epoch, self.now))
            self.seen = epoch

    def backed_up(self) -> int:
        metadata = self.backup / "training_metadata.json"
        return json.loads(metadata.read_text())["epoch"] if metadata.exists() else 0


def test_the_backup_is_written_by_time_and_a_resume_repeats_no_backed_up_epoch(
    tmp_path: Path, tiny: TrainParams, make_dataset: MakeDataset
) -> None:
    """Eight epochs of 0.3 s (the first 1.5 s), checkpoint_seconds 1: backups after 1 and 4 epochs (fake time 1.5
    and 2.4 s), never more than 1 s of training unsaved after the first epoch; killed as epoch 6 (of 0–7) begins,
    the resume trains epochs 4–7 and backs up after 7 epochs and after the last.

    Fails with backups every epoch (``super().on_epoch_end`` unconditional in ``timed_backup``), without the look
    ahead (``backup_due`` as ``unsaved >= seconds``: 1.2 s unsaved), or with ``fit`` restarting from epoch 0."""
    keras.utils.set_random_seed(0)
    cfg = tiny.model_copy(update={"epochs": 8, "checkpoint_seconds": 1.0})
    data = make_dataset({"train": 32, "val": 16}, shape=(8, 8, 1), num_classes=2)
    train, val = streams(tmp_path, data, cfg.batch_size)
    backup = tmp_path / "backup"
    seconds = [1.5] + [0.3] * 7

    def attempt(stop_at: int | None) -> _Clock:
        clock = _Clock(backup, seconds, stop_at)
        model = build_classifier((8, 8, 1), 2, cfg, scale())
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        saved = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: clock.saved())
        callbacks = [clock, timed_backup(backup, cfg.checkpoint_seconds, clock.flush, lambda: clock.now), saved]
        with contextlib.suppress(_Interrupt):
            model.fit(train, validation_data=val, epochs=cfg.epochs, shuffle=False, callbacks=callbacks, verbose=0)
        return clock

    killed = attempt(stop_at=6)
    assert [epoch for epoch, _ in killed.backups] == [1, 4]  # not every epoch: epochs 2, 3 and 5 were not backed up
    assert killed.flushed == [at for _, at in killed.backups]  # MLflow flushed right before each backup
    unsaved = np.diff([0.0] + [at for _, at in killed.backups] + [killed.now])
    assert unsaved[0] == pytest.approx(1.5)  # the first epoch alone is longer than checkpoint_seconds
    assert max(unsaved[1:]) <= cfg.checkpoint_seconds  # a kill at any moment since loses at most checkpoint_seconds
    resumed = attempt(stop_at=None)
    assert resumed.trained == [4, 5, 6, 7]  # from the last backup: the backed-up epochs 0–3 are not repeated
    assert [epoch for epoch, _ in resumed.backups] == [7, 8]  # by time, then the last epoch's
    assert not backup.exists()  # deleted once training completes


def test_every_epoch_is_in_the_mlflow_run_when_fit_ends(
    tmp_path: Path, params: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The epoch callback logs asynchronously; the end of fit waits for all of it. Fails without the flush in
    ``on_train_end`` (the last epoch not sent, the queue not written) or with epochs logged under other steps."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = params.tracking.model_copy(update={"uri": f"sqlite:///{tmp_path}/mlflow.db"})
    tracker = tracking.client(settings)
    experiment = tracker.create_experiment("epochs", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = tracker.create_run(experiment).info.run_id
    callback = tracking.epoch_callback(settings, run_id)
    for epoch in range(20):  # the hooks as fit calls them
        callback.on_epoch_begin(epoch)
        callback.on_epoch_end(epoch, {"loss": 1 / (epoch + 1), "accuracy": 0.5, "learning_rate": 0.001})
    callback.on_train_end()
    for key in ("loss", "accuracy", "learning_rate"):
        history = tracker.get_metric_history(run_id, key)
        assert sorted(m.step for m in history) == list(range(20)), key
    assert {m.step: m.value for m in tracker.get_metric_history(run_id, "loss")}[19] == pytest.approx(1 / 20)


def streams(tmp_path: Path, data: Dataset, batch_size: int, shard_size: int = 24) -> tuple:
    """Train and val of ``data`` (uint8), stored in shards as augment stores them, streamed as train streams them."""
    write_dataset(tmp_path / "augmented", data, shard_size)
    stored = open_dataset(tmp_path / "augmented")
    return shard_batches(stored, "train", batch_size, 0), shard_batches(stored, "val", batch_size, None)


def test_shard_batches_visit_every_image_once_per_epoch_shard_by_shard(
    tmp_path: Path, make_dataset: MakeDataset
) -> None:
    data = make_dataset({"train": 200, "val": 25}, shape=(2, 2, 1))
    data.splits["train"].x[:, 0, 0, 0] = np.arange(200)  # each image's id in its first pixel
    write_dataset(tmp_path / "d", data, shard_size=10)  # 20 shards: shuffled in groups of SHUFFLE_SHARDS
    stored = open_dataset(tmp_path / "d")
    train = shard_batches(stored, "train", 8, seed=3)
    assert len(train) == 25
    orders = []
    for _ in range(2):
        batches = [train[i] for i in range(len(train))]
        assert [len(x) for x, _ in batches] == [8] * 25
        seen = np.concatenate([x[:, 0, 0, 0] for x, _ in batches])
        labels = np.concatenate([y for _, y in batches])
        assert sorted(seen.tolist()) == list(range(200))  # every image exactly once
        first_group = {int(i) // 10 for i in seen[: 10 * SHUFFLE_SHARDS]}
        assert len(first_group) == SHUFFLE_SHARDS  # the first group's shards, images shuffled together
        np.testing.assert_array_equal(labels, data.splits["train"].y[seen])  # labels travel with their images
        assert len(train.loaded) <= 3 * SHUFFLE_SHARDS  # a bounded number of shards in memory (of 20)
        # a batch is a slice of its group's shuffled array (5 groups of 40 images, 5 batches each): no per-batch gather
        assert all(x.base is not None for x, _ in batches)
        orders.append(seen)
        train.on_epoch_end()
    assert not np.array_equal(orders[0], orders[1])  # a fresh order every epoch
    resumed = shard_batches(stored, "train", 8, seed=3)
    resumed.start_epoch(1)  # a resume at epoch 1: that epoch's order, not epoch 0's
    np.testing.assert_array_equal(np.concatenate([resumed[i][0][:, 0, 0, 0] for i in range(25)]), orders[1])
    again = shard_batches(stored, "train", 8, seed=3)
    np.testing.assert_array_equal(np.concatenate([again[i][0][:, 0, 0, 0] for i in range(25)]), orders[0])
    spanning = shard_batches(stored, "train", 12, seed=3)  # batches that span two groups join two slices
    seen = np.concatenate([spanning[i][0][:, 0, 0, 0] for i in range(len(spanning))])
    np.testing.assert_array_equal(seen, orders[0])  # the same order as batch 8: batches cut one sequence
    val = shard_batches(stored, "val", 4, seed=None)  # three shards, each once, in stored order
    assert len(val) == 7
    np.testing.assert_array_equal(np.concatenate([val[i][0] for i in range(len(val))]), data.splits["val"].x)


def test_keras_reads_the_same_batches_through_tf_data_and_fit_never_uses_from_generator(
    tmp_path: Path, tiny: TrainParams, make_dataset: MakeDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On TensorFlow, ``fit`` and ``predict`` read shard_batches through keras_input's tf.data pipeline: each epoch
    the same batches, in the same order, as the PyDataset itself. Keras' own route for a PyDataset,
    ``Dataset.from_generator``, pins glibc's mmap threshold for the whole process and halves CPU training speed: a fit
    that reached it fails here (mutation: keras_input returning the batches)."""
    import tensorflow as tf

    data = make_dataset({"train": 200, "val": 25}, shape=(2, 2, 1), num_classes=2)
    data.splits["train"].x[:, 0, 0, 0] = np.arange(200)  # each image's id in its first pixel
    write_dataset(tmp_path / "d", data, shard_size=10)
    stored = open_dataset(tmp_path / "d")
    for epoch in (0, 1):
        train, reference = shard_batches(stored, "train", 12, seed=3), shard_batches(stored, "train", 12, seed=3)
        train.start_epoch(epoch)
        reference.start_epoch(epoch)
        got = list(keras_input(train).as_numpy_iterator())
        assert len(got) == len(reference) == 17  # the last batch short, as Keras cuts arrays
        for (x, y), i in zip(got, range(len(reference)), strict=True):
            np.testing.assert_array_equal(x, reference[i][0])
            np.testing.assert_array_equal(y, reference[i][1])

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("tf.data.Dataset.from_generator: Keras read a PyDataset")

    monkeypatch.setattr(tf.data.Dataset, "from_generator", refused)
    keras.utils.set_random_seed(0)
    train, val = streams(tmp_path / "s", data, tiny.batch_size)
    classifier = build_classifier((2, 2, 1), 2, tiny, scale())
    fit(classifier, train, val, tiny, tmp_path / "backup", tmp_path / "history.csv")
    assert classifier.predict(keras_input(val), verbose=0).shape == (25, 2)
    seen = []
    order = epoch_order(train)
    for epoch in (0, 1):  # the callback sets each epoch's shuffle before Keras reads it
        order.on_epoch_begin(epoch)
        seen.append(np.concatenate([x[:, 0, 0, 0] for x, _ in keras_input(train).as_numpy_iterator()]))
    assert not np.array_equal(seen[0], seen[1]) and sorted(seen[1].tolist()) == list(range(200))


@pytest.mark.parametrize(
    ("size", "padding"),
    [(28, "valid"), (13, "valid"), (8, "valid"), (6, "valid"), (5, "same"), (3, "same"), (1, "same")],
)
def test_conv_padding(size: int, padding: str) -> None:
    assert _conv_padding(size) == padding


@pytest.mark.parametrize("method", ["scale", "standardize"])
@pytest.mark.parametrize("shape", [(8, 8, 1), (6, 6, 3)])
def test_the_model_applies_normalize_statistics_to_raw_pixels(
    tiny: TrainParams, method: str, shape: tuple[int, int, int]
) -> None:
    x = np.random.default_rng(0).integers(0, 256, (5, *shape), dtype=np.uint8)
    stats = statistics(
        [channel_sums(x)], shape[-1], NormalizeParams(method=method, vocabulary_size=100, sequence_quantile=0.95)
    )
    model = build_classifier(shape, 3, tiny, stats)
    assert model.inputs[0].dtype == "uint8"
    last = "standardize" if method == "standardize" else "rescale"
    preprocessed = keras.Model(model.inputs, model.get_layer(last).output)(x, training=False)
    expected = (x / 255 - np.asarray(stats["mean"])) / np.asarray(stats["std"])  # normalize.py's formula
    np.testing.assert_allclose(keras.ops.convert_to_numpy(preprocessed), expected, rtol=1e-4, atol=1e-5)


def test_one_epoch_fit_writes_history(tmp_path: Path, tiny: TrainParams, make_dataset: MakeDataset) -> None:
    keras.utils.set_random_seed(0)
    data = make_dataset({"train": 64, "val": 16}, shape=(8, 8, 1), num_classes=2)
    train, val = streams(tmp_path, data, tiny.batch_size)
    classifier = build_classifier((8, 8, 1), 2, tiny, scale())
    backup, history = tmp_path / "backup", tmp_path / "history.csv"
    fit(classifier, train, val, tiny, backup, history)
    with history.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["epoch"] == "0"
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(rows[0])
    assert np.isfinite(float(rows[0]["loss"])) and 0 <= float(rows[0]["val_accuracy"]) <= 1
    assert not backup.exists()  # the backup is deleted once training completes


def test_checkpoint_key(tmp_path: Path, tiny: TrainParams, make_dataset: MakeDataset) -> None:
    def describe(dataset: Dataset) -> dict:
        return write_dataset(tmp_path / "d", dataset)

    manifest = describe(make_dataset())
    key = checkpoint_key(tiny, manifest, 42, scale())
    assert len(key) == 16 and key == checkpoint_key(tiny, describe(make_dataset()), 42, scale())
    assert checkpoint_key(tiny.model_copy(update={"epochs": 2}), manifest, 42, scale()) != key
    assert checkpoint_key(tiny.model_copy(update={"learning_rate": 0.01}), manifest, 42, scale()) != key
    assert checkpoint_key(tiny, manifest, 43, scale()) != key
    # how often the state is backed up is no part of it: a resume may change train.checkpoint_seconds
    assert checkpoint_key(tiny.model_copy(update={"checkpoint_seconds": 5.0}), manifest, 42, scale()) == key
    assert checkpoint_key(tiny, describe(make_dataset(seed=1)), 42, scale()) != key
    # normalize.method changes the model's first layers, not the data: a checkpoint of the other method is not resumed
    standardized = {**scale(), "method": "standardize", "mean": [0.4], "std": [0.2]}
    assert checkpoint_key(tiny, manifest, 42, standardized) != key
    # an edited model function (its file's hash) never resumes the old function's checkpoint
    assert checkpoint_key(tiny, manifest, 42, scale(), code="a") != checkpoint_key(
        tiny, manifest, 42, scale(), code="b"
    )


# Two logical CPUs stand in for two GPUs: MirroredStrategy then really runs two replicas and all-reduces.
TWO_REPLICAS = """
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from tasks.lib.artifacts import Dataset, Split, open_dataset, write_dataset
from tasks.lib.config import load_params
from tasks.train import build_classifier, distribution, fit, shard_batches
params = load_params(__import__("pathlib").Path(sys.argv[1])).train
cfg = params.model_copy(update={"distribute": "mirrored", "filters": (4, 8), "dense_units": 16, "epochs": 3,
                                "batch_size": 32, "learning_rate": 0.01, "dropout": 0.0})
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
y = np.arange(256) % 2
x = (rng.random((256, 8, 8, 1)) * 50 + y[:, None, None, None] * 200).astype("uint8")  # trivially separable
with distribution(cfg) as replicas:
    net = build_classifier((8, 8, 1), 2, cfg, {"method": "scale", "scale": 1 / 255, "mean": [0.0], "std": [1.0]})
    variable = net.trainable_variables[0]
    mirrored = type(getattr(variable, "value", variable)).__name__
    out = __import__("pathlib").Path(sys.argv[2])
    write_dataset(out / "d", Dataset({"train": Split(x, y), "val": Split(x[:64], y[:64])}, ("a", "b")), 100)
    stored = open_dataset(out / "d")
    train, val = shard_batches(stored, "train", 32, 0), shard_batches(stored, "val", 32, None)
    fit(net, train, val, cfg, out / "b", out / "h.csv")
accuracy = float((net.predict(x, verbose=0).argmax(axis=1) == y).mean())
print(json.dumps({"replicas": replicas, "variable": mirrored, "accuracy": accuracy}))
"""


def test_mirrored_strategy_trains_with_two_replicas(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", TWO_REPLICAS, str(committed_params_file()), str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert "Mirrored" in result["variable"]  # the weights are mirrored on both replicas
    assert result["accuracy"] > 0.9


def test_no_distribution_is_one_replica(tiny: TrainParams) -> None:
    with distribution(tiny) as replicas:
        assert replicas == 1


# --- text ---


@pytest.mark.parametrize(("rnn", "bidirectional"), [("lstm", True), ("gru", False)])
def test_text_classifier_is_embedding_rnn_dense(tiny: TrainParams, rnn: str, bidirectional: bool) -> None:
    cfg = tiny.model_copy(update={"rnn": rnn, "bidirectional": bidirectional, "embedding_dim": 8, "rnn_units": 4})
    net = build_text_classifier(50, 7, 3, cfg)
    assert net.input_shape == (None, 7) and net.output_shape == (None, 3)
    kinds = [type(layer).__name__ for layer in net.layers]
    assert kinds[:3] == ["InputLayer", "Embedding", "Bidirectional" if bidirectional else rnn.upper()]
    assert net.get_layer("embedding").mask_zero and net.get_layer("embedding").input_dim == 50
    out = keras.ops.convert_to_numpy(net(np.array([[2, 3, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]]), training=False))
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_text_model_takes_raw_strings_and_keeps_its_vocabulary_when_saved(tmp_path: Path, tiny: TrainParams) -> None:
    vocabulary = ["", "[UNK]", "free", "cash", "see", "you"]
    vectorizer = vectorize.text_vectorizer(vocabulary=vocabulary, length=4)
    np.testing.assert_array_equal(
        np.asarray(vectorizer(np.array(["Free, CASH!", "see zebra"]))), [[2, 3, 0, 0], [4, 1, 0, 0]]
    )
    classifier = build_text_classifier(len(vocabulary), 4, 2, tiny.model_copy(update={"rnn_units": 4}))
    model = text_model(vectorizer, classifier)
    texts = np.array(["free cash now", "see you"], dtype=object)
    before = np.asarray(model.predict_on_batch(texts))
    save_model(model, tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", compile=False, safe_mode=True)
    assert loaded.inputs[0].dtype == "string"
    np.testing.assert_allclose(np.asarray(loaded.predict_on_batch(texts)), before, rtol=1e-6)


def test_shard_batches_turn_texts_into_word_ids(tmp_path: Path) -> None:
    data = tiny_texts({"train": 20, "val": 6})
    write_dataset(tmp_path / "d", data, shard_size=4)
    stored = open_dataset(tmp_path / "d")
    vectorizer = vectorize.text_vectorizer(vocabulary=["", "[UNK]", "free", "see"], length=5)

    def ids(texts: np.ndarray) -> np.ndarray:
        return np.asarray(vectorizer(texts), dtype=np.int32)

    train = shard_batches(stored, "train", 8, 0, ids)
    batches = [train[i] for i in range(len(train))]
    assert all(x.dtype == np.int32 and x.shape[1] == 5 for x, _ in batches) and sum(len(y) for _, y in batches) == 20
    val = shard_batches(stored, "val", 4, None, ids)
    x, y = val[0]
    np.testing.assert_array_equal(x, ids(data.splits["val"].x[:4]))
    np.testing.assert_array_equal(y, data.splits["val"].y[:4])


def test_a_text_model_needs_the_tensorflow_backend() -> None:
    require_backend("text", "tensorflow")
    require_backend("images", "jax")
    with pytest.raises(TrainflowError, match="a text model needs KERAS_BACKEND=tensorflow, not jax"):
        require_backend("text", "jax")


# --- the stage: augment's items and normalize's statistics in ---

# Writes data/clean and data/augmented (the same items), runs the real normalize and train stages in a fresh process
# (TensorFlow), and prints as JSON what they left: the files of data/normalized, the statistics, what the saved model
# does with raw input, and the error of a second train after data/augmented changed without normalize.
STAGE = """
import json, sys
from pathlib import Path
import keras
import numpy as np
from tasks import normalize, train
from tasks.lib import artifacts
from tasks.lib.artifacts import Dataset, Split
from tasks.lib.config import load_params
from tasks.lib.errors import TrainflowError
from tests.conftest import tiny_texts

kind, params = sys.argv[2], load_params(Path(sys.argv[1]), json.loads(sys.argv[3]))
rng = np.random.default_rng(0)

def split(n):
    y = np.arange(n) % 2
    x = rng.integers(0, 100, (n, 8, 8, 1)) + 150 * y[:, None, None, None]  # dark and bright
    return Split(x.astype(np.uint8), y)

sizes = {"train": 128, "val": 32, "test": 32}
data = tiny_texts() if kind == "text" else Dataset({s: split(n) for s, n in sizes.items()}, ("dark", "bright"))
for path in (params.paths.clean, params.paths.augmented):
    artifacts.write_dataset(Path(path), data)
stats = normalize.run(params)
train.run(params)
folder = Path(params.paths.normalized)
files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
model = keras.saving.load_model(params.paths.model)
test = data.splits["test"]
out = {"files": files, "bytes": sum(p.stat().st_size for p in folder.rglob("*")), "stats": stats,
       "input_dtype": model.inputs[0].dtype, "y": test.y.tolist()}
if kind == "text":
    out["vocabulary"] = model.get_layer("vectorize").get_vocabulary()
    out["saved_vocabulary"] = json.loads((folder / stats["vocabulary"]).read_text())
    out["probs"] = np.asarray(model.predict_on_batch(test.x.astype(object))).tolist()
else:
    first = keras.Model(model.inputs, model.get_layer("standardize").output)
    out["preprocessed"] = keras.ops.convert_to_numpy(first(test.x[:4], training=False)).tolist()
    out["x"] = test.x[:4].tolist()
    out["probs"] = keras.ops.convert_to_numpy(model.predict(test.x, verbose=0)).tolist()
changed = Dataset({**data.splits, "train": Split(data.splits["train"].x[1:], data.splits["train"].y[1:])}, data.classes)
artifacts.write_dataset(Path(params.paths.augmented), changed)  # new data, stale statistics
try:
    train.run(params)
except TrainflowError as exc:
    out["stale"] = str(exc)
print(json.dumps(out))
"""

STAGE_PARAMS = {
    "images": {
        "normalize.method": "standardize",
        "train.epochs": 3,
        "train.filters": [4, 8],
        "train.dense_units": 16,
        "train.batch_size": 16,
        "train.learning_rate": 0.01,
    },
    "text": {"train.epochs": 1, "train.embedding_dim": 8, "train.rnn_units": 4, "train.dense_units": 8},
}


@pytest.mark.parametrize("kind", ["images", "text"])
def test_train_stage_trains_on_augmented_items_with_normalize_statistics(tmp_path: Path, kind: str) -> None:
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("MLFLOW_TRACKING_URI", None)  # params' tracking.uri: an SQLite store in tmp_path
    args = [str(committed_params_file()), kind, json.dumps(STAGE_PARAMS[kind])]
    done = subprocess.run(
        [sys.executable, "-c", STAGE, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    stats = out["stats"]
    # normalize wrote statistics only: train read its items from data/augmented
    assert out["files"] == sorted(["statistics.json", *(["vocabulary.json"] if kind == "text" else [])])
    assert out["bytes"] < 2048
    y, probs = np.array(out["y"]), np.array(out["probs"])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    if kind == "text":
        assert out["input_dtype"] == "string" and out["vocabulary"] == out["saved_vocabulary"]  # raw strings in
    else:
        assert out["input_dtype"] == "uint8"  # raw pixels in, normalize's statistics as the first layers
        expected = (np.array(out["x"]) / 255 - np.array(stats["mean"])) / np.array(stats["std"])
        np.testing.assert_allclose(np.array(out["preprocessed"]), expected, rtol=1e-4, atol=1e-5)
        assert (probs.argmax(axis=1) == y).mean() > 0.8  # dark vs bright: far above chance (0.5)
    assert out["stale"] == (
        "data/normalized/statistics.json: not fitted on data/augmented as it is now (split hashes differ): "
        "rerun normalize"
    )
