"""MLflow tracking: one run per pipeline run, its params, metrics, artifacts and lineage; logging the served model.

The model registry (champion, versions, aliases) is tasks/lib/registry.py, which only deploy uses.

Every function takes the tracking settings (params' ``tracking`` section), not the whole config; start_run also
takes the params whose values it logs.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tasks.lib import artifacts
from tasks.lib.config import DataParams, Params, TrackingParams, TrainParams
from tasks.lib.errors import SECRET_NAME as SECRET
from tasks.lib.errors import TrainflowError, TransientError, redact
from tasks.lib.lock import waiting_lock
from tasks.lib.sources import FILE_SOURCES

log = logging.getLogger(__name__)

# MLflow 3's UI opens an experiment on its GenAI overview unless this tag says it holds classic model training
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# ... and MLflow 3.17's UI reads its GenAI / Model training switch from the address (else the browser's last choice)
UI_TRAINING_VIEW = "workflowType=machine_learning"
DIGEST_CHARS = 32  # MLflow stores dataset digests in 36 characters: the first 32 hex digits of the SHA-256


def tracking_uri(settings: TrackingParams) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else params (the embedded SQLite store), a relative SQLite path made absolute:
    MLflow caches a store per URI, and a relative one would stay on the database of the folder it was first used in."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or settings.uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return uri


def client(settings: TrackingParams) -> Any:
    """An MlflowClient on the tracking/registry URI (also made the fluent API's), checked to be reachable."""

    uri = tracking_uri(settings)
    tracker = _checked_client(uri)
    _use(uri)
    return tracker


def _use(uri: str) -> None:
    """Point MLflow's fluent API at ``uri``, leaving the environment as the user set it: MLflow also writes the URI
    into ``MLFLOW_TRACKING_URI`` and ``MLFLOW_REGISTRY_URI`` (for subprocesses), which would outlive this call and
    send later processes, and :func:`tracking_uri`, to this store."""
    import mlflow

    user = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for name, value in user.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def sqlite_lock(uri: str) -> Path | None:
    """The lock file beside a SQLite store's database (``mlflow.db`` → ``mlflow.db.lock``); None for another store,
    or where the database's folder does not exist (MLflow's own error says so)."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri.removeprefix("sqlite:///").partition("?")[0])
    return database.with_name(f"{database.name}.lock") if database.name and database.parent.is_dir() else None


@functools.cache
def _checked_client(uri: str) -> Any:
    from mlflow import MlflowClient

    lock = sqlite_lock(uri)
    try:
        # MLflow creates and migrates a new SQLite store on first use, unlocked: two processes opening it at once
        # failed one on a half-made schema ("table ... already exists", alembic_version). One opens it at a time.
        with waiting_lock(lock, f"opening MLflow store {redact(uri)}") if lock else contextlib.nullcontext():
            tracker = MlflowClient(tracking_uri=uri, registry_uri=uri)
            tracker.search_experiments(max_results=1)
    except TrainflowError:
        raise
    except Exception as exc:  # an unreachable server or a bad database raise many types
        raise TransientError(f"MLflow tracking store {uri} is unreachable ({str(exc).splitlines()[0][:200]})") from None
    return tracker


REMOTE_SCHEMES = ("http://", "https://", "databricks")
# artifacts beside the SQLite database: tasks/lib/artifact_store.py, which MLflow loads through its plugin entry point
# (nothing here imports it: MLflow's registry would meet it half-initialised)
ARTIFACT_SCHEME = "trainflow"  # a tracking server keeps (or proxies) the artifacts


def experiment_id(tracker: Any, settings: TrackingParams) -> str:
    """Get or create the experiment, marked as model training; with a local store its artifacts go to
    ``tracking.artifacts`` (not ./mlruns): relative to the SQLite database's folder, through
    tasks/lib/artifact_store.py, so that the registry keeps working when the project folder is moved.

    Against a tracking server (``MLFLOW_TRACKING_URI=http://…``) the server decides where artifacts live.
    """
    found = tracker.get_experiment_by_name(settings.experiment)
    if found is not None:
        for key, value in EXPERIMENT_KIND.items():
            if found.tags.get(key) != value:  # an experiment made before the tag was set
                tracker.set_experiment_tag(found.experiment_id, key, value)
        return found.experiment_id
    uri, location = tracking_uri(settings), None
    if uri.startswith("sqlite:") and not Path(settings.artifacts).is_absolute():
        # beside the database wherever the project moves (MLflow itself would store an absolute path)
        location = f"{ARTIFACT_SCHEME}:{settings.artifacts}"
    elif not uri.startswith(REMOTE_SCHEMES):
        location = Path(settings.artifacts).resolve().as_uri()
    from mlflow.exceptions import MlflowException

    try:
        return tracker.create_experiment(settings.experiment, artifact_location=location, tags=EXPERIMENT_KIND)
    except MlflowException:  # another first run created it meanwhile: use theirs (anything else raises again here)
        found = tracker.get_experiment_by_name(settings.experiment)
        if found is None:
            raise
        return found.experiment_id


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A params mapping as ``section.key`` → value text (as MLflow logs params), secret-looking names left out and
    credentials in URL-shaped values (``user:password@``, ``?password=``) redacted."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out |= flatten(value, name)
        elif not SECRET.search(str(key)):  # a secret-looking name: left out; a credential inside a URL: redacted
            out[name] = redact(str(list(value) if isinstance(value, tuple) else value))
    return out


def flat_params(params: Params) -> dict[str, str]:
    """Every params.yaml value as ``section.key``, except names that look like secrets."""
    return flatten(params.model_dump(mode="json", exclude_unset=True))  # as written (no None defaults of tune.space)


def git(*args: str) -> str | None:
    """``git ARGS``' output, stripped; None outside a repository (or when git fails)."""
    done = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def prefect_flow_run_id() -> str | None:
    """The Prefect flow run that started this stage (flows/training.py sets Prefect's own PREFECT__FLOW_RUN_ID for
    the stage's process), or None (not under Prefect)."""
    return os.environ.get("PREFECT__FLOW_RUN_ID") or None


def run_name(data: DataParams) -> str:
    """A run's name: its data and when it started, e.g. ``digits 2026-11-30 01:24:05``, ``mnist 2026-…``."""
    name = Path(data.path).name if data.source in FILE_SOURCES else data.source.removeprefix("keras:")
    return f"{name} {time.strftime('%Y-%m-%d %H:%M:%S')}"


def start_run(settings: TrackingParams, run_info: Path, params: Params, device: Mapping[str, Any]) -> str:
    """Open the pipeline run (train does): every params value, lineage tags; its id goes to ``run_info``."""

    tracker = client(settings)
    tags = {
        "git.commit": git("rev-parse", "HEAD") or "unknown",
        "git.dirty": str(bool(git("status", "--porcelain", "--untracked-files=no"))).lower(),
        "data.source": params.data.source,
        "data.path": params.data.path,
        "keras.backend": str(device.get("backend")),
        "device": str(device.get("device")),
        "device.name": str(device.get("device_name")),
        "mlflow.source.name": "trainflow",
    }
    if (flow_run_id := prefect_flow_run_id()) is not None:
        tags["prefect.flow_run_id"] = str(flow_run_id)
    run = tracker.create_run(experiment_id(tracker, settings), tags=texts(tags), run_name=run_name(params.data))
    run_id = run.info.run_id
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in flat_params(params).items()]
    for start in range(0, len(items), 100):
        tracker.log_batch(run_id, params=items[start : start + 100])
    _write_run_info(settings, run_info, run.info.experiment_id, run_id, params.train)
    _use(tracking_uri(settings))
    return run_id


def resume_run(settings: TrackingParams, run_info: Path, run_id: str, train: TrainParams) -> None:
    """Point ``run_info`` at a run opened by an interrupted training."""
    run = client(settings).get_run(run_id)
    _write_run_info(settings, run_info, run.info.experiment_id, run_id, train)


def _write_run_info(settings: TrackingParams, run_info: Path, experiment: str, run_id: str, train: TrainParams) -> None:
    artifacts.write_json(
        Path(run_info),
        {
            "run_id": run_id,
            "experiment_id": experiment,
            "tracking_uri": redact(tracking_uri(settings)),  # a file others read: never the credentials
            "ui_path": f"#/experiments/{experiment}/runs/{run_id}?{UI_TRAINING_VIEW}",
            "train": train.model_dump(mode="json"),  # the train params the model was trained with (the run report)
        },
    )


def current_run(run_info: Path) -> str:
    """The run train opened (``paths.run_info``), for evaluate and deploy to add to."""
    return artifacts.read_json(Path(run_info))["run_id"]


def epoch_callback(settings: TrackingParams, run_id: str) -> Any:
    """A Keras callback logging every epoch's metrics with step = epoch (absolute, also after a resume).

    Logged with MLflow's async logging when the next epoch begins, so an epoch pays a queue put, not a database
    write, and MLflow's thread writes while the next epoch trains; ``flush()`` sends and waits until every finished
    epoch is stored (train calls it before each checkpoint, so a backed-up epoch's metrics are never lost), and the
    end of ``fit`` flushes too.
    """
    import keras
    from mlflow.entities import Metric

    tracker = client(settings)

    class EpochMetrics(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.ready: list[Any] = []  # the last epoch's metrics, sent when the next epoch begins
            self.pending: list[Any] = []  # mlflow.RunOperations not yet waited for

        def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
            now = int(time.time() * 1000)
            self.ready = [Metric(k, float(v), now, epoch) for k, v in (logs or {}).items() if np.isscalar(v)]

        def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
            # sent here, MLflow's thread writes while the epoch trains, not while the other callbacks run
            self.send()

        def send(self) -> None:
            if self.ready:
                self.pending.append(tracker.log_batch(run_id, metrics=self.ready, synchronous=False))
                self.ready = []

        def flush(self) -> None:
            self.send()
            pending, self.pending = self.pending, []
            for operations in pending:
                operations.wait()  # raises what the logging raised

        def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
            self.flush()

    return EpochMetrics()


def log_metrics(settings: TrackingParams, run_id: str, metrics: Mapping[str, float]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client(settings).log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])


def texts(values: Mapping[str, Any]) -> dict[str, str]:
    """Param or tag values as MLflow stores them: text, credentials redacted (every param and tag goes through it)."""
    return {key: redact(str(value)) for key, value in values.items()}


_NOT_IN_METRIC_NAMES = re.compile(r"[^A-Za-z0-9_-]+")
MAX_NAME_PART = 100  # characters of a class name kept in a metric name (MLflow allows 250 in all)


def metric_names(classes: Iterable[str]) -> dict[str, str]:
    """Each class name as it may appear in an MLflow metric name (``test.per_class.<part>.f1``): distinct parts, the
    same for the same classes in the same order.

    A name of ASCII letters, digits, ``_`` and ``-`` is kept as it is; in any other, each run of other characters
    (quotes, ``+``, ``.``, ``/``, spaces, non-ASCII letters) becomes ``_``, and ``_2``, ``_3``, … is added where that
    gives a part already taken (``a b`` and ``a,b``: ``a_b`` and ``a_b_2``). Kept names are placed first, so a class
    named ``a_b`` is always ``a_b``. The class names themselves stay as they are in every file a user reads.
    """
    classes = list(classes)
    parts = {name: name for name in classes if name and len(name) <= MAX_NAME_PART and name == _safe_part(name)}
    taken = set(parts.values())
    for name in classes:
        if name in parts:
            continue
        base = _safe_part(name)
        part, n = base, 1
        while part in taken:
            n += 1
            part = f"{base}_{n}"
        parts[name] = part
        taken.add(part)
    return {name: parts[name] for name in classes}


def _safe_part(name: str) -> str:
    return _NOT_IN_METRIC_NAMES.sub("_", name)[:MAX_NAME_PART] or "_"


def set_tags(settings: TrackingParams, run_id: str, tags: Mapping[str, Any]) -> None:
    tracker = client(settings)
    for key, value in texts(tags).items():
        tracker.set_tag(run_id, key, value)


def run_record(settings: TrackingParams, run_id: str) -> dict[str, Any]:
    """What a run holds for a report: its tags, params, latest metrics, status, start and end (ms since the epoch)."""
    run = client(settings).get_run(run_id)
    return {
        "run_id": run_id,
        "name": run.info.run_name,
        "experiment_id": run.info.experiment_id,
        "status": run.info.status,
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
        "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
        "metrics": dict(run.data.metrics),
        "params": dict(run.data.params),
    }


REPORT_TAG = "trainflow.report"  # on the run (artifact path) and on the registered version (runs:/ URI)


def report_uri(run_id: str, report: Path | str) -> str:
    """Where :func:`log_report` puts a run's report: deploy points the registered version at it beforehand."""
    return f"runs:/{run_id}/report/{Path(report).name}"


def log_report(settings: TrackingParams, run_id: str, report: Path) -> str:
    """Log the run's report as the artifact ``report/<file>`` and tag the run with its path; the ``runs:/`` URI."""
    tracker = client(settings)
    tracker.log_artifact(run_id, str(report), "report")
    tracker.set_tag(run_id, REPORT_TAG, f"report/{Path(report).name}")
    return report_uri(run_id, report)


def log_artifacts(
    settings: TrackingParams, run_id: str, paths: Iterable[Path | str], folder: str | None = None
) -> None:
    """Upload files and folders (folders keep their name) that exist; missing ones are skipped. A text file goes up
    with its credentials redacted (dvc.lock records params.yaml's values as they are written)."""
    tracker = client(settings)
    for path in map(Path, paths):
        if path.is_dir():
            target = f"{folder}/{path.name}" if folder else path.name
            tracker.log_artifacts(run_id, str(path), target)
        elif path.is_file():
            with redacted_copy(path) as upload:
                tracker.log_artifact(run_id, str(upload), folder)


@contextlib.contextmanager
def redacted_copy(path: Path) -> Iterator[Path]:
    """``path`` itself, or where its text holds a credential, a redacted copy of the same name (a temporary file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, ValueError):  # not text (an image, a model): as it is
        yield path
        return
    if (clean := redact(text)) == text:
        yield path
        return
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / path.name
        copy.write_text(clean, encoding="utf-8")
        yield copy


def log_datasets(settings: TrackingParams, run_id: str, data_dir: str, splits: Iterable[str]) -> None:
    """`log_input` per split: digest = the manifest's SHA-256 (first 32 hex digits), source = the DVC path, schema =
    the images' and labels' dtype and shape (described by empty arrays: nothing is loaded)."""
    import mlflow

    manifest = artifacts.read_json(Path(data_dir) / artifacts.MANIFEST)
    features = np.zeros((0, *manifest["shape"]), dtype=manifest["dtype"])
    _use(tracking_uri(settings))
    with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        # a relative path matches two of MLflow's local source types, which are the same class: it warns
        warnings.filterwarnings("ignore", message="The specified dataset source", category=UserWarning)
        for split in splits:
            digest = manifest["splits"][split]["sha256"][:DIGEST_CHARS]
            dataset = mlflow.data.from_numpy(
                features,
                targets=np.zeros(0, np.int64),
                source=f"{data_dir}/{split}",
                name=f"{data_dir}/{split}",
                digest=digest,
            )
            mlflow.log_input(dataset, context=split)


def predict_probabilities(model: Any, x: np.ndarray) -> np.ndarray:
    """Class probabilities from a loaded model: the served DataFrame's column, or a bare array."""
    (spec,) = model.metadata.get_input_schema().inputs
    if spec.type == np.dtype(object):  # MLflow checks the dtype: pixels or texts as Python objects, as JSON sends them
        x = np.asarray(x).astype(object)
    result = model.predict(x)
    if hasattr(result, "columns") and "probabilities" in result.columns:
        return np.stack(result["probabilities"].to_numpy()).astype(np.float32)
    return np.asarray(result, dtype=np.float32)


def model_contract(model: Any) -> dict[str, Any]:
    """The contract of a loaded model: its signature's input shape and dtype, and its classes."""
    (spec,) = model.metadata.get_input_schema().inputs
    config = getattr(model, "model_config", None) or {}
    classes = list(config.get("classes") or [])
    text = config["kind"] == "text" if "kind" in config else spec.type.kind in "UO"  # older: text had an object tensor
    # images with an object signature: the served model takes whole numbers 0-255 only (serving_model._pixels)
    dtype = artifacts.TEXT if text else "uint8" if spec.type.kind == "O" else str(spec.type)
    return {"input_shape": list(spec.shape[1:]), "dtype": dtype, "classes": classes}


def model_classes(model: Any, count: int) -> tuple[str, ...]:
    """The class names a logged model carries ("0".."K-1" when it has none)."""
    return tuple(model_contract(model)["classes"] or (str(i) for i in range(count)))


def log_model(
    settings: TrackingParams,
    run_id: str,
    keras_model: Path,
    example: np.ndarray,
    config: Mapping[str, Any],
    code_paths: Iterable[Path] = (),
) -> str:
    """Log the served model (a pyfunc around the Keras model, ``config`` its model_config) to the run; its URI.
    ``code_paths``: folders copied into the model and put on ``sys.path`` where it loads (the model functions).

    MLflow infers the signature by running the served model on ``example``: images or texts as an object tensor in
    (so the server passes the JSON values on uncast, for the model to check); label, class name, probability and
    class probabilities out.
    """
    import mlflow

    from tasks.lib.quiet import import_keras

    keras = import_keras()  # the served model loads it to infer the signature: without TensorFlow's start-up lines
    import mlflow.pyfunc
    import pandas as pd

    client(settings)  # checks the store and sets the tracking URI
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
        try:
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(__file__).with_name("serving_model.py")),
                artifacts={"keras_model": str(Path(keras_model).resolve())},
                model_config=dict(config),
                input_example=example,
                pip_requirements=requirements,
                code_paths=[str(path) for path in code_paths if Path(path).is_dir()] or None,
            )
        except Exception as exc:  # MLflow runs the served model on the example: a model that does not load fails
            first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise TrainflowError(f"{keras_model}: the served model does not load ({first})") from None
    return info.model_uri


# Hyper-parameter tuning (flows/tune.py): one parent run per Optuna study, train's run of each trial nested under it.
PARENT_TAG = "mlflow.parentRunId"  # what makes a run a child of another in MLflow's UI and search


def start_parent_run(settings: TrackingParams, name: str, params: Mapping[str, Any], tags: Mapping[str, Any]) -> str:
    """Open a run for a tuning study (its params logged once, tags set); returns its id."""
    from mlflow.entities import Param

    tracker = client(settings)
    run = tracker.create_run(experiment_id(tracker, settings), tags=texts(tags), run_name=name)
    tracker.log_batch(run.info.run_id, params=[Param(k, v[:6000]) for k, v in texts(params).items()])
    return run.info.run_id


def has_run(settings: TrackingParams, run_id: str) -> bool:
    """Whether this store holds the run (a study shared by clones names runs of every clone's store)."""
    from mlflow.exceptions import MlflowException

    try:
        client(settings).get_run(run_id)
    except MlflowException:
        return False
    return True


def reopen_run(settings: TrackingParams, run_id: str) -> bool:
    """Mark an existing run RUNNING again (a resumed study); False when this store has no such run."""
    if not has_run(settings, run_id):
        return False
    client(settings).update_run(run_id, status="RUNNING")
    return True


def nest_run(settings: TrackingParams, run_id: str, parent_id: str, name: str, tags: Mapping[str, Any]) -> None:
    """Make ``run_id`` a child of ``parent_id`` named ``name``, with ``tags``."""
    set_tags(settings, run_id, {PARENT_TAG: parent_id, "mlflow.runName": name, **tags})


def start_child_run(settings: TrackingParams, parent_id: str, name: str, tags: Mapping[str, Any]) -> str:
    """A child run of ``parent_id`` (for a trial that failed before train opened its own)."""
    tracker = client(settings)
    parent = tracker.get_run(parent_id)
    all_tags = texts({PARENT_TAG: parent_id, **tags})
    return tracker.create_run(parent.info.experiment_id, tags=all_tags, run_name=name).info.run_id


def end_run(settings: TrackingParams, run_id: str, status: str) -> None:
    """Terminate a run: ``FINISHED``, ``FAILED`` or ``KILLED``."""
    client(settings).set_terminated(run_id, status)


def delete_tag(settings: TrackingParams, run_id: str, key: str) -> None:
    import contextlib

    from mlflow.exceptions import MlflowException

    with contextlib.suppress(MlflowException):  # no such tag (or run): nothing to remove
        client(settings).delete_tag(run_id, key)
