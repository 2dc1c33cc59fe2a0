"""The training flow under a real (test-harness) Prefect API: states, caching, dvc.lock, failures, retries."""

from __future__ import annotations

import importlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogHandler
from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
from prefect.testing.utilities import prefect_test_harness

import flows.training as training_module
import tasks.lib.sources
from flows.dvc_repo import stage_graph
from flows.training import SUMMARY_KEY, parse_overrides, summary_markdown, training
from tasks.lib.errors import TrainflowError, TransientError
from tests.helpers import STAGES, TINY, make_workspace, processes_in, ran, sh, wait_for


def test_stages_come_from_dvc_yaml_in_order() -> None:
    assert list(stage_graph(Path(__file__).resolve().parents[2])) == list(STAGES)


def test_overrides_parse_values_as_yaml() -> None:
    assert parse_overrides(["train.epochs=3", "data.source=idx:x", "train.filters=[8, 16]"]) == {
        "train.epochs": 3,
        "data.source": "idx:x",
        "train.filters": [8, 16],
    }
    with pytest.raises(TrainflowError, match="expected KEY=VALUE"):
        parse_overrides(["train.epochs"])


def test_summary_lists_every_stage_its_counts_and_the_metrics() -> None:
    reports = {
        "ingest": {"splits": {"train": {"count": 7}, "val": {"count": 2}, "test": {"count": 1}}},
        "clean": {"removed_total": 1, "input_total": 10},
        "augment": {"train_original": 6, "train_added": 6},
        "normalize": {"method": "scale"},
        "train": {"epochs_run": 2, "device": "CPU", "backend": "tensorflow"},
        "evaluate": {"test": {"accuracy": 0.9}},
        "deploy": {
            "serving": {"checked": 16, "latency_ms": {"p50": 12.0}},
            "gate": {"promote": True},
            "registry": {"version": 3},
        },
        "report": {"path": "reports/report.html", "bytes": 150_000, "mlflow": "runs:/r1/report/report.html"},
    }
    results = [
        {"stage": s, "state": "Cached", "seconds": 1.0, "summary": importlib.import_module(f"tasks.{s}").describe(r)}
        for s, r in reports.items()
    ]
    run = {"run_id": "r1", "tracking_uri": "sqlite:///mlflow.db", "ui_path": "#/experiments/1/runs/r1"}
    report = Path("reports/report.html")
    text = summary_markdown(results, {"test": {"accuracy": 0.9, "f1_macro": 0.8, "loss": 0.3}}, run, report)
    assert all(f"| {s} | Cached | 1.0 |" in text for s in STAGES)
    assert f"[report.html]({report.resolve().as_uri()})" in text  # the flow run's summary links the run report
    assert "`runs:/r1/report/report.html`" in text and "reports/report.html (146 KB)" in text
    assert "train 7 / val 2 / test 1" in text and "removed 1 of 10" in text and "2 epochs on CPU" in text
    assert "| test | 0.9000 | 0.8000 | 0.3000 |" in text


@pytest.mark.slow
def test_the_dask_runner_writes_the_bytes_of_the_single_process_run(tmp_path: Path) -> None:
    """Per-shard tasks on a local Dask cluster of two worker processes, against `python -m tasks.<stage>`."""
    settings = {**TINY, "data": {"shard_size": 300}, "flow": {"task_runner": "dask", "workers": 2}}
    root = make_workspace(tmp_path, settings)
    for stage in STAGES[:4]:
        sh(root, "python", "-m", f"tasks.{stage}")
    data = ("data/clean", "data/augmented", "data/normalized")

    def files() -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for d in data for p in (root / d).rglob("*") if p.is_file()}

    single = files()
    assert len([name for name in single if name.startswith("data/clean/train/x-")]) == 5  # 1,257 images / 300
    for d in data:
        shutil.rmtree(root / d)
    done = sh(root, "python", "-m", "flows.training", PREFECT_HOME=str(tmp_path / "prefect"))
    log = done.stdout + done.stderr
    assert "Creating a new Dask cluster" in log and "Task run 'clean-inspect-4'" in log
    assert "database is locked" not in log
    assert log.count("Starting temporary server") == 1  # the workers report to the flow's server, none of their own
    assert processes_in(root) == []  # the temporary server and the Dask cluster stopped with the command
    assert files() == single
    assert "up to date" in sh(root, "dvc", "status").stdout


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    results = tmp_path_factory.mktemp("prefect-results")
    with prefect_test_harness(server_startup_timeout=120), temporary_settings({PREFECT_LOCAL_STORAGE_PATH: results}):
        yield


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, prefect_api: None) -> Iterator[Path]:
    root = make_workspace(tmp_path_factory.mktemp("flow"), TINY)
    previous = Path.cwd()
    os.chdir(root)
    yield root
    os.chdir(previous)


def states(summary: dict[str, Any]) -> dict[str, str]:
    return {stage: info["state"] for stage, info in summary["stages"].items()}


def task_runs_and_logs(flow_run_id: Any, expected_log: str) -> tuple[dict[str, str], str]:
    """The flow run's task states and its log, once the log holds ``expected_log`` (log batches reach the API late)."""
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))

        def log_text() -> str | None:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            text = "\n".join(log.message for log in logs)
            return text if expected_log in text else None

        text = wait_for(f"{expected_log!r} in the flow run's log", log_text, timeout=60, every=0.5)
    return {r.name: r.state.name for r in runs}, str(text)


def upstream_names(flow_run_id: Any) -> dict[str, list[str]]:
    """Each task run's upstream task runs by name, from the Prefect API (what the UI's run graph draws)."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    names = {run.id: run.name for run in runs}
    return {
        run.name: sorted(names[i.id] for inputs in run.task_inputs.values() for i in inputs if i.id in names)
        for run in runs
        if run.name in STAGES
    }


@pytest.mark.slow
def test_flow_runs_every_stage_wired_as_dvc_dag_then_caches_and_leaves_dvc_clean(
    tmp_path: Path, prefect_api: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = make_workspace(tmp_path, TINY)  # its own: every stage must run, whatever ran before
    monkeypatch.chdir(workspace)
    state = training(params_path="params.yaml", return_state=True)
    first = state.result()
    assert states(first) == dict.fromkeys(STAGES, "Completed")
    flow_run_id = state.state_details.flow_run_id
    # the run graph's edges are those of `dvc dag`: each stage hangs from the stages whose outputs it reads
    dag = sh(workspace, "dvc", "dag", "--dot").stdout
    expected = {s: sorted(u for u in STAGES if f'"{u}" -> "{s}"' in dag) for s in STAGES}
    assert expected["deploy"] == ["clean", "evaluate", "train"]  # the parse above found the edges
    # ... and the report, which shows dvc.lock, also hangs from the dvc commit of the stages before it
    assert upstream_names(flow_run_id) == {
        **expected,
        "report": sorted([*expected["report"], "dvc-commit-before-report"]),
    }
    _, logs = task_runs_and_logs(flow_run_id, "evaluate: val accuracy")
    assert "evaluate: val accuracy" in logs  # the stage's own log lines reach the Prefect UI
    runs, _ = task_runs_and_logs(flow_run_id, "")
    # the data stages' per-shard work shows as task runs of its own (TINY: one shard per split; normalize.method
    # scale reads no shard)
    assert {"clean-inspect-0", "clean-write-2", "augment-3"} <= set(runs)
    assert first["metrics"]["test"]["accuracy"] > 0.5
    assert json.loads((workspace / "reports/deploy.json").read_text())["serving"]["ok"] is True
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[SUMMARY_KEY])))
    summary = next(a.data for a in artifacts if first["mlflow_run_id"] in a.data)  # the summary links the MLflow run
    assert "| deploy | Completed |" in summary
    assert f"runs:/{first['mlflow_run_id']}/report/report.html" in summary  # ... and the run report
    page = (workspace / "reports/report.html").read_text()
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())["stages"]
    assert all(out["md5"] in page for out in lock["train"]["outs"])  # recorded before the report ran: this run's
    assert f"trained in <code>{flow_run_id}</code>" in page
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}").get_run(first["mlflow_run_id"])
    assert run.data.tags["prefect.flow_run_id"] == str(flow_run_id)  # ... and back

    assert "up to date" in sh(workspace, "dvc", "status").stdout
    assert ran(sh(workspace, "dvc", "repro").stdout) == []

    second = training(params_path="params.yaml")
    assert states(second) == dict.fromkeys(STAGES, "Cached")


def settled(workspace: Path) -> None:
    """Run the flow until nothing is left to run, whatever an earlier test changed in the shared workspace."""
    training(params_path="params.yaml")
    assert set(states(training(params_path="params.yaml")).values()) == {"Cached"}


@pytest.mark.slow
def test_a_param_change_reruns_only_downstream_stages(workspace: Path) -> None:
    settled(workspace)
    epochs = yaml.safe_load((workspace / "params.yaml").read_text())["train"]["epochs"]
    summary = training(params_path="params.yaml", overrides={"train.epochs": epochs + 1})
    assert states(summary) == {
        **dict.fromkeys(STAGES[:4], "Cached"),
        **dict.fromkeys(("train", "evaluate", "deploy", "report"), "Completed"),
    }
    assert f"epochs: {epochs + 1}" in (workspace / "params.yaml").read_text()
    assert "up to date" in sh(workspace, "dvc", "status").stdout


@pytest.mark.slow
def test_changed_code_or_missing_outputs_rerun_that_stage(workspace: Path) -> None:
    settled(workspace)
    with (workspace / "tasks/normalize.py").open("a") as f:
        f.write("\n# a code change\n")
    shutil.rmtree(workspace / "data/clean")
    summary = training(params_path="params.yaml")
    # clean's outputs were gone: it reruns; normalize's code changed: it reruns. Stages whose inputs came out
    # byte-identical stay cached, as in `dvc repro`.
    assert states(summary)["clean"] == "Completed"
    assert states(summary)["normalize"] == "Completed"
    assert states(summary)["ingest"] == "Cached"
    assert (workspace / "data/clean/manifest.json").is_file()
    assert "up to date" in sh(workspace, "dvc", "status").stdout


@pytest.mark.slow
def test_a_failing_stage_fails_the_flow_with_its_message_and_stops(workspace: Path) -> None:
    kept = (workspace / "params.yaml").read_text()
    try:  # the overrides are written into params.yaml, as `dvc exp run -S` writes them: the next test gets it back
        state = training(
            params_path="params.yaml",
            overrides={"data.source": "idx", "data.path": "no/such/folder"},
            return_state=True,
        )
    finally:
        (workspace / "params.yaml").write_text(kept)
    assert state.is_failed()
    with pytest.raises(TrainflowError, match="no/such/folder: data source path not found"):
        state.result()
    runs, logs = task_runs_and_logs(state.state_details.flow_run_id, "data source path not found")
    assert runs == {"ingest": "Failed"}
    assert "no/such/folder: data source path not found" in logs


@pytest.mark.slow
@pytest.mark.parametrize(
    ("error", "failures", "calls_expected", "completes", "fraction"),
    [
        (TransientError, 2, 3, True, 0.2),  # fails twice, the second retry works
        (TransientError, 99, 3, False, 0.21),  # never works: fails after the two configured retries
        (TrainflowError, 99, 1, False, 0.22),  # bad input: not retried
    ],
)
def test_only_transient_ingest_failures_are_retried(
    workspace: Path,
    monkeypatch: pytest.MonkeyPatch,
    error: type[Exception],
    failures: int,
    calls_expected: int,
    completes: bool,
    fraction: float,
) -> None:
    calls = []
    real = tasks.lib.sources.load_digits

    def flaky() -> Any:
        calls.append(1)
        if len(calls) <= failures:
            raise error("the source is unavailable")
        return real()

    monkeypatch.setattr(tasks.lib.sources, "load_digits", flaky)
    monkeypatch.setattr(training_module, "RETRY_DELAYS", [0, 0])
    state = training(  # a new split fraction: ingest cannot come from the cache
        params_path="params.yaml",
        # data.path too: a test before may have left one that does not exist, which DVC refuses to commit
        overrides={"data.source": "digits", "data.path": "data/input", "ingest.val_fraction": fraction},
        return_state=True,
    )
    assert len(calls) == calls_expected
    assert state.is_completed() is completes
    if not completes:
        with pytest.raises(error, match="the source is unavailable"):
            state.result()
