"""evaluate: models/model.keras + data/clean val/test → reports/metrics.json (headline), per-class report, figures.

It scores the candidate only: deploy, the one stage that reads the registry, scores the champion."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from tasks.lib import architecture, artifacts, tracking, validation
from tasks.lib.config import Params
from tasks.lib.quiet import import_keras

log = logging.getLogger(__name__)

EVAL_SPLITS = ("val", "test")


def classification_metrics(y: np.ndarray, probabilities: np.ndarray, classes: tuple[str, ...]) -> dict[str, Any]:
    """Loss, accuracy, macro and per-class precision/recall/F1 and the confusion matrix.

    Args:
        y: true labels (N,).
        probabilities: predicted class probabilities (N, K).
        classes: the K class names.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = np.arange(len(classes))
    predicted = probabilities.argmax(axis=1)
    picked = np.clip(probabilities[np.arange(len(y)), y], 1e-7, 1.0)
    precision, recall, f1, support = precision_recall_fscore_support(y, predicted, labels=labels, zero_division=0)
    return {
        "loss": float(-np.log(picked).mean()),
        "accuracy": float((predicted == y).mean()),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
        "count": len(y),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
        },
        "confusion_matrix": confusion_matrix(y, predicted, labels=labels).tolist(),
    }


def predictions_csv(results: dict[str, tuple[np.ndarray, np.ndarray]], classes: tuple[str, ...]) -> bytes:
    """One row per evaluated image: split, index, label, predicted class and every class probability."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["split", "index", "label", "predicted", *(f"p_{name}" for name in classes)])
    for split, (y, probabilities) in results.items():
        for i, (label, row) in enumerate(zip(y, probabilities, strict=True)):
            writer.writerow([split, i, int(label), int(row.argmax()), *(f"{p:.7g}" for p in row)])
    return buffer.getvalue().encode()


def confusion_csv(y: np.ndarray, predicted: np.ndarray, classes: tuple[str, ...]) -> bytes:
    """``actual,predicted`` pairs by class name: the input of DVC's confusion plot template (a name holding a comma
    or a quote is quoted, as CSV quotes it)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["actual", "predicted"])
    writer.writerows((classes[a], classes[p]) for a, p in zip(y, predicted, strict=True))
    return buffer.getvalue().encode()


def training_curves(rows: list[dict[str, str]]) -> Any:
    """Loss and accuracy per epoch (train and val) from history.csv's rows: a matplotlib figure, whole-epoch ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(epochs, [float(r[metric]) for r in rows], marker="o", label=f"train {metric}")
        ax.plot(epochs, [float(r[f"val_{metric}"]) for r in rows], marker="o", label=f"val {metric}")
        if len(epochs) <= 12:  # epoch 1, 2, never 1.2: each epoch, or whole numbers
            ax.set_xticks(epochs)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    return fig


def figures(history_csv: Path, matrix: list[list[int]], classes: tuple[str, ...], out: Path) -> None:
    """training_curves.png (loss and accuracy per epoch) and confusion_matrix.png (test split)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with history_csv.open() as f:
        fig = training_curves(list(csv.DictReader(f)))
    fig.savefig(out / "training_curves.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(classes), 1 + 0.6 * len(classes)))
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=90, parse_math=False)  # a class name with `$` is a name, not TeX
    ax.set_yticks(ticks, classes, parse_math=False)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title("confusion matrix (test)")
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, n in enumerate(row):
            ax.text(j, i, str(n), ha="center", va="center", color="white" if n > peak / 2 else "black", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "confusion_matrix.png", dpi=100)
    plt.close(fig)


HEADLINE = ("loss", "accuracy", "precision_macro", "recall_macro", "f1_macro")
DETAIL = ("count", "per_class", "confusion_matrix")  # per_class.json: read in plots and reports, not DVC metrics


def model_input(x: np.ndarray) -> np.ndarray:
    """What Keras' predict takes: texts as an object array of str (it refuses NumPy's fixed-width unicode)."""
    return x.astype(object) if x.dtype.kind == "U" else x


def contract(stored: artifacts.Stored) -> dict[str, Any]:
    """What a model trained on ``stored`` takes and answers: raw images of one shape and dtype, or strings; classes.

    Part of every registered version (deploy tags it); a version with another contract never takes
    the champion alias of one with this one unless ``deploy.allow_new_contract`` says so.
    """
    dtype = artifacts.TEXT if stored.kind == "text" else "uint8"
    return {"input_shape": list(stored.image_shape), "dtype": dtype, "classes": list(stored.classes)}


def run(params: Params) -> dict:
    """Score the raw-input model on the clean val and test splits and write the reports."""
    keras = import_keras()

    # its custom layers, if any, before Keras loads it
    architecture.import_trained(artifacts.read_json(Path(params.paths.run_info)))
    model = keras.saving.load_model(params.paths.model, compile=False, safe_mode=True)
    stored = artifacts.open_dataset(Path(params.paths.clean))
    data = artifacts.Dataset({split: stored.load(split, mmap=True) for split in EVAL_SPLITS}, stored.classes)
    results: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    metrics: dict[str, Any] = {}
    for split in EVAL_SPLITS:
        x, y = data.splits[split].x, data.splits[split].y
        probabilities = np.asarray(model.predict(model_input(x), batch_size=params.evaluate.batch_size, verbose=0))
        results[split] = (y, probabilities)
        metrics[split] = classification_metrics(y, probabilities, data.classes)

    validation.validate_predictions(results, data.classes, params)
    y_test, p_test = results["test"]
    artifacts.write_bytes(Path(params.paths.predictions), predictions_csv(results, data.classes))
    artifacts.write_bytes(Path(params.paths.confusion), confusion_csv(y_test, p_test.argmax(axis=1), data.classes))
    with artifacts.atomic_dir(Path(params.paths.figures)) as tmp:
        figures(Path(params.paths.history), metrics["test"]["confusion_matrix"], data.classes, tmp)
    artifacts.write_json(Path(params.paths.metrics), headline(metrics))  # few columns in `dvc exp show`
    per_class = {split: {k: metrics[split][k] for k in DETAIL} for split in EVAL_SPLITS}
    artifacts.write_json(Path(params.paths.per_class), per_class)

    run_id = tracking.current_run(Path(params.paths.run_info))
    # Named as in metrics.json (`test.accuracy`), apart from Keras' per-epoch `val_accuracy` curves.
    scalars = {f"{split}.{k}": metrics[split][k] for split in EVAL_SPLITS for k in HEADLINE}
    # class names as MLflow takes them in metric names (per_class.json keeps them as they are)
    part = tracking.metric_names(data.classes)
    scalars |= {f"test.per_class.{part[name]}.f1": m["f1"] for name, m in metrics["test"]["per_class"].items()}
    tracking.log_metrics(params.tracking, run_id, scalars)
    tracking.log_datasets(params.tracking, run_id, params.paths.clean, ("test",))
    paths = params.paths
    tracking.log_artifacts(
        params.tracking,
        run_id,
        [paths.metrics, paths.per_class, paths.confusion, paths.predictions],
        "evaluate",
    )
    tracking.log_artifacts(params.tracking, run_id, [paths.figures, paths.validation, paths.data_docs])
    tracking.log_artifacts(params.tracking, run_id, [paths.samples], "augment")
    log.info(
        "evaluate: val accuracy %.4f, test accuracy %.4f, test macro F1 %.4f",
        metrics["val"]["accuracy"],
        metrics["test"]["accuracy"],
        metrics["test"]["f1_macro"],
    )
    return metrics


def headline(report: dict) -> dict[str, dict[str, float]]:
    """The headline figures per split (what metrics.json holds) from evaluate's report."""
    return {split: {k: report[split][k] for k in HEADLINE} for split in EVAL_SPLITS}


if __name__ == "__main__":
    from tasks.lib.cli import main

    main("evaluate", run)
