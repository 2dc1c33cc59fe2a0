"""audit: data/clean and models/model.keras → reports/audit (issues.csv, summary.json, review_suggestions.csv, top.npy):
label issues, outliers and near-duplicates (leaks across splits included), found with cleanlab, for a
person to review (paths.review, which clean applies).

Label issues come from out-of-sample probabilities only: train's from K-fold cross-validation with the pipeline's own
model builder and data path (each fold a sharded dataset, streamed by train's ``shard_batches``, a few epochs),
val's and test's from the trained model, which never saw them. Features (the trained model's last hidden layer) find
outliers and near-duplicates. Nothing is dropped here, and the test split is never changed: the audit only reports.
Memory: a shard at a time while folds are written and predicted, plus the probabilities and features of all items
(what cleanlab needs).
"""

from __future__ import annotations

import csv
import io
import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tasks.lib import architecture, artifacts
from tasks.lib.config import AuditParams, Params
from tasks.lib.errors import TrainflowError
from tasks.lib.source_files import numbered

log = logging.getLogger(__name__)

ISSUES = "issues.csv"
SUMMARY = "summary.json"
SUGGESTIONS = "review_suggestions.csv"
TOP = "top.npy"  # the top label issues' items (images, or texts), in issues.csv's order, for the run report
ISSUE_TYPES = ("label", "near_duplicate_leak", "near_duplicate", "outlier")  # issues.csv's order
COLUMNS = ["rank", "id", "split", "given_label", "suggested_label", "score", "issue", "related"]


def assign_folds(y: np.ndarray, classes: tuple[str, ...], params: AuditParams, seed: int) -> np.ndarray:
    """Each train item's fold (stratified, seeded).

    Raises:
        TrainflowError: a class with fewer train items than folds (too small to cross-validate), in one line.
    """
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y, minlength=len(classes))
    if counts.min() < params.folds:
        few = ", ".join(f"{classes[c]!r} ({counts[c]})" for c in np.flatnonzero(counts < params.folds)[:5])
        raise TrainflowError(
            f"audit: train is too small for {params.folds}-fold cross-validation (audit.folds): class {few} has "
            f"fewer than {params.folds} items; lower audit.folds (at least 2) or add data"
        )
    folds = np.empty(len(y), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=params.folds, shuffle=True, random_state=seed)
    for k, (_, held_out) in enumerate(splitter.split(np.zeros(len(y)), y)):
        folds[held_out] = k
    return folds


def write_fold(clean: artifacts.Stored, folds: np.ndarray, k: int, root: Path) -> artifacts.Stored:
    """Fold ``k`` as a sharded dataset: train = the other folds' items, val = fold ``k``'s, shard by shard."""
    entries: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
    start = 0
    for index, shard in enumerate(clean.shards("train", mmap=True)):
        held_out = folds[start : start + len(shard.y)] == k
        start += len(shard.y)
        entries["train"].append(artifacts.write_shard(root, "train", index, shard.subset(~held_out)))
        entries["val"].append(artifacts.write_shard(root, "val", index, shard.subset(held_out)))
    manifest = artifacts.write_manifest(root, entries, clean.classes, clean.image_shape, clean.manifest["dtype"], {})
    return artifacts.Stored(root, manifest)


def fold_model(fold: artifacts.Stored, params: Params) -> tuple[Any, Callable[[np.ndarray], np.ndarray] | None]:
    """A fresh model from train's builder with statistics (or a vocabulary) fitted on the fold's train part only, and
    the transform its batches need (texts → word ids)."""
    from tasks import normalize, train
    from tasks.lib import vectorize

    if fold.kind == "text":  # normalize's own fit, on the fold's train part (the held-out part is its "val")
        stats, vocabulary = normalize.text_statistics(fold, params)
        length = stats["sequence_length"]
        vectorizer = vectorize.text_vectorizer(vocabulary=vocabulary, length=length)

        def transform(texts: np.ndarray) -> np.ndarray:
            return np.asarray(vectorizer(texts), dtype=np.int32)

        return train.build_text_classifier(len(vocabulary), length, len(fold.classes), params.train), transform
    sums = []
    if params.normalize.method != "scale":
        sums = [normalize.channel_sums(s.x) for s in fold.shards("train", mmap=True)]
    stats = normalize.statistics(sums, fold.image_shape[-1], params.normalize)
    return train.build_classifier(fold.image_shape, len(fold.classes), params.train, stats), None


def cross_validated(clean: artifacts.Stored, params: Params) -> np.ndarray:
    """Out-of-sample class probabilities of every train item: K folds, each predicted by a model that never saw it
    (fit for ``audit.epochs`` epochs on the other folds, no early stopping: that would look at the held-out labels)."""
    import keras

    from tasks import train

    y = np.concatenate([s.y for s in clean.shards("train")])
    folds = assign_folds(y, clean.classes, params.audit, params.seed)
    probabilities = np.zeros((len(y), len(clean.classes)), dtype=np.float32)
    cfg = params.train
    for k in range(params.audit.folds):
        with tempfile.TemporaryDirectory(prefix="audit-fold-") as tmp:
            fold = write_fold(clean, folds, k, Path(tmp))
            model, transform = fold_model(fold, params)
            model.compile(
                optimizer=keras.optimizers.Adam(cfg.learning_rate),
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy"],
            )
            batches = train.shard_batches(fold, "train", cfg.batch_size, params.seed + k, transform)
            model.fit(
                train.keras_input(batches),
                epochs=params.audit.epochs,
                shuffle=False,
                callbacks=[train.epoch_order(batches)],
                verbose=0,
            )
            held_out = train.shard_batches(fold, "val", params.evaluate.batch_size, None, transform)
            probabilities[folds == k] = np.asarray(model.predict(train.keras_input(held_out), verbose=0))
            log.info("audit: fold %d of %d predicted (%d items)", k + 1, params.audit.folds, int((folds == k).sum()))
    return probabilities


def feature_model(model: Any) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The trained model's probabilities and the features it classifies from (the input of its ``probabilities``
    layer; a model without one: its probabilities stand in)."""
    import keras

    def model_input(x: np.ndarray) -> np.ndarray:  # Keras' predict takes texts as an object array of str
        return x.astype(object) if x.dtype.kind == "U" else x

    def inner(m: Any) -> Any:
        try:
            head = m.get_layer("probabilities")
        except ValueError:
            return None
        try:  # the built-ins' last hidden layer feeds their "logits"; a function of the user's: its logits
            features = m.get_layer("logits").input
        except ValueError:
            features = head.input
        return keras.Model(m.inputs, [features, m.outputs[0]])

    both = inner(model)
    if both is None and len(model.layers) >= 2:  # text: raw strings → vectorize → the classifier (a nested model)
        classifier, vectorizer = model.layers[-1], next((la for la in model.layers if la.name == "vectorize"), None)
        nested = inner(classifier) if isinstance(classifier, keras.Model) and vectorizer is not None else None
        if nested is not None:

            def text(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                features, probabilities = nested.predict(np.asarray(vectorizer(x.astype(object))), verbose=0)
                return np.asarray(features), np.asarray(probabilities)

            return text

    def call(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if both is None:
            p = np.asarray(model.predict(model_input(x), verbose=0))
            return p, p
        features, probabilities = both.predict(model_input(x), verbose=0)
        return np.asarray(features), np.asarray(probabilities)

    return call


NEIGHBOURS = 10  # the k of the kNN graph (cleanlab Datalab's default)
NEAR = 0.13  # Datalab's near-duplicate rule: nearer than this × the median nearest-neighbour distance
OUTLIER = 0.37037  # Datalab's outlier rule: mean kNN distance above Q3 + (1 / OUTLIER - 1) × IQR


def find_issues(labels: np.ndarray, probabilities: np.ndarray, features: np.ndarray) -> tuple[Any, list[list[int]]]:
    """Per item: a label issue (cleanlab's confident learning, ``find_label_issues``) and its label quality score,
    an outlier score (cleanlab's ``OutOfDistribution`` on the features), a near-duplicate score; and each item's
    near-duplicates (indices). Outliers and near-duplicates are flagged by Datalab's default rules, on one kNN graph
    (cosine distance) of the features; Datalab itself is not used: it needs Hugging Face ``datasets``.
    Every score: lower is more likely a problem.
    """
    import pandas as pd
    from cleanlab.filter import find_label_issues
    from cleanlab.outlier import OutOfDistribution
    from cleanlab.rank import get_label_quality_scores
    from sklearn.neighbors import NearestNeighbors

    features = np.asarray(features, dtype=np.float32)
    k = min(NEIGHBOURS, len(labels) - 1)
    knn = NearestNeighbors(n_neighbors=k, metric="cosine").fit(features)
    distances, neighbours = knn.kneighbors()  # without each item itself (an exact duplicate stays a neighbour)
    distances = np.maximum(distances, 0.0)
    average = distances.mean(axis=1)
    q1, q3 = np.percentile(average, [25, 75])
    outlier_score = OutOfDistribution({"knn": knn, "k": k}).score(features=features)
    nearest = distances[:, 0]
    median = max(float(np.median(nearest)), 1e-12)
    sets: list[set[int]] = [set(neighbours[i][distances[i] < NEAR * median].tolist()) for i in range(len(labels))]
    for i, near in enumerate(sets):  # near-duplicates of each other, both ways
        for j in near:
            sets[j].add(i)
    issues = pd.DataFrame(
        {
            "is_label_issue": find_label_issues(labels, probabilities),
            "label_score": get_label_quality_scores(labels, probabilities),
            "is_outlier_issue": average > q3 + (1 / OUTLIER - 1) * (q3 - q1),
            "outlier_score": outlier_score,
            "is_near_duplicate_issue": np.array([bool(s) for s in sets]),
            "near_duplicate_score": 1.0 - np.exp(-nearest / median),
            "predicted_label": probabilities.argmax(axis=1),
        }
    )
    return issues, [sorted(s) for s in sets]


def rank_issues(
    issues: Any,
    sets: list[list[int]],
    ids: np.ndarray,
    splits: np.ndarray,
    labels: np.ndarray,
    classes: tuple[str, ...],
) -> list[dict[str, Any]]:
    """issues.csv's rows: each flagged item once per issue type, ranked within the type by cleanlab's score (lower:
    more likely a problem). A near-duplicate with one in another split is a leak (``near_duplicate_leak``)."""
    rows = []
    suggested = issues["predicted_label"].to_numpy()
    for kind in ISSUE_TYPES:
        column = "near_duplicate" if kind.startswith("near_duplicate") else kind
        flagged = issues[f"is_{column}_issue"].to_numpy()
        scores = issues[f"{column}_score"].to_numpy()
        if kind.startswith("near_duplicate"):
            leak = np.array([any(splits[j] != splits[i] for j in sets[i]) for i in range(len(ids))], dtype=bool)
            flagged = flagged & (leak if kind == "near_duplicate_leak" else ~leak)
        order = [int(i) for i in np.argsort(scores, kind="stable") if flagged[i]]
        for rank, i in enumerate(order, 1):
            related = " ".join(str(ids[j]) for j in sets[i][:5]) if kind.startswith("near_duplicate") else ""
            rows.append(
                {
                    "rank": rank,
                    "id": str(ids[i]),
                    "split": str(splits[i]),
                    "given_label": classes[int(labels[i])],
                    "suggested_label": classes[int(suggested[i])],
                    "score": round(float(scores[i]), 6),
                    "issue": kind,
                    "related": related,
                    "index": i,
                }
            )
    return rows


def as_csv(rows: list[Mapping[str, Any]], columns: list[str]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def summarize(rows: list[Mapping[str, Any]], counts: Mapping[str, int], seconds: Mapping[str, float]) -> dict:
    """summary.json: items audited per split, flagged per issue type (and split), the cost in seconds."""
    flagged: dict[str, dict[str, int]] = {kind: dict.fromkeys(counts, 0) for kind in ISSUE_TYPES}
    for row in rows:
        flagged[row["issue"]][row["split"]] += 1
    return {
        "items": dict(counts),
        "flagged": {kind: sum(by_split.values()) for kind, by_split in flagged.items()},
        "flagged_per_split": flagged,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


def run(params: Params) -> dict:
    """Cross-validate train, predict val and test with the trained model, find the issues, write reports/audit."""
    from tasks.lib.quiet import import_keras

    keras = import_keras()
    clean = artifacts.open_dataset(Path(params.paths.clean))
    # train.model's module first (DVC reran train for these params): its custom layers, before Keras loads the model
    architecture.import_module(params.train.model)
    model = keras.saving.load_model(params.paths.model, compile=False, safe_mode=True)
    keras.utils.set_random_seed(params.seed)
    start = time.perf_counter()
    train_probabilities = cross_validated(clean, params)
    cv_seconds = time.perf_counter() - start

    start = time.perf_counter()
    predict = feature_model(model)
    parts: dict[str, list[np.ndarray]] = {"features": [], "probabilities": [], "labels": [], "ids": [], "splits": []}
    for split in clean.splits:
        for index, shard in enumerate(clean.shards(split, mmap=True)):
            features, probabilities = predict(np.asarray(shard.x))
            parts["features"].append(features.reshape(len(shard.y), -1))
            parts["probabilities"].append(probabilities)
            parts["labels"].append(shard.y)
            # data written before items carried their source ids: split, shard and place stand in
            ids = shard.ids if shard.ids is not None else numbered(f"{split}:{index}:", len(shard.y))
            parts["ids"].append(ids.astype(str))
            parts["splits"].append(np.full(len(shard.y), split))
    joined = {key: np.concatenate(value) for key, value in parts.items()}
    in_train = joined["splits"] == "train"
    joined["probabilities"][in_train] = train_probabilities  # out-of-sample: never the trained model's own
    predict_seconds = time.perf_counter() - start

    start = time.perf_counter()
    issues, sets = find_issues(joined["labels"], joined["probabilities"], joined["features"])
    rows = rank_issues(issues, sets, joined["ids"], joined["splits"], joined["labels"], clean.classes)
    cleanlab_seconds = time.perf_counter() - start

    counts = {split: clean.count(split) for split in clean.splits}
    seconds = {"cross_validation": cv_seconds, "predict": predict_seconds, "cleanlab": cleanlab_seconds}
    summary = {
        **summarize(rows, counts, seconds),
        "folds": params.audit.folds,
        "epochs": params.audit.epochs,
        "kind": clean.kind,
    }
    labels = [row for row in rows if row["issue"] == "label"]
    top = top_items(clean, [row["index"] for row in labels[: params.audit.top]])
    suggestions = [{"id": r["id"], "action": "relabel", "label": r["suggested_label"]} for r in labels]
    with artifacts.atomic_dir(Path(params.paths.audit)) as tmp:
        (tmp / ISSUES).write_bytes(as_csv(rows, COLUMNS))
        (tmp / SUGGESTIONS).write_bytes(as_csv(suggestions, ["id", "action", "label"]))
        np.save(tmp / TOP, top, allow_pickle=False)
        artifacts.write_json(tmp / SUMMARY, summary)
    log.info("audit: %s flagged of %s items (%s s)", summary["flagged"], counts, summary["seconds"])
    return summary


def top_items(clean: artifacts.Stored, indices: list[int]) -> np.ndarray:
    """The items at ``indices`` (positions over all splits in manifest order), read one shard at a time."""
    wanted = {index: n for n, index in enumerate(indices)}
    found: list[Any] = [None] * len(indices)
    offset = 0
    for split in clean.splits:
        for shard in clean.shards(split, mmap=True):
            for position in range(offset, offset + len(shard.y)):
                if position in wanted:
                    found[wanted[position]] = np.asarray(shard.x[position - offset])
            offset += len(shard.y)
    if not found:
        return np.zeros((0, *clean.image_shape), dtype=np.uint8) if clean.kind == "images" else np.array([], dtype=str)
    return np.array(found) if clean.kind == "text" else np.stack(found)


if __name__ == "__main__":
    from tasks.lib.cli import main

    main("audit", run)
