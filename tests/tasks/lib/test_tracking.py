"""MLflow end to end on a real SQLite store: what a run holds, champion/challenger, lineage, REST serving."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import yaml

from tasks import augment, clean, deploy, evaluate, ingest, normalize, train
from tasks.lib import artifacts, registry, tracking
from tasks.lib.config import Params, load_params
from tests.helpers import REPO, TINY, make_workspace, mlflow_serve, post_json, processes_in, tool_env

pytestmark = pytest.mark.slow

# Three trainings on the same data: mediocre, then weaker (above the minimum), then clearly stronger.
MEDIOCRE = {"train.epochs": 1}
WEAKER = {"train.epochs": 1, "train.learning_rate": 0.00005}
STRONGER = {"train.epochs": 6}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # The per-class recall rule has its own tests (tests/tasks/test_deploy.py); here a stronger run must win on
    # accuracy and McNemar's test alone, whichever class a 1-epoch model happens to favour.
    deploy = {"min_metric": 0.1, "max_class_recall_drop": 1.0}
    root = make_workspace(tmp_path_factory.mktemp("tracking"), {**TINY, "deploy": deploy})
    previous, uri = Path.cwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(root)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_registry_uri(os.environ["MLFLOW_TRACKING_URI"])  # `models:/` URIs here, whatever an earlier test set
    yield root
    mlflow.set_registry_uri("")  # unset: set_registry_uri also exports MLFLOW_REGISTRY_URI to every later subprocess
    os.environ.pop("MLFLOW_REGISTRY_URI", None)
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
    """A client of the store the test is on (MLflow's own default follows whatever URI was set last)."""
    from mlflow import MlflowClient

    uri = os.environ["MLFLOW_TRACKING_URI"]
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


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
    tracking._use(f"sqlite:///{workspace / 'mlflow.db'}")  # `models:/` URIs below: this store, whatever test ran last
    client = mlflow_client()
    version = client.get_model_version_by_alias(runs["stronger"]["registry"]["model_name"], "champion")
    import mlflow.pyfunc
    from mlflow.models import Model

    signature = Model.load(f"models:/{version.name}/{version.version}").signature
    (pixels,) = signature.inputs.inputs
    # an object tensor: MLflow's server passes the JSON values on uncast, the model takes whole numbers 0-255
    assert str(pixels.type) == "object" and tuple(pixels.shape) == (-1, 8, 8, 1)
    served = tracking.model_contract(mlflow.pyfunc.load_model(f"models:/{version.name}/{version.version}"))
    assert served == json.loads(version.tags[registry.CONTRACT_TAG]) and served["dtype"] == "uint8"
    assert {"label", "class", "probability", "probabilities"} <= set(signature.outputs.input_names())
    run = client.get_run(version.run_id)
    digests = {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}
    for data_dir, split in (("data/augmented", "train"), ("data/augmented", "val"), ("data/clean", "test")):
        manifest = artifacts.read_json(workspace / data_dir / "manifest.json")
        assert digests[f"{data_dir}/{split}"] == manifest["splits"][split]["sha256"][: tracking.DIGEST_CHARS]


def test_flat_params_redact_credentials_by_value_and_leave_out_secret_names() -> None:
    """Catches `flatten` keeping secret-named keys (its filter replaced by a plain `else:`), which passed before."""
    tree = {
        "tracking": {"uri": "http://alice:s3cret@mlflow.example:5000", "experiment": "trainflow"},
        "tune": {"storage": "postgresql://bob:hunter2@db.example/optuna?sslpassword=p4ss&x=1"},
        "remote": {"api_token": "t0ken", "url": "https://host/x?access_key=k3y"},
    }
    flat = tracking.flatten(tree)
    text = json.dumps(flat)
    assert not any(secret in text for secret in ("s3cret", "hunter2", "p4ss", "t0ken", "k3y")), flat
    assert flat["tracking.uri"] == "http://***@mlflow.example:5000" and flat["tracking.experiment"] == "trainflow"
    assert "remote.api_token" not in flat  # a secret-looking name: not logged at all


def test_flat_params_log_params_yaml_as_written(workspace: Path) -> None:
    raw = yaml.safe_load((workspace / "params.yaml").read_text())
    flat = tracking.flat_params(load_params(workspace / "params.yaml"))
    assert flat["train.batch_size"] == str(raw["train"]["batch_size"])
    assert set(flat) == set(tracking.flatten(raw))  # every key written, none added


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
        # docs/tracking-and-serving.md's request: the champion's own input example, fetched as the doc says
        docs = (REPO / "docs/tracking-and-serving.md").read_text()
        fetch = next(line for line in docs.splitlines() if line.endswith("> payload.json"))
        subprocess.run(["bash", "-c", fetch], cwd=workspace, env=tool_env(), check=True, capture_output=True)
        status, body = post_json(url, (workspace / "payload.json").read_bytes())
        assert status == 200 and len(body["predictions"]) == 4, body


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


def test_batch_prediction_reads_a_folder_of_class_sub_folders(runs: dict, workspace: Path, tmp_path: Path) -> None:
    from PIL import Image

    test = artifacts.read_dataset(workspace / "data/clean").splits["test"]
    for i, (image, label) in enumerate(zip(test.x[:6], test.y[:6], strict=True)):
        (tmp_path / "images" / str(label)).mkdir(parents=True, exist_ok=True)  # the folder: source's layout
        Image.fromarray(image[..., 0]).save(tmp_path / "images" / str(label) / f"{i}.png")
    (tmp_path / "empty").mkdir()

    def predict(folder: Path) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "tasks.predict", str(folder), "--output", str(tmp_path / "out.csv")]
        env = tool_env(MLFLOW_TRACKING_URI=os.environ["MLFLOW_TRACKING_URI"])
        return subprocess.run(command, cwd=workspace, env=env, capture_output=True, text=True, check=False)

    done = predict(tmp_path / "images")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = (tmp_path / "out.csv").read_text().splitlines()[1:]
    assert sorted(r.split(",")[0] for r in rows) == sorted(f"{y}/{i}.png" for i, y in enumerate(test.y[:6]))
    empty = predict(tmp_path / "empty")
    assert empty.returncode == 1 and "no images found (PNG/JPEG files in it or in its sub-folders" in empty.stderr


def test_an_unreachable_store_is_one_line_naming_the_uri(params: Params, monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.lib.errors import TransientError

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////proc/no/such/dir/mlflow.db")
    with pytest.raises(
        TransientError, match=r"MLflow tracking store sqlite:////proc/no/such/dir/mlflow.db is unreachable"
    ):
        tracking.client(params.tracking)


@pytest.fixture
def sandbox(runs: dict, workspace: Path, tmp_path: Path) -> Iterator[tuple[Path, Params]]:
    """A copy of the module's workspace and registry (champion: the stronger run), for tests that change them."""
    root = tmp_path / "sandbox"
    shutil.copytree(workspace, root, symlinks=True)
    previous = Path.cwd()
    os.chdir(root)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    try:
        yield root, load_params(root / "params.yaml")
    finally:
        os.chdir(previous)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workspace / 'mlflow.db'}"


def registry_state(name: str) -> tuple[int, dict[str, str]]:
    """The newest version number and every alias of the registered model."""
    client = mlflow_client()
    model = client.get_registered_model(name)
    newest = max(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    return newest, dict(model.aliases)


def stage(root: Path, name: str) -> subprocess.CompletedProcess[str]:
    """``python -m tasks.<name>`` in ``root``: a fresh process, as after a move (MLflow caches artifact stores per run
    in a process, and a sandbox's runs have the ids of the module workspace's)."""
    command = [sys.executable, "-m", f"tasks.{name}"]
    return subprocess.run(command, cwd=root, env=tool_env(), capture_output=True, text=True, check=False)


def test_a_model_failing_the_serving_check_is_not_registered_and_moves_no_alias(sandbox: tuple) -> None:
    root, params = sandbox
    name = params.deploy.model_name
    version = mlflow_client().get_model_version_by_alias(name, "champion").version
    mlflow_client().delete_model_version_tag(name, version, registry.FINGERPRINT_TAG)  # the candidate: as a new model
    before = registry_state(name)
    predictions = root / params.paths.predictions
    rows = [row.split(",") for row in predictions.read_text().splitlines()]
    first_test = next(i for i, row in enumerate(rows) if row[0] == "test")
    column = rows[0].index("p_0")
    rows[first_test][column] = str(float(rows[first_test][column]) + 0.01)  # not what the served model answers
    predictions.write_text("\n".join(",".join(row) for row in rows) + "\n")
    failed = stage(root, "deploy")
    assert failed.returncode == 1 and "served predictions differ from evaluate's" in failed.stderr
    assert failed.stderr.splitlines() == [failed.stderr.strip()]  # exactly one line
    assert "nothing was registered and no alias moved" in failed.stderr
    assert registry_state(params.deploy.model_name) == before
    assert processes_in(root) == []  # the serving check's server stopped with the failed deploy

    (root / params.paths.model).write_bytes(b"not a keras model")  # a model that does not even load
    failed = stage(root, "deploy")
    assert failed.returncode == 1 and "the model does not load" in failed.stderr.splitlines()[-1]
    assert registry_state(params.deploy.model_name) == before


def test_deploy_scores_the_champion_of_the_moment(runs: dict, sandbox: tuple) -> None:
    root, params = sandbox
    name, weaker = params.deploy.model_name, runs["weaker"]["registry"]["version"]
    mlflow_client().set_registered_model_alias(name, "champion", weaker)  # another run moved it after this one trained
    assert stage(root, "deploy").returncode == 0  # the stronger model is registered already: nothing new
    assert json.loads((root / params.paths.deploy_report).read_text())["registry"]["registered"] is False
    retrained = load_params(root / "params.yaml", {**STRONGER, "train.epochs": 5})
    for step in (train, evaluate):  # another candidate on the same data (ingest and the data stages cached)
        step.run(retrained)
    done = stage(root, "deploy")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((root / params.paths.deploy_report).read_text())
    assert report["champion"]["version"] == weaker and report["gate"]["champion_version"] == weaker
    assert report["drift"]["reference"].startswith(f"{name} v{weaker} (run ")  # the champion's data, read now
    assert report["registry"]["alias"] == "champion", report["gate"]  # it beats the weaker one it was compared with
    assert str(mlflow_client().get_model_version_by_alias(name, "previous-champion").version) == str(weaker)


def test_a_champion_of_another_contract_keeps_its_alias(runs: dict, sandbox: tuple) -> None:
    root, params = sandbox
    name, champion = params.deploy.model_name, runs["stronger"]["registry"]["version"]
    other = {"input_shape": [28, 28, 1], "dtype": "uint8", "classes": [str(i) for i in range(10)]}
    mlflow_client().set_model_version_tag(name, str(champion), registry.CONTRACT_TAG, json.dumps(other))
    mlflow_client().delete_model_version_tag(name, str(champion), registry.FINGERPRINT_TAG)  # as a new model
    done = stage(root, "deploy")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((root / params.paths.deploy_report).read_text())
    assert report["gate"]["promote"] is False and "another input contract" in report["gate"]["reason"]
    assert "input_shape [28, 28, 1] vs [8, 8, 1]" in report["gate"]["reason"]
    assert str(mlflow_client().get_model_version_by_alias(name, "champion").version) == str(champion)
    version = mlflow_client().get_model_version(name, str(report["registry"]["version"]))
    assert json.loads(version.tags[registry.CONTRACT_TAG])["input_shape"] == [8, 8, 1]  # the contract is registered


def test_the_registry_keeps_working_after_the_project_folder_moves(runs: dict, sandbox: tuple, workspace: Path) -> None:
    root, params = sandbox  # a copy of the project in another folder, the original's artifacts out of the way
    away = workspace.with_name(workspace.name + "-away")
    (workspace / "mlartifacts").rename(away)
    try:
        artifact_uri = mlflow_client().get_run(runs["stronger"]["run_id"]).info.artifact_uri
        assert artifact_uri.startswith("trainflow:mlartifacts/")  # no absolute path stored in mlflow.db
        done = stage(root, "deploy")  # loads the champion from its artifacts, beside the copy's mlflow.db
        assert done.returncode == 0, done.stderr[-2000:]
        deployed = json.loads((root / params.paths.deploy_report).read_text())
        assert deployed["champion"]["status"] == "scored", deployed
        assert not (workspace / "mlartifacts").exists()  # nothing looked for, or wrote, at the old place
    finally:
        away.rename(workspace / "mlartifacts")


def test_an_unscorable_champion_is_never_replaced_silently(runs: dict, sandbox: tuple) -> None:
    root, params = sandbox
    name, champion = params.deploy.model_name, runs["stronger"]["registry"]["version"]
    before = registry_state(name)
    source = mlflow_client().get_model_version(name, str(champion)).source  # models:/m-<id>
    logged = mlflow_client().get_logged_model(source.removeprefix("models:/"))
    shutil.rmtree(root / logged.artifact_location.removeprefix("trainflow:"))  # the champion's files are lost
    mlflow_client().delete_model_version_tag(name, str(champion), registry.FINGERPRINT_TAG)  # as a new model
    failed = stage(root, "deploy")
    assert failed.returncode == 1
    line = failed.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: deploy: {name} v{champion} (the champion) cannot be scored"), line
    assert registry_state(name) == before


def test_tuning_runs_params_tags_and_uploaded_files_never_hold_a_credential(
    params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tune flow's study run logs tune.storage as a param, and trials' runs get error tags: all redacted."""
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = params.tracking.model_copy(update={"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    storage = "postgresql://bob:pw-storage-1@db.example/optuna?sslpassword=pw-storage-2"
    parent = tracking.start_parent_run(settings, "tune s", {"tune.storage": storage}, {"tune.source": storage})
    child = tracking.start_child_run(settings, parent, "s trial 0", {"tune.note": "http://u:pw-child-3@h"})
    tracking.set_tags(settings, child, {"tune.error": "OperationalError: sqlite:///x.db?token=pw-error-4 failed"})
    store = MlflowClient(settings.uri)
    held = json.dumps([(store.get_run(r).data.params, store.get_run(r).data.tags) for r in (parent, child)])
    assert store.get_run(parent).data.params["tune.storage"] == ("postgresql://***@db.example/optuna?sslpassword=***")
    assert "pw-" not in held, held
    # deploy uploads dvc.lock, which records params.yaml's values as written: the copy in MLflow holds none
    lock, image = tmp_path / "dvc.lock", tmp_path / "plot.png"
    lock.write_text(f"params:\n  params.yaml:\n    tune.storage: {storage}\n")
    image.write_bytes(b"\x89PNG\r\n\x1a\n\xff" + storage.encode())  # not text: as it is
    tracking.log_artifacts(settings, parent, [lock, image], "deploy")
    got = Path(store.download_artifacts(parent, "deploy", str(tmp_path / "got")))
    assert (got / "dvc.lock").read_text() == "params:\n  params.yaml:\n    tune.storage: " + (
        "postgresql://***@db.example/optuna?sslpassword=***\n"
    )
    assert (got / "plot.png").read_bytes() == image.read_bytes() and lock.read_text().count("pw-storage") == 2
