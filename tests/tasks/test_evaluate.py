"""tasks/evaluate.py: metrics on a hand-made example and the two CSV formats."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
import pytest

from tasks.evaluate import classification_metrics, confusion_csv, figures, predictions_csv, training_curves

CLASSES = ("cat", "dog", "fox")
Y = np.array([0, 0, 1, 2, 2])
P = np.array(
    [
        [0.8, 0.1, 0.1],  # cat → cat
        [0.3, 0.6, 0.1],  # cat → dog
        [0.2, 0.7, 0.1],  # dog → dog
        [0.1, 0.1, 0.8],  # fox → fox
        [0.5, 0.25, 0.25],  # fox → cat
    ]
)


def test_metrics_by_hand() -> None:
    m = classification_metrics(Y, P, CLASSES)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["count"] == 5
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.8, 0.3, 0.7, 0.8, 0.25])))
    fields = ("precision", "recall", "f1", "support")
    per_class = {name: [v[f] for f in fields] for name, v in m["per_class"].items()}
    assert per_class == {
        "cat": pytest.approx([0.5, 0.5, 0.5, 2]),
        "dog": pytest.approx([0.5, 1.0, 2 / 3, 1]),
        "fox": pytest.approx([1.0, 0.5, 2 / 3, 2]),
    }
    assert m["precision_macro"] == pytest.approx(2 / 3)
    assert m["recall_macro"] == pytest.approx(2 / 3)
    assert m["f1_macro"] == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)


def test_metrics_are_plain_json_types() -> None:
    m = classification_metrics(Y, P, CLASSES)
    assert type(m["accuracy"]) is float and type(m["count"]) is int
    assert all(type(n) is int for row in m["confusion_matrix"] for n in row)


def test_absent_class_keeps_its_row_and_zero_probability_is_finite() -> None:
    y = np.array([0, 1])
    p = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    m = classification_metrics(y, p, CLASSES)
    assert m["confusion_matrix"] == [[1, 0, 0], [1, 0, 0], [0, 0, 0]]
    assert m["per_class"]["fox"]["support"] == 0
    assert math.isfinite(m["loss"]) and m["loss"] == pytest.approx(-np.log(1e-7) / 2)


def test_predictions_csv_format() -> None:
    text = predictions_csv({"val": (Y[:2], P[:2]), "test": (Y, P)}, CLASSES).decode()
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["split", "index", "label", "predicted", "p_cat", "p_dog", "p_fox"]
    assert len(rows) == 1 + 2 + 5
    assert rows[1] == ["val", "0", "0", "0", "0.8", "0.1", "0.1"]
    assert rows[3][:4] == ["test", "0", "0", "0"]
    assert rows[-1] == ["test", "4", "2", "0", "0.5", "0.25", "0.25"]


def test_predictions_csv_keeps_seven_significant_digits() -> None:
    p = np.array([[1 / 3, 2 / 3]], dtype=np.float32)
    row = predictions_csv({"test": (np.array([1]), p)}, ("a", "b")).decode().splitlines()[1].split(",")
    assert row[4:] == ["0.3333333", "0.6666667"]


def test_confusion_csv_format() -> None:
    text = confusion_csv(Y, P.argmax(axis=1), CLASSES).decode()
    assert text == "actual,predicted\ncat,cat\ncat,dog\ndog,dog\nfox,fox\nfox,cat\n"


HOSTILE = ("a,b", 'say "hi"', "$x$")


def test_class_names_with_commas_and_quotes_are_read_back_as_they_are_from_both_csvs() -> None:
    matrix = list(csv.DictReader(io.StringIO(confusion_csv(Y, P.argmax(axis=1), HOSTILE).decode())))
    assert [(r["actual"], r["predicted"]) for r in matrix][:2] == [("a,b", "a,b"), ("a,b", 'say "hi"')]
    header = next(csv.reader(io.StringIO(predictions_csv({"test": (Y, P)}, HOSTILE).decode())))
    assert header[4:] == ["p_a,b", 'p_say "hi"', "p_$x$"]


def test_the_confusion_figure_shows_a_dollar_sign_as_a_character(tmp_path: Path) -> None:
    history = tmp_path / "history.csv"
    history.write_text("epoch,loss,val_loss,accuracy,val_accuracy\n0,1.0,1.1,0.5,0.4\n")
    figures(history, [[1, 0, 0], [0, 1, 0], [0, 0, 1]], ("$\\frac{$", "a^b_c", "$x$"), tmp_path)  # bad TeX
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 0


@pytest.mark.parametrize("epochs", [1, 2, 3, 7, 30])
def test_training_curves_tick_whole_epochs(epochs: int) -> None:
    rows = [
        {"epoch": str(e), "loss": "0.5", "val_loss": "0.6", "accuracy": "0.8", "val_accuracy": "0.7"}
        for e in range(epochs)
    ]
    fig = training_curves(rows)
    fig.canvas.draw()
    for ax in fig.axes:
        low, high = ax.get_xlim()
        shown = [t for t in ax.get_xticks() if low <= t <= high]
        assert shown and all(float(t).is_integer() for t in shown), shown  # 1, 2 — never 1.2, 1.4, …
