"""dvc.yaml read for the stages' files: which stage writes a path, which of a stage's inputs are missing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tasks.lib import artifacts, dag
from tasks.lib.config import read_params_file
from tasks.lib.errors import TrainflowError
from tests.helpers import REPO, committed_params_file


@pytest.fixture
def repo_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder with only the committed dvc.yaml and params.yaml, made the current folder."""
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(committed_params_file(), tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_producer_of_an_output_or_a_file_inside_it(repo_copy: Path) -> None:
    stages = dag.stages(read_params_file(Path("params.yaml")))
    assert dag.producer(Path("data/raw"), stages) == "ingest"
    assert dag.producer(repo_copy / "data/raw/train/x-00000.npy", stages) == "ingest"  # absolute paths too
    assert dag.producer(Path("reports/metrics.json"), stages) == "evaluate"  # a DVC metric
    assert dag.producer(Path("reports/train/history.csv"), stages) == "train"  # a DVC plot
    assert dag.producer(Path("data/input"), stages) is None  # the source: no stage writes it
    assert dag.producer(Path("tasks/lib"), stages) is None


def test_missing_input_names_the_one_made_furthest_down_the_dag(repo_copy: Path) -> None:
    params = read_params_file(Path("params.yaml"))
    assert dag.missing_input("ingest", params) is None  # its inputs are the source and code
    assert dag.missing_input("deploy", params) == (
        "reports/evaluate/predictions.csv: not found; run `dvc repro evaluate` first"
    )
    for made in ("models/model.keras", "reports/evaluate/predictions.csv", "data/clean", "models/mlflow_run.json"):
        Path(made).parent.mkdir(parents=True, exist_ok=True)
        Path(made).touch()
    assert dag.missing_input("deploy", params) == "reports/metrics.json: not found; run `dvc repro evaluate` first"


def test_without_a_dvc_yaml_nothing_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert dag.missing_input("evaluate", read_params_file(committed_params_file())) is None
    assert dag.hint(Path("data/raw/manifest.json")) == dag.UNKNOWN


def test_a_missing_output_read_by_a_stage_names_the_command_that_writes_it(repo_copy: Path) -> None:
    with pytest.raises(TrainflowError, match=r"^data/raw/manifest.json: not found; run `dvc repro ingest` first$"):
        artifacts.open_dataset(Path("data/raw"))
    with pytest.raises(TrainflowError, match=r"^models/mlflow_run.json: not found; run `dvc repro train` first$"):
        artifacts.read_json(Path("models/mlflow_run.json"))
