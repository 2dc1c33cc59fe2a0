"""Any class name works: labels with quotes, plus signs, parentheses, commas, HTML and Unicode go through the real
`dvc repro` of a tiny text dataset, every stage. MLflow gets metric names it takes (tracking.metric_names); every
file a user reads, the report page and the served model keep the names as they are."""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path

import numpy as np
import pytest

from tasks.lib.tracking import metric_names
from tests.helpers import STAGES, make_workspace, ran, sh

pytestmark = pytest.mark.slow

# "a b" and "a,b" map to the same safe part: they must still get two metric names
CLASSES = ("don't", "C++", "(other)", "a,b", "a b", "<b>x</b>", "café", "日本")
TINY_TEXT = {
    "data": {"source": "tsv", "path": "data/input/names.tsv"},
    "train": {"epochs": 1, "embedding_dim": 8, "rnn_units": 8, "dense_units": 8, "batch_size": 32},
    "augment": {"copies": 0},
    "deploy": {"check_samples": 8, "min_metric": 0.0},  # one epoch: any model may become champion
    "audit": {"folds": 2, "epochs": 1},
}


def labelled_lines(per_class: int = 14, seed: int = 0) -> str:
    """``label<TAB>text`` lines: each class its own words, each text a serial number of its own (no duplicates)."""
    rng = np.random.default_rng(seed)
    lines = []
    for k, name in enumerate(CLASSES):
        words = [f"w{k}x{j}" for j in range(4)]
        for i in range(per_class):
            lines.append(f"{name}\t{' '.join(rng.choice(words, size=4).tolist())} n{k}x{i}")
    return "\n".join(lines) + "\n"


def test_hostile_class_names_go_through_the_dag_and_keep_their_names(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path, TINY_TEXT)
    (workspace / "data/input").mkdir(parents=True, exist_ok=True)
    (workspace / "data/input/names.tsv").write_text(labelled_lines(), encoding="utf-8")

    done = sh(workspace, "dvc", "repro")
    assert ran(done.stdout) == list(STAGES)

    names = set(CLASSES)
    manifest = json.loads((workspace / "data/raw/manifest.json").read_text(encoding="utf-8"))
    assert manifest["classes"] == sorted(CLASSES)
    per_class = json.loads((workspace / "reports/evaluate/per_class.json").read_text(encoding="utf-8"))
    assert set(per_class["test"]["per_class"]) == names and set(per_class["val"]["per_class"]) == names
    metrics = json.loads((workspace / "reports/metrics.json").read_text(encoding="utf-8"))
    assert 0 <= metrics["test"]["accuracy"] <= 1
    confusion = list(csv.DictReader(io.StringIO((workspace / "reports/evaluate/confusion.csv").read_text())))
    assert {row["actual"] for row in confusion} == names and {row["predicted"] for row in confusion} <= names
    header = (workspace / "reports/evaluate/predictions.csv").read_text(encoding="utf-8").splitlines()[0]
    assert next(csv.reader([header]))[4:] == [f"p_{name}" for name in sorted(CLASSES)]

    from mlflow import MlflowClient

    store = f"sqlite:///{workspace / 'mlflow.db'}"
    run_id = json.loads((workspace / "models/mlflow_run.json").read_text())["run_id"]
    logged = MlflowClient(tracking_uri=store, registry_uri=store).get_run(run_id).data.metrics
    parts = metric_names(sorted(CLASSES))
    assert len(set(parts.values())) == len(CLASSES)
    for name, part in parts.items():
        assert logged[f"test.per_class.{part}.f1"] == pytest.approx(per_class["test"]["per_class"][name]["f1"])
    assert logged["test.accuracy"] == pytest.approx(metrics["test"]["accuracy"])

    deployed = json.loads((workspace / "reports/deploy.json").read_text(encoding="utf-8"))
    assert deployed["contract"]["classes"] == sorted(CLASSES) and deployed["serving"]["ok"] is True
    page = (workspace / "reports/report.html").read_text(encoding="utf-8")
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page  # shown as text, never as markup
    assert all(name in html.unescape(page) for name in CLASSES)

    (workspace / "messages.txt").write_text("w0x1 w0x2 w0x3\nw6x0 w6x1 w6x2 w6x3\n", encoding="utf-8")
    sh(workspace, "python", "-m", "tasks.predict", "messages.txt", "--output", "served.csv")  # the champion
    served = list(csv.DictReader(io.StringIO((workspace / "served.csv").read_text(encoding="utf-8"))))
    assert len(served) == 2 and {row["class"] for row in served} <= names
    assert [key.removeprefix("p_") for key in served[0] if key.startswith("p_")] == sorted(CLASSES)
