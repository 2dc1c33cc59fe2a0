"""tasks/lib/artifact_store.py: artifacts beside mlflow.db, found again after the project folder moves."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
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


# ---- the scheme never leaves its artifact folder (issue 26) ----

OUTSIDE = "outside the artifact folder|an absolute path|no artifact folder"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project folder with its SQLite store (MLflow's tracking and registry URI), beside a file and a folder
    outside it."""
    import mlflow

    root = tmp_path / "project"
    (root / "mlartifacts").mkdir(parents=True)
    (tmp_path / "secret.txt").write_text("outside")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "id_rsa").write_text("outside")
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store(root))
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(store(root))
    mlflow.set_registry_uri(store(root))
    yield root
    mlflow.set_tracking_uri(before[0])
    mlflow.set_registry_uri(before[1])


def store(project: Path) -> str:
    # named in every call: an earlier test's mlflow.set_tracking_uri would win over the environment
    return f"sqlite:///{project / 'mlflow.db'}"


@pytest.mark.parametrize(
    "location",
    [
        "trainflow:../secret.txt",  # out of the database's folder
        "trainflow:mlartifacts/../../secret.txt",  # a .. after joining
        "trainflow:mlartifacts/link/secret.txt",  # a symbolic link inside the folder that points outside
        "trainflow:{root}/mlartifacts/../../secret.txt",  # an absolute path
        "trainflow:/etc/hostname",
    ],
)
def test_reading_a_location_outside_the_artifact_folder_is_refused(project: Path, location: str) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    (project / "mlartifacts" / "link").symlink_to(project.parent)
    with pytest.raises(MlflowException, match=OUTSIDE):
        mlflow.artifacts.download_artifacts(
            location.format(root=project), dst_path=str(project / "got"), tracking_uri=store(project)
        )
    assert not (project / "got").exists() or not any((project / "got").rglob("*"))


def test_an_experiment_located_outside_the_artifact_folder_writes_nothing(project: Path) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(store(project))
    experiment = client.create_experiment("x", artifact_location="trainflow:../../escaped")
    run = client.create_run(experiment)
    (project / "note.txt").write_text("kept")
    with pytest.raises(MlflowException, match=OUTSIDE):
        client.log_artifact(run.info.run_id, str(project / "note.txt"))
    with pytest.raises(MlflowException, match=OUTSIDE):
        client.log_artifacts(run.info.run_id, str(project / "mlartifacts"))
    assert not (project.parent.parent / "escaped").exists()


def test_a_registered_version_whose_source_is_outside_copies_nothing(project: Path, tmp_path: Path) -> None:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(store(project), registry_uri=store(project))
    client.create_registered_model("m")
    client.create_model_version("m", source="trainflow:../elsewhere")
    with pytest.raises(MlflowException, match=OUTSIDE):
        mlflow.artifacts.download_artifacts("models:/m/1", dst_path=str(tmp_path / "got"), tracking_uri=store(project))
    assert not (tmp_path / "got").exists() or not any((tmp_path / "got").rglob("id_rsa"))


def test_a_link_inside_a_run_folder_and_a_delete_that_climbs_out_are_refused(project: Path, tmp_path: Path) -> None:
    from mlflow.exceptions import MlflowException

    from tasks.lib.artifact_store import ProjectArtifactRepository

    run = project / "mlartifacts" / "r1"
    (run / "artifacts").mkdir(parents=True)
    repo = ProjectArtifactRepository("trainflow:mlartifacts/r1/artifacts", store(project))
    (run / "artifacts").rmdir()
    (run / "artifacts").symlink_to(tmp_path / "elsewhere")  # made after the repository was opened
    with pytest.raises(MlflowException, match=OUTSIDE):
        repo.list_artifacts()
    with pytest.raises(MlflowException, match=OUTSIDE):
        ProjectArtifactRepository("trainflow:mlartifacts/r1/artifacts", store(project))
    (run / "artifacts").unlink()
    (run / "artifacts").mkdir()
    with pytest.raises(MlflowException, match=OUTSIDE):
        repo.delete_artifacts("../../../../elsewhere")
    assert (tmp_path / "elsewhere" / "id_rsa").is_file()
    (run / "artifacts" / "kept.txt").write_text("inside")
    assert [f.path for f in repo.list_artifacts()] == ["kept.txt"]  # inside the folder: as before
    repo.delete_artifacts("kept.txt")
    assert not (run / "artifacts" / "kept.txt").exists()
