"""End to end: the real `dvc repro` / `dvc exp run` on a copy of this repo with tiny params."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from tasks.lib.config import load_params
from tests.conftest import Repro, copy_run
from tests.helpers import EXP_SHOW, STAGES, TINY, make_workspace, processes_in, ran, sh

pytestmark = pytest.mark.slow


def test_repro_runs_every_stage_then_skips_then_reruns_from_train(tiny_repro: Repro, tmp_path: Path) -> None:
    first = tiny_repro.done  # the session's one first `dvc repro` of a fresh workspace (tests/conftest.py)
    assert ran(first.stdout) == list(STAGES)
    assert processes_in(tiny_repro.root) == []  # no daemons: nothing the stages started outlives `dvc repro`
    workspace = copy_run(tiny_repro.root, tmp_path / "workspace")
    output = first.stdout + first.stderr
    assert "cuInit" not in output and "absl::InitializeLog" not in output  # quiet on a CPU machine
    manifest = json.loads((workspace / "data/raw/manifest.json").read_text())
    assert manifest["source"] == "digits" and manifest["shape"] == [8, 8, 1]
    assert sum(s["count"] for s in manifest["splits"].values()) == 1797
    metrics = json.loads((workspace / "reports/metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.5
    assert set(metrics) == {"val", "test"} and set(metrics["test"]) == {
        "loss",
        "accuracy",
        "precision_macro",
        "recall_macro",
        "f1_macro",
    }
    per_class = json.loads((workspace / "reports/evaluate/per_class.json").read_text())
    assert len(per_class["test"]["confusion_matrix"]) == 10 and len(per_class["test"]["per_class"]) == 10
    deployed = json.loads((workspace / "reports/deploy.json").read_text())
    assert deployed["serving"]["ok"] is True and deployed["registry"]["alias"] == "champion"  # served, then promoted
    for png in ("reports/augment/samples.png", "reports/evaluate/figures/confusion_matrix.png"):
        assert (workspace / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    boundaries = ("raw", "clean", "augmented", "predictions")  # normalize writes statistics, no items to validate
    for boundary in boundaries:
        assert json.loads((workspace / f"reports/validation/{boundary}.json").read_text())["success"] is True
    index = (workspace / "reports/data_docs/index.html").read_text()
    assert all(boundary in index for boundary in boundaries)

    # a fresh registry has no champion to compare new data with; ingest records the data's statistics only
    assert deployed["drift"]["checked"] is False and "has no champion" in deployed["drift"]["why"]
    statistics = json.loads((workspace / "reports/ingest/statistics.json").read_text())
    assert statistics["count"] == 1797 and statistics["kind"] == "images"

    assert ran(sh(workspace, "dvc", "repro").stdout) == []
    assert "up to date" in sh(workspace, "dvc", "status").stdout

    sh(workspace, "git", "add", "-A")
    sh(workspace, "git", "commit", "-qm", "baseline run")
    experiment = sh(workspace, "dvc", "exp", "run", "-S", "train.epochs=1")
    assert ran(experiment.stdout) == ["train", "evaluate", "deploy", "audit", "report"]  # ingest cached: v1's data
    assert processes_in(workspace) == []  # nothing `dvc exp run` started outlives it
    deployed = json.loads((workspace / "reports/deploy.json").read_text())
    name = deployed["registry"]["model_name"]
    assert deployed["registry"]["version"] == 2 and deployed["registry"]["registered"] is True
    drift = deployed["drift"]  # v1 is champion now: the data is compared with its training data
    assert drift["checked"] is True and drift["drifted"] is False, drift
    assert drift["reference"].startswith(f"{name} v1 (run ")
    assert deployed["champion"]["version"] == 1 and deployed["gate"]["champion_version"] == 1
    # the scoring server came up while deploy scored the champion: the check waited less than its start-up (fails
    # with the server started after the champion's scoring, in tasks/deploy.run)
    assert deployed["serving"]["startup_s"] - deployed["serving"]["waited_s"] >= 0.2, deployed["serving"]
    page = (workspace / "reports/report.html").read_text()
    assert f"<code>{name} v1 (run " in page and "no drift" in page
    history = (workspace / "reports/train/history.csv").read_text().strip().splitlines()
    assert len(history) == 1 + 1  # header + one epoch
    # the README's comparison: the experiment, its test accuracy and the param it changed, in a 120-column terminal
    shown = sh(workspace, *shlex.split(EXP_SHOW), COLUMNS="120").stdout.splitlines()
    header = next(line for line in shown if "Experiment" in line).split()
    assert header == ["Experiment", "Created", "test.accuracy", "train.epochs"], header
    assert max(len(line.rstrip()) for line in shown) <= 120
    assert any(line.split()[-1] == "1" for line in shown if "[" in line)  # the experiment's row: train.epochs 1

    shown = json.loads(sh(workspace, "dvc", "metrics", "show", "--json").stdout)
    written = json.loads((workspace / "reports/metrics.json").read_text())
    assert shown[""]["data"]["reports/metrics.json"]["data"] == written  # DVC read the file itself, no error
    plots = sh(workspace, "dvc", "plots", "show", "--out", "dvc_plots")
    assert plots.returncode == 0 and (workspace / "dvc_plots/index.html").is_file()
    sh(workspace, "dvc", "push")
    assert any((workspace / ".dvc-storage").rglob("*"))


def test_a_missing_data_path_stops_repro_with_one_clear_line(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path, {**TINY, "data": {"source": "idx", "path": "missing/mnist"}})
    failed = sh(workspace, "dvc", "repro", check=False)
    assert failed.returncode != 0
    # data.path is a dependency of ingest: DVC itself refuses to run the stage, naming the path
    errors = [line for line in (failed.stdout + failed.stderr).splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "'ingest'" in errors[0] and "missing/mnist" in errors[0], errors
    assert not (workspace / "data/raw").exists()
    assert ran(failed.stdout) == []


def test_the_readme_ui_address_opens_the_runs_of_the_pipelines_experiment(tiny_repro: Repro) -> None:
    """The README's `mlflow ui` address names experiment 1 in the Model training view: in a new project's store that
    is the pipeline's experiment (checked in Chromium: its runs list). Mutation: an experiment created before train's
    (or a README address of the experiments list) fails."""
    from mlflow import MlflowClient

    from tests.helpers import REPO

    (address,) = [line for line in (REPO / "README.md").read_text().splitlines() if "# then open http://" in line]
    path = address.split("http://127.0.0.1:5000/", 1)[1].split()[0]
    store = MlflowClient(f"sqlite:///{tiny_repro.root / 'mlflow.db'}")
    experiment = store.get_experiment_by_name(load_params(tiny_repro.root / "params.yaml").tracking.experiment)
    assert path == f"#/experiments/{experiment.experiment_id}?workflowType=machine_learning"
