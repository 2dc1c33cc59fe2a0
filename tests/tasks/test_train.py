"""tasks/train.py: the networks' shapes, the raw-pixel wrapper, a tiny fit and the checkpoint key."""

from __future__ import annotations

import csv
from pathlib import Path

import keras
import numpy as np
import pytest

from tasks.artifacts import Split, describe
from tasks.config import NormalizeParams, Params, TrainParams
from tasks.normalize import apply, statistics
from tasks.train import _conv_padding, build_classifier, checkpoint_key, fit, with_preprocessing
from tests.conftest import MakeDataset


@pytest.fixture
def tiny(params: Params) -> TrainParams:
    small = {"filters": (4, 8), "dense_units": 16, "epochs": 1, "batch_size": 16}
    return params.train.model_copy(update=small)


@pytest.mark.parametrize("model", ["cnn", "mlp"])
@pytest.mark.parametrize(("shape", "classes"), [((8, 8, 1), 10), ((28, 28, 1), 10), ((32, 32, 3), 4)])
def test_build_classifier_shapes(tiny: TrainParams, model: str, shape: tuple[int, int, int], classes: int) -> None:
    net = build_classifier(shape, classes, tiny.model_copy(update={"model": model}))
    assert net.input_shape == (None, *shape)
    assert net.output_shape == (None, classes)
    out = keras.ops.convert_to_numpy(net(np.zeros((2, *shape), np.float32), training=False))
    assert out.shape == (2, classes) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_cnn_uses_the_seed_layers(tiny: TrainParams) -> None:
    net = build_classifier((28, 28, 1), 10, tiny.model_copy(update={"l2": 0.01}))
    convs = [layer for layer in net.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [4, 8]
    assert all(c.padding == "valid" and c.kernel_regularizer is not None for c in convs)
    assert sum(isinstance(layer, keras.layers.MaxPooling2D) for layer in net.layers) == 2


@pytest.mark.parametrize(
    ("size", "padding"),
    [(28, "valid"), (13, "valid"), (8, "valid"), (6, "valid"), (5, "same"), (3, "same"), (1, "same")],
)
def test_conv_padding(size: int, padding: str) -> None:
    assert _conv_padding(size) == padding


@pytest.mark.parametrize("method", ["scale", "standardize"])
@pytest.mark.parametrize("shape", [(8, 8, 1), (6, 6, 3)])
def test_with_preprocessing_equals_normalize_then_classifier(
    tiny: TrainParams, method: str, shape: tuple[int, int, int]
) -> None:
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).integers(0, 256, (5, *shape), dtype=np.uint8)
    stats = statistics(x, NormalizeParams(method=method))
    classifier = build_classifier(shape, 3, tiny)
    model = with_preprocessing(classifier, shape, stats)
    assert model.inputs[0].dtype == "uint8"
    raw = keras.ops.convert_to_numpy(model(x, training=False))
    reference = keras.ops.convert_to_numpy(classifier(apply(x, stats), training=False))
    np.testing.assert_allclose(raw, reference, rtol=1e-4, atol=1e-6)


def test_one_epoch_fit_writes_history(tmp_path: Path, tiny: TrainParams, make_dataset: MakeDataset) -> None:
    keras.utils.set_random_seed(0)
    data = make_dataset({"train": 64, "val": 16}, shape=(8, 8, 1), num_classes=2)
    train = Split(data.splits["train"].x.astype(np.float32) / 255, data.splits["train"].y)
    val = Split(data.splits["val"].x.astype(np.float32) / 255, data.splits["val"].y)
    classifier = build_classifier((8, 8, 1), 2, tiny)
    backup, history = tmp_path / "backup", tmp_path / "history.csv"
    fit(classifier, train, val, tiny, backup, history)
    with history.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["epoch"] == "0"
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(rows[0])
    assert np.isfinite(float(rows[0]["loss"])) and 0 <= float(rows[0]["val_accuracy"]) <= 1
    assert not backup.exists()  # the backup is deleted once training completes


def test_checkpoint_key(tiny: TrainParams, make_dataset: MakeDataset) -> None:
    manifest = describe(make_dataset())
    key = checkpoint_key(tiny, manifest, 42)
    assert len(key) == 16 and key == checkpoint_key(tiny, describe(make_dataset()), 42)
    assert checkpoint_key(tiny.model_copy(update={"epochs": 2}), manifest, 42) != key
    assert checkpoint_key(tiny.model_copy(update={"learning_rate": 0.01}), manifest, 42) != key
    assert checkpoint_key(tiny, manifest, 43) != key
    assert checkpoint_key(tiny, describe(make_dataset(seed=1)), 42) != key
