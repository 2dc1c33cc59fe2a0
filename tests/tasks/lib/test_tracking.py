"""MLflow end to end on a real SQLite store: what a run holds, champion/challenger, lineage, REST serving."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tasks import augment, clean, deploy, evaluate, ingest, normalize, train
from tasks.lib import artifacts, tracking
from tasks.lib.config import Params, load_params
from tests.helpers import TINY, make_workspace, mlflow_serve, post_json, tool_env

pytestmark = pytest.mark.slow

# Three trainings on the same data: mediocre, then weaker (above the minimum), then clearly stronger.
MEDIOCRE = {"train.epochs": 1}
WEAKER = {"train.epochs": 1, "train.learning_rate": 0.00005}
STRONGER = {"train.epochs": 6}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = make_workspace(tmp_path_factory.mktemp("tracking"), {**TINY, "deploy": {"min_metric": 0.1}})
    previous, uri = Path.cwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(root)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    yield root
    os.chdir(previous)
    if uri is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = uri


def pipeline(root: Path, overrides: dict[str, Any], data: bool) -> tuple[Params, dict[str, Any]]:
    params = load_params(root / "params.yaml", overrides)
    stages = [ingest, clean, augment, normalize] if data else []
    for stage in [*stages, train, evaluate, deploy]:
        report = stage.run(params)
    return params, report


@pytest.fixture(scope="module")
def runs(workspace: Path) -> dict[str, dict[str, Any]]:
    """deploy.json of the mediocre, weaker and stronger runs, in that order."""
    out = {}
    for name, overrides in (("mediocre", MEDIOCRE), ("weaker", WEAKER), ("stronger", STRONGER)):
        _, report = pipeline(workspace, overrides, data=name == "mediocre")
        out[name] = report | {
            "run_id": tracking.current_run(workspace / load_params(workspace / "params.yaml").paths.run_info)
        }
    return out


def mlflow_client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient()


def test_a_run_holds_params_curves_metrics_artifacts_and_tags(workspace: Path, runs: dict) -> None:
    run = mlflow_client().get_run(runs["stronger"]["run_id"])
    assert run.data.params["train.epochs"] == "6" and run.data.params["data.source"] == "digits"
    history = mlflow_client().get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in history] == list(range(len(history))) and len(history) >= 2
    assert run.data.metrics["test.accuracy"] > 0.5 and "val.f1_macro" in run.data.metrics
    assert run.data.tags["data.source"] == "digits" and run.data.tags["keras.backend"] == "tensorflow"
    assert run.data.tags["device"] in ("CPU", "GPU") and run.data.tags["device.name"]  # whichever this machine has
    assert len(run.data.tags["git.commit"]) == 40
    assert run.info.run_name.startswith("digits 20")  # the data and the start time, not a random name
    experiment = mlflow_client().get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens its training runs
    assert run.data.tags["deploy.promoted"] == "true"
    names = set()
    for folder in ("", "figures", "evaluate", "augment", "validation", "deploy", "train", "data_docs"):
        names |= {a.path for a in mlflow_client().list_artifacts(run.info.run_id, folder or None)}
    expected = {
        "figures/training_curves.png",
        "figures/confusion_matrix.png",
        "evaluate/metrics.json",
        "augment/samples.png",
        "validation/raw.json",
        "deploy/deploy.json",
        "data_docs/index.html",
        "train/history.csv",
    }
    assert expected <= names


def test_first_run_champion_weaker_challenger_stronger_champion(runs: dict, workspace: Path) -> None:
    mediocre, weaker, stronger = runs["mediocre"], runs["weaker"], runs["stronger"]
    assert mediocre["registry"]["alias"] == "champion" and mediocre["gate"]["reason"] == "no champion yet"
    assert weaker["registry"]["alias"] == "challenger" and not weaker["gate"]["promote"]
    assert weaker["gate"]["champion_version"] == mediocre["registry"]["version"]
    assert stronger["registry"]["alias"] == "champion", stronger["gate"]
    assert stronger["gate"]["p_value"] < 0.05 and stronger["gate"]["candidate"] > stronger["gate"]["champion"]
    client = mlflow_client()
    name = stronger["registry"]["model_name"]
    assert client.get_model_version_by_alias(name, "champion").version == stronger["registry"]["version"]
    assert client.get_model_version_by_alias(name, "previous-champion").version == mediocre["registry"]["version"]
    assert client.get_model_version_by_alias(name, "challenger").version == weaker["registry"]["version"]
    written = json.loads((workspace / "reports/deploy.json").read_text())
    assert written["gate"] == stronger["gate"]


def test_lineage_from_the_champion_to_the_data_hashes(runs: dict, workspace: Path) -> None:
    client = mlflow_client()
    version = client.get_model_version_by_alias(runs["stronger"]["registry"]["model_name"], "champion")
    from mlflow.models import Model

    signature = Model.load(f"models:/{version.name}/{version.version}").signature
    (pixels,) = signature.inputs.inputs
    assert str(pixels.type) == "uint8" and tuple(pixels.shape) == (-1, 8, 8, 1)
    assert {"label", "class", "probability", "probabilities"} <= set(signature.outputs.input_names())
    run = client.get_run(version.run_id)
    digests = {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}
    for data_dir, split in (("data/normalized", "train"), ("data/normalized", "val"), ("data/clean", "test")):
        manifest = artifacts.read_json(workspace / data_dir / "manifest.json")
        assert digests[f"{data_dir}/{split}"] == manifest["splits"][split]["sha256"][: tracking.DIGEST_CHARS]


def test_flat_params_never_log_secrets(workspace: Path) -> None:
    raw = yaml.safe_load((workspace / "params.yaml").read_text())
    params = load_params(workspace / "params.yaml")
    flat = tracking.flat_params(params)
    assert flat["train.batch_size"] == str(raw["train"]["batch_size"])
    assert all(not tracking.SECRET.search(key.rsplit(".", 1)[-1]) for key in flat)
    assert tracking.SECRET.search("api_token") and tracking.SECRET.search("password") and tracking.SECRET.search("key")


def test_mlflow_models_serve_answers_raw_pixels(runs: dict, workspace: Path) -> None:
    name = runs["stronger"]["registry"]["model_name"]
    with mlflow_serve(workspace, f"models:/{name}@champion", os.environ["MLFLOW_TRACKING_URI"]) as url:
        test = artifacts.read_dataset(workspace / "data/clean").splits["test"]
        status, body = post_json(url, json.dumps({"inputs": test.x[:8].tolist()}).encode())
        assert status == 200
        served = np.asarray([row["probabilities"] for row in body["predictions"]])
        assert [row["label"] for row in body["predictions"]] == served.argmax(axis=1).tolist()
        assert [row["class"] for row in body["predictions"]] == [str(i) for i in served.argmax(axis=1)]
        expected = np.loadtxt(
            workspace / "reports/evaluate/predictions.csv",
            delimiter=",",
            skiprows=1,
            usecols=range(4, 14),
            max_rows=100000,
            dtype=float,
        )
        test_rows = expected[-len(test.y) :][:8]
        assert served.shape == (8, 10)
        np.testing.assert_allclose(served, test_rows, atol=1e-4)
        status, body = post_json(url, b'{"inputs": [[1, 2, 3]]}')
        assert status == 400 and "shape" in body["message"].lower()


def test_batch_prediction_writes_a_csv_from_the_champion(runs: dict, workspace: Path, tmp_path: Path) -> None:
    test = artifacts.read_dataset(workspace / "data/clean").splits["test"]
    np.savez(tmp_path / "batch.npz", x=test.x[:10])
    done = subprocess.run(
        [sys.executable, "-m", "tasks.predict", str(tmp_path / "batch.npz"), "--output", str(tmp_path / "out.csv")],
        cwd=workspace,
        env=tool_env(MLFLOW_TRACKING_URI=os.environ["MLFLOW_TRACKING_URI"]),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = (tmp_path / "out.csv").read_text().splitlines()
    assert rows[0].startswith("id,predicted,class,probability,p_0") and len(rows) == 11
    predicted = np.array([int(r.split(",")[1]) for r in rows[1:]])
    assert (predicted == test.y[:10]).mean() >= 0.7


def test_an_unreachable_store_is_one_line_naming_the_uri(params: Params, monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.lib.errors import TransientError

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////proc/no/such/dir/mlflow.db")
    with pytest.raises(
        TransientError, match=r"MLflow tracking store sqlite:////proc/no/such/dir/mlflow.db is unreachable"
    ):
        tracking.client(params.tracking)
