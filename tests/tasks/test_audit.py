"""tasks/audit.py: planted label errors found near the top from out-of-sample probabilities, a planted near-duplicate
leak across splits, source ids from the data to the table, the too-small line; the stage in-process on digits."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tasks import audit, ingest
from tasks.lib import artifacts
from tasks.lib.artifacts import Dataset, Split
from tasks.lib.config import AuditParams, Params
from tasks.lib.errors import TrainflowError
from tasks.lib.sources import load_digits
from tests.conftest import load_params
from tests.helpers import committed_params_file

PARAMS = load_params(committed_params_file())
FLIPPED = 25  # 2 % of digits' 1,257 train images


def configured(root: Path, **audit_params: Any) -> Params:
    """The committed params with every path under ``root``, a small CNN and the audit's ``audit_params``."""
    paths = {key: str(root / value) for key, value in PARAMS.paths.model_dump().items()}
    small = PARAMS.train.model_copy(update={"filters": (8, 16), "dense_units": 32, "learning_rate": 0.005})
    return PARAMS.model_copy(
        update={
            "paths": PARAMS.paths.model_copy(update=paths),
            "train": small,
            "audit": PARAMS.audit.model_copy(update=audit_params),
        }
    )


def planted(seed: int = 0) -> tuple[Dataset, np.ndarray, tuple[str, str]]:
    """Digits split as ingest splits them, ``FLIPPED`` train labels changed to another class, and one train image
    copied into test with a few pixels changed (a near-duplicate that exact hashing misses). Returns the dataset, the
    flipped items' ids and the leak's (train id, test id)."""
    dataset = ingest.split(load_digits(), PARAMS.data, PARAMS.ingest, PARAMS.seed)
    rng = np.random.default_rng(seed)
    train = dataset.splits["train"]
    flip = rng.choice(len(train.y), FLIPPED, replace=False)
    y = train.y.copy()
    y[flip] = (y[flip] + rng.integers(1, 10, FLIPPED)) % 10
    test = dataset.splits["test"]
    near = train.x[7].astype(np.int16)
    near[0, :3] = np.clip(near[0, :3] + 17, 0, 255)
    x_test = np.concatenate([test.x, near.astype(np.uint8)[None]])
    test_ids = np.concatenate([test.ids, ["leak.png"]])
    splits = {
        "train": Split(train.x, y, train.ids),
        "val": dataset.splits["val"],
        "test": Split(x_test, np.append(test.y, train.y[7]), test_ids),
    }
    return Dataset(splits, dataset.classes), train.ids[flip], (str(train.ids[7]), "leak.png")


def trained_model(dataset: Dataset, params: Params) -> float:
    """train's own builder fitted on train (the stage itself would open an MLflow run), saved where audit reads it:
    a wide MLP without dropout that memorises train, flipped labels too, as big models do. Returns its accuracy on
    train's given labels."""
    import keras

    from tasks import normalize, train

    keras.utils.set_random_seed(0)
    stats = normalize.statistics([], 1, params.normalize)
    wide = params.train.model_copy(update={"model": "mlp", "dense_units": 256, "dropout": 0.0})
    model = train.build_classifier(dataset.image_shape, len(dataset.classes), wide, stats)
    model.compile(optimizer=keras.optimizers.Adam(0.003), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = dataset.splits["train"].x, dataset.splits["train"].y
    model.fit(x, y, epochs=60, batch_size=64, verbose=0)
    train.save_model(model, Path(params.paths.model))
    return float(model.evaluate(x, y, verbose=0)[1])


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> tuple[Params, dict, np.ndarray, tuple[str, str]]:
    root = tmp_path_factory.mktemp("audit")
    params = configured(root, folds=2, epochs=10)
    dataset, flipped, leak = planted()
    artifacts.write_dataset(Path(params.paths.clean), dataset, shard_size=500)  # several shards per split
    assert trained_model(dataset, params) > 0.99  # it learnt the flipped labels: in-sample, they look right
    return params, audit.run(params), flipped, leak


def rows(params: Params) -> list[dict[str, str]]:
    with (Path(params.paths.audit) / audit.ISSUES).open() as f:
        return list(csv.DictReader(f))


def test_planted_label_errors_are_ranked_near_the_top(audited: tuple) -> None:
    """Most of the 25 flipped train labels among the top 40 label issues, each named by its source id, with the
    original digit suggested. Fails with in-sample probabilities for train (mutation: the trained model's own
    predictions kept for train, i.e. no ``joined["probabilities"][in_train] = ...``): a model that fitted the
    flipped labels gives them high confidence."""
    params, summary, flipped, _ = audited
    labels = [row for row in rows(params) if row["issue"] == "label"]
    top = {row["id"] for row in labels[:40]}
    assert len(top & set(flipped.tolist())) >= 15, (len(top & set(flipped.tolist())), labels[:5])
    assert all(row["id"].startswith("digits:") for row in labels)  # provenance: the table names the source item
    assert summary["flagged"]["label"] == len(labels) and summary["items"]["train"] == 1257


def test_a_near_duplicate_across_splits_is_a_leak(audited: tuple) -> None:
    """The train image copied into test with three pixels changed is flagged as a leak, naming its twin (exact
    hashing, clean's, misses it). Fails without the cross-split check (mutation: ``leak`` all False)."""
    params, _, _, (train_id, test_id) = audited
    leaks = {row["id"]: row for row in rows(params) if row["issue"] == "near_duplicate_leak"}
    assert test_id in leaks and train_id in leaks[test_id]["related"].split()
    assert leaks[test_id]["split"] == "test"


def test_the_audit_writes_reports_only_and_suggestions_to_review(audited: tuple) -> None:
    """summary.json counts and costs; review_suggestions.csv is in the review file's format; top.npy holds the top
    items; the data is unchanged. (New files: fails on the old code, which has no audit.)"""
    params, summary, _, _ = audited
    folder = Path(params.paths.audit)
    assert json.loads((folder / audit.SUMMARY).read_text()) == summary
    assert set(summary["seconds"]) == {"cross_validation", "predict", "cleanlab"}
    suggestions = (folder / audit.SUGGESTIONS).read_text().splitlines()
    assert suggestions[0] == "id,action,label" and suggestions[1].split(",")[1] == "relabel"
    assert np.load(folder / audit.TOP).shape == (params.audit.top, 8, 8, 1)
    assert artifacts.open_dataset(Path(params.paths.clean)).count("test") == 271  # the audit never changes data


def test_a_dataset_too_small_for_cross_validation_is_one_line(tmp_path: Path) -> None:
    """Two items of a class and three folds: one TrainflowError naming audit.folds, before any training (mutation:
    no class count check → scikit-learn's ValueError)."""
    y = np.array([0, 0, 0, 1, 1])
    with pytest.raises(TrainflowError, match=r"too small for 3-fold cross-validation \(audit.folds\): class 'b' \(2\)"):
        audit.assign_folds(y, ("a", "b"), AuditParams(folds=3, epochs=1, top=1), seed=0)
