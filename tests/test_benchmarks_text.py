"""benchmarks/text.py's baseline (TF-IDF + logistic regression) and its report, on a toy corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import load_benchmark

text = load_benchmark("text")

HAM = ["see you at lunch", "meeting moved to noon", "call me when home", "dinner at mum's tonight", "ok see you soon"]
SPAM = [
    "win a free prize now",
    "claim your cash prize",
    "free entry win cash",
    "urgent prize claim now",
    "win free cash",
]


def corpus(copies: int) -> tuple[np.ndarray, np.ndarray]:
    texts = [t for _ in range(copies) for t in (*HAM, *SPAM)]
    labels = [y for _ in range(copies) for y in [0] * len(HAM) + [1] * len(SPAM)]
    return np.array(texts, dtype=str), np.array(labels, dtype=np.int64)


def test_baseline_scores_separable_texts_perfectly() -> None:
    train_x, train_y = corpus(4)
    test_x, test_y = corpus(1)
    found = text.baseline(train_x, train_y, test_x, test_y, positive=1, repeats=3)
    assert found["accuracy"] == found["recall"] == found["precision"] == 1.0
    assert len(found["fit_runs_s"]) == 3
    assert min(found["fit_runs_s"]) <= found["fit_s"] <= max(found["fit_runs_s"])
    assert found["train_count"] == 40 and found["test_count"] == 10
    assert found["vocabulary"] > len({w for t in train_x for w in t.split()})  # bigrams too


def test_scores_count_the_positive_class_only() -> None:
    y = np.array([0, 0, 1, 1, 1, 0])
    predicted = np.array([0, 1, 1, 0, 1, 0])
    assert text.scores(y, predicted, positive=1) == {"accuracy": 4 / 6, "recall": 2 / 3, "precision": 2 / 3}


def test_baseline_refuses_a_test_split_without_the_positive_class() -> None:
    train_x, train_y = corpus(2)
    with pytest.raises(ValueError, match="no test text has the positive label 1"):
        text.baseline(train_x, train_y, train_x[train_y == 0], train_y[train_y == 0], positive=1)


def test_report_shows_both_sides_and_the_verdicts() -> None:
    run = {
        "repro_s": 60.0,
        "left": [],
        "pipeline": {"accuracy": 0.985, "recall": 0.90, "fit_s": 12.0, "epochs": 7, "clean_counts": {"train": 7}},
        "baseline": {"accuracy": 0.99, "recall": 0.93, "fit_s": 0.15, "fit_runs_s": [0.15] * 5, "c": 10.0},
    }
    body = text.report([run], Path("sms.tsv"), 1)
    assert "| test accuracy | ≥ 98 % | 98.50 % | 99.00 % | ✅ |" in body
    assert "| spam recall (test) | ≥ 92 % | 90.00 % | 93.00 % | ❌ |" in body
    assert "C=10" in body and "train 7 texts" in body
    assert text.summary([run])["met"] == {"accuracy": True, "recall": False}
