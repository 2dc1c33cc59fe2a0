"""MLflow: one run per pipeline run, lineage, the model registry and its champion (the one module that knows MLflow)."""

from __future__ import annotations

import functools
import logging
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tasks import artifacts
from tasks.config import Params
from tasks.errors import TrainflowError, TransientError

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"
SECRET = re.compile(r"(token|password|passwd|secret|credential|(^|_)key)$", re.IGNORECASE)
DIGEST_CHARS = 32  # MLflow stores dataset digests in 36 characters: the first 32 hex digits of the SHA-256


def tracking_uri(params: Params) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else params (the embedded SQLite store)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.uri


def client(params: Params) -> Any:
    """An MlflowClient on the tracking/registry URI (also made the fluent API's), checked to be reachable."""
    import mlflow

    uri = tracking_uri(params)
    tracker = _checked_client(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return tracker


@functools.cache
def _checked_client(uri: str) -> Any:
    from mlflow import MlflowClient

    try:
        tracker = MlflowClient(tracking_uri=uri, registry_uri=uri)
        tracker.search_experiments(max_results=1)
    except Exception as exc:  # an unreachable server or a bad database raise many types
        raise TransientError(f"MLflow tracking store {uri} is unreachable ({str(exc).splitlines()[0][:200]})") from None
    return tracker


REMOTE_SCHEMES = ("http://", "https://", "databricks")  # a tracking server keeps (or proxies) the artifacts


def experiment_id(tracker: Any, params: Params) -> str:
    """Get or create the experiment; with a local store its artifacts go to ``tracking.artifacts`` (not ./mlruns).

    Against a tracking server (``MLFLOW_TRACKING_URI=http://…``) the server decides where artifacts live.
    """
    found = tracker.get_experiment_by_name(params.tracking.experiment)
    if found is not None:
        return found.experiment_id
    if tracking_uri(params).startswith(REMOTE_SCHEMES):
        return tracker.create_experiment(params.tracking.experiment)
    location = Path(params.tracking.artifacts).resolve().as_uri()
    return tracker.create_experiment(params.tracking.experiment, artifact_location=location)


def flat_params(params: Params) -> dict[str, str]:
    """Every params.yaml value as ``section.key``, except names that look like secrets."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif not SECRET.search(prefix.rsplit(".", 1)[-1]):
            out[prefix] = str(value)

    walk("", params.model_dump(mode="json"))
    return out


def _git(*args: str) -> str | None:
    done = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def _prefect_flow_run_id() -> str | None:
    if "prefect" not in sys.modules:  # not under Prefect: don't pay for importing it
        return None
    from prefect.runtime import flow_run

    return flow_run.id


def start_run(params: Params, device: Mapping[str, Any]) -> str:
    """Open the pipeline run (train does): params, lineage tags; its id goes to ``paths.run_info``."""
    import mlflow

    tracker = client(params)
    tags = {
        "git.commit": _git("rev-parse", "HEAD") or "unknown",
        "git.dirty": str(bool(_git("status", "--porcelain", "--untracked-files=no"))).lower(),
        "data.source": params.data.source,
        "keras.backend": str(device.get("backend")),
        "device": str(device.get("device")),
        "device.name": str(device.get("device_name")),
        "mlflow.source.name": "trainflow",
    }
    if (flow_run_id := _prefect_flow_run_id()) is not None:
        tags["prefect.flow_run_id"] = str(flow_run_id)
    run = tracker.create_run(experiment_id(tracker, params), tags=tags)
    run_id = run.info.run_id
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in flat_params(params).items()]
    for start in range(0, len(items), 100):
        tracker.log_batch(run_id, params=items[start : start + 100])
    _write_run_info(params, run.info.experiment_id, run_id)
    mlflow.set_tracking_uri(tracking_uri(params))
    return run_id


def resume_run(params: Params, run_id: str) -> None:
    """Point ``paths.run_info`` at a run opened by an interrupted training."""
    run = client(params).get_run(run_id)
    _write_run_info(params, run.info.experiment_id, run_id)


def _write_run_info(params: Params, experiment: str, run_id: str) -> None:
    artifacts.write_json(
        Path(params.paths.run_info),
        {
            "run_id": run_id,
            "experiment_id": experiment,
            "tracking_uri": tracking_uri(params),
            "ui_path": f"#/experiments/{experiment}/runs/{run_id}",
        },
    )


def current_run(params: Params) -> str:
    """The run train opened, for evaluate and deploy to add to."""
    return artifacts.read_json(Path(params.paths.run_info))["run_id"]


def epoch_callback(params: Params, run_id: str) -> Any:
    """A Keras callback logging every epoch's metrics with step = epoch (absolute, also after a resume)."""
    import keras
    from mlflow.entities import Metric

    tracker = client(params)

    def log_epoch(epoch: int, logs: Mapping[str, Any] | None) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, epoch) for k, v in (logs or {}).items() if np.isscalar(v)]
        tracker.log_batch(run_id, metrics=metrics)

    return keras.callbacks.LambdaCallback(on_epoch_end=log_epoch)


def log_metrics(params: Params, run_id: str, metrics: Mapping[str, float]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client(params).log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])


def set_tags(params: Params, run_id: str, tags: Mapping[str, Any]) -> None:
    tracker = client(params)
    for key, value in tags.items():
        tracker.set_tag(run_id, key, str(value))


def log_artifacts(params: Params, run_id: str, paths: Iterable[Path | str], folder: str | None = None) -> None:
    """Upload files and folders (folders keep their name) that exist; missing ones are skipped."""
    tracker = client(params)
    for path in map(Path, paths):
        if path.is_dir():
            target = f"{folder}/{path.name}" if folder else path.name
            tracker.log_artifacts(run_id, str(path), target)
        elif path.is_file():
            tracker.log_artifact(run_id, str(path), folder)


def log_datasets(params: Params, run_id: str, data_dir: str, splits: Iterable[str]) -> None:
    """`log_input` per split: digest = the manifest's SHA-256 (first 32 hex digits), source = the DVC path."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    manifest = artifacts.read_json(Path(data_dir) / artifacts.MANIFEST)
    mlflow.set_tracking_uri(tracking_uri(params))
    with mlflow.start_run(run_id=run_id):
        for split in splits:
            source = resolve_dataset_source(f"{data_dir}/{split}")
            digest = manifest["splits"][split]["sha256"][:DIGEST_CHARS]
            dataset = MetaDataset(source=source, name=f"{data_dir}/{split}", digest=digest)
            mlflow.log_input(dataset, context=split)


def champion_version(params: Params) -> Any | None:
    """The registered version under the ``champion`` alias, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client(params).get_model_version_by_alias(params.deploy.model_name, CHAMPION)
    except MlflowException:
        return None


def load_model(params: Params, version_or_uri: Any) -> Any:
    """A registered model (a version, or a ``models:/`` URI) as an MLflow pyfunc model."""
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    client(params)
    uri = (
        version_or_uri
        if isinstance(version_or_uri, str)
        else (f"models:/{params.deploy.model_name}/{version_or_uri.version}")
    )
    try:
        return mlflow.pyfunc.load_model(uri)
    except MlflowException as exc:
        raise TrainflowError(f"{uri}: cannot load from {tracking_uri(params)} ({exc.message[:200]})") from None


def predict_probabilities(model: Any, x: np.ndarray) -> np.ndarray:
    """Class probabilities from a loaded model: the served DataFrame's column, or a bare array."""
    result = model.predict(x)
    if hasattr(result, "columns") and "probabilities" in result.columns:
        return np.stack(result["probabilities"].to_numpy()).astype(np.float32)
    return np.asarray(result, dtype=np.float32)


def model_classes(model: Any, count: int) -> tuple[str, ...]:
    """The class names a logged model carries ("0".."K-1" when it has none)."""
    config = getattr(model, "model_config", None) or {}
    return tuple(config.get("classes") or (str(i) for i in range(count)))


def log_model(params: Params, run_id: str, example: np.ndarray, classes: tuple[str, ...]) -> str:
    """Log the served model (a pyfunc around the Keras model) to the run; its model URI.

    MLflow infers the signature by running the served model on ``example``: uint8 images in; label, class name,
    probability and class probabilities out.
    """
    import keras
    import mlflow
    import mlflow.pyfunc
    import pandas as pd

    client(params)  # checks the store and sets the tracking URI
    requirements = [
        f"mlflow=={mlflow.__version__}",
        f"tensorflow=={__import__('tensorflow').__version__}",
        f"keras=={keras.__version__}",
        f"pandas=={pd.__version__}",
        f"numpy=={np.__version__}",
    ]
    with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        # MLflow hints that integer columns cannot hold missing values: the int columns are our outputs (labels)
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column", category=UserWarning)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("serving_model.py")),
            artifacts={"keras_model": str(Path(params.paths.model).resolve())},
            model_config={"classes": list(classes), "max_request_images": params.deploy.max_request_images},
            input_example=example,
            pip_requirements=requirements,
        )
    return info.model_uri


def register(params: Params, model_uri: str, promote: bool, decision: Mapping[str, Any]) -> dict[str, Any]:
    """Register a logged model under ``deploy.model_name`` and move the aliases.

    Promoted: ``champion`` moves to the new version and the old one gets ``previous-champion``.
    Otherwise the new version becomes ``challenger`` and the champion is untouched.
    """
    import mlflow

    tracker = client(params)
    name = params.deploy.model_name
    version = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in decision.items()})
    previous = champion_version(params)
    if promote:
        if previous is not None:
            tracker.set_registered_model_alias(name, PREVIOUS, previous.version)
        tracker.set_registered_model_alias(name, CHAMPION, version.version)
    else:
        tracker.set_registered_model_alias(name, CHALLENGER, version.version)
    return {
        "model_name": name,
        "version": int(version.version),
        "alias": CHAMPION if promote else CHALLENGER,
        "model_uri": f"models:/{name}/{version.version}",
    }
