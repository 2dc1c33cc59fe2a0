"""The training flow under a real (test-harness) Prefect API: every stage through DVC, the graph of `dvc dag`, the
shared record of what ran, failures, retries of transient failures only, start-up errors."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient
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
from prefect.testing.utilities import prefect_test_harness

import flows.training as training_module
from flows.dvc_repo import parse_overrides, stage_graph
from flows.training import SUMMARY_KEY, summary_markdown, training
from tasks.lib.config import load_params
from tasks.lib.errors import TrainflowError, TransientError
from tests.conftest import copy_run
from tests.helpers import REPO, STAGES, TINY, committed_params_file, make_workspace, processes_in, ran, sh, wait_for


def test_stages_come_from_dvc_yaml_in_order() -> None:
    assert list(stage_graph(REPO)) == list(STAGES)


def test_overrides_parse_values_as_yaml() -> None:
    assert parse_overrides(["train.epochs=3", "data.source=idx:x", "train.filters=[8, 16]"]) == {
        "train.epochs": 3,
        "data.source": "idx:x",
        "train.filters": [8, 16],
    }
    with pytest.raises(TrainflowError, match="expected KEY=VALUE"):
        parse_overrides(["train.epochs"])


def test_summary_lists_every_stage_the_metrics_the_decision_and_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    paths = load_params(committed_params_file()).paths
    results = [{"stage": s, "state": "skipped" if s == "ingest" else "ran", "seconds": 1.0} for s in STAGES]
    assert "| split |" not in summary_markdown(results, paths)  # nothing written yet: no metrics, no links
    metrics = {"test": {"accuracy": 0.9, "f1_macro": 0.8, "loss": 0.3}}
    deploy = {"gate": {"promote": False, "reason": "accuracy 0.9000 does not beat"}, "registry": {"version": 3}}
    run = {"run_id": "r1", "tracking_uri": "sqlite:///mlflow.db", "ui_path": "#/experiments/1/runs/r1"}
    for path, content in ((paths.metrics, metrics), (paths.deploy_report, deploy), (paths.run_info, run)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(content))
    Path(paths.report).write_text("<html></html>")
    text = summary_markdown(results, paths)
    assert "| ingest | skipped | 1.0 |" in text and all(f"| {s} | ran | 1.0 |" in text for s in STAGES[1:])
    assert "| test | 0.9000 | 0.8000 | 0.3000 |" in text
    assert "Deploy: v3 challenger: accuracy 0.9000 does not beat" in text
    assert "MLflow run `r1` in sqlite:///mlflow.db: #/experiments/1/runs/r1" in text
    assert f"[report.html]({Path(paths.report).resolve().as_uri()})" in text
    # a run file written by an older version (credentials not yet redacted there): the artifact shows none
    Path(paths.run_info).write_text(json.dumps({**run, "tracking_uri": "https://alice:pw-summary-1@mlflow.example"}))
    text = summary_markdown(results, paths)
    assert "in https://***@mlflow.example:" in text and "pw-summary-1" not in text


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, prefect_api: None, tiny_run: Path) -> Iterator[Path]:
    root = copy_run(tiny_run, tmp_path_factory.mktemp("flow") / "workspace")  # after `dvc repro`
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


def store(workspace: Path) -> MlflowClient:
    """The workspace's MLflow store, its registry too (whatever registry URI an earlier test set in this process)."""
    uri = f"sqlite:///{workspace / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def versions(workspace: Path) -> list[str]:
    """The registered versions of the workspace's model, oldest first."""
    name = load_params(workspace / "params.yaml").deploy.model_name
    client = store(workspace)
    return sorted((v.version for v in client.search_model_versions(f"name='{name}'")), key=int)


def stages_that(summary: dict[str, Any], state: str) -> list[str]:
    return [stage for stage, info in summary["stages"].items() if info["state"] == state]


@pytest.mark.slow
def test_after_dvc_repro_the_flow_runs_nothing_and_after_the_flow_dvc_repro_runs_nothing(workspace: Path) -> None:
    sh(workspace, "dvc", "repro")
    registered = versions(workspace)
    assert len(registered) == 1
    state = training(params_path="params.yaml", return_state=True)
    summary = state.result()
    assert stages_that(summary, "skipped") == list(STAGES)  # DVC decided: nothing to run, nothing trained
    assert versions(workspace) == registered  # ... and nothing new in the registry
    flow_run_id = state.state_details.flow_run_id
    # the run graph's edges are those of `dvc dag`: each stage hangs from the stages whose outputs it reads
    dag = sh(workspace, "dvc", "dag", "--dot").stdout
    expected = {s: sorted(u for u in STAGES if f'"{u}" -> "{s}"' in dag) for s in STAGES}
    assert expected["deploy"] == ["clean", "evaluate", "ingest", "train"]  # the parse above found the edges
    assert upstream_names(flow_run_id) == expected

    epochs = yaml.safe_load((workspace / "params.yaml").read_text())["train"]["epochs"]
    state = training(params_path="params.yaml", overrides={"train.epochs": epochs + 1}, return_state=True)
    summary = state.result()
    assert stages_that(summary, "skipped") == list(STAGES[:4])
    assert stages_that(summary, "ran") == ["train", "evaluate", "deploy", "audit", "report"]
    assert f"epochs: {epochs + 1}" in (workspace / "params.yaml").read_text()  # as `dvc exp run -S` writes it
    assert summary["metrics"]["test"]["accuracy"] > 0.5
    flow_run_id = state.state_details.flow_run_id
    _, logs = task_runs_and_logs(flow_run_id, "evaluate: val accuracy")
    assert "Running stage 'evaluate'" in logs  # DVC's and the stage's own lines reach the Prefect UI
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[SUMMARY_KEY])))
    run_id = json.loads((workspace / "models/mlflow_run.json").read_text())["run_id"]
    assert any("| deploy | ran |" in a.data and run_id in a.data for a in artifacts)  # the summary links the run
    run = store(workspace).get_run(run_id)
    assert run.data.tags["prefect.flow_run_id"] == str(flow_run_id)  # lineage: the MLflow run names the flow run
    assert f"trained in <code>{flow_run_id}</code>" in (workspace / "reports/report.html").read_text()

    assert ran(sh(workspace, "dvc", "repro").stdout) == []  # the flow's runs are DVC's record too
    assert "up to date" in sh(workspace, "dvc", "status").stdout
    assert processes_in(workspace) == []


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
    with pytest.raises(TrainflowError, match="no/such/folder"):
        state.result()
    runs, _ = task_runs_and_logs(state.state_details.flow_run_id, "no/such/folder")
    assert runs == {"ingest": "Failed"}  # not retried (one run), nothing after it ran


FLAKY = """import os, pathlib, sys
count = pathlib.Path("attempts")
count.write_text(str(int(count.read_text()) + 1) if count.exists() else "1")
if int(count.read_text()) <= {failures}:
    print("error: ingest: the source is unavailable", file=sys.stderr)
    sys.exit({status})
os.execv(sys.executable, [sys.executable, "-m", "tasks.ingest"])
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("status", "failures", "attempts", "completes"),
    [
        (75, 2, 3, True),  # EXIT_TRANSIENT twice: the second retry works
        (75, 99, 3, False),  # never works: fails after the two configured retries
        (1, 99, 1, False),  # bad input: not retried
    ],
)
def test_only_transient_stage_failures_are_retried(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, status: int, failures: int, attempts: int, completes: bool
) -> None:
    kept = {name: (workspace / name).read_text() for name in ("dvc.yaml", "params.yaml")}
    (workspace / "flaky.py").write_text(FLAKY.format(failures=failures, status=status))
    (workspace / "attempts").unlink(missing_ok=True)
    stages = yaml.safe_load(kept["dvc.yaml"])
    # a real stage command that fails like a flaky source; a command of its own, so that DVC does not skip it
    stages["stages"]["ingest"]["cmd"] = f"python flaky.py {uuid.uuid4().hex}"
    (workspace / "dvc.yaml").write_text(yaml.safe_dump(stages, sort_keys=False))
    monkeypatch.setattr(training_module, "RETRY_DELAYS", [0, 0])
    try:
        state = training(params_path="params.yaml", return_state=True)
    finally:
        for name, text in kept.items():
            (workspace / name).write_text(text)
    assert int((workspace / "attempts").read_text()) == attempts
    assert state.is_completed() is completes
    if not completes:
        with pytest.raises(TransientError if status == 75 else TrainflowError, match="the source is unavailable"):
            state.result()


def test_a_temporary_server_that_cannot_start_is_one_line(tmp_path: Path) -> None:
    root = make_workspace(tmp_path, TINY)
    done = sh(
        root,
        "python",
        "-m",
        "flows.training",
        check=False,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1",
        PREFECT_API_URL="",
        PREFECT_HOME=str(tmp_path / "prefect"),
    )
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]  # Prefect's own INFO lines aside
    assert len(errors) == 1, done.stderr[-3000:]
    assert errors[0].startswith("error: training flow: Prefect's temporary API server did not start within 1 s")
    assert "Traceback" not in done.stderr
    assert not (root / "data/raw").exists()  # no stage ran
