"""tasks/lib/artifact_store.py: artifacts beside mlflow.db, found again after the project folder moves."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tasks.lib import tracking
from tasks.lib.config import Params


def test_artifacts_live_beside_the_database_and_move_with_it(
    params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = params.tracking.model_copy(update={"uri": "sqlite:///mlflow.db", "artifacts": "mlartifacts"})
    client = tracking.client(settings)
    run = client.create_run(tracking.experiment_id(client, settings))
    (project / "note.txt").write_text("kept")
    client.log_artifact(run.info.run_id, str(project / "note.txt"), "train")
    assert run.info.artifact_uri == f"trainflow:mlartifacts/{run.info.run_id}/artifacts"  # no absolute path stored
    assert (project / "mlartifacts" / run.info.run_id / "artifacts" / "train" / "note.txt").is_file()

    moved = tmp_path / "renamed"
    os.chdir(tmp_path)
    shutil.move(project, moved)
    os.chdir(moved)
    again = MlflowClient(tracking_uri=f"sqlite:///{moved / 'mlflow.db'}")
    local = again.download_artifacts(run.info.run_id, "train/note.txt", str(tmp_path))
    assert Path(local).read_text() == "kept"
