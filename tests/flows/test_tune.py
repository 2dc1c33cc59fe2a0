"""The tune flow end to end on tiny data: real Optuna, MLflow, Keras, DVC and Prefect (a test harness API, or the
command's own temporary one)."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
from prefect.testing.utilities import prefect_test_harness

from flows.dvc_repo import write_params
from flows.tune import tune
from tests.helpers import TINY, committed_params_file, make_workspace, processes_in, sh, tool_env, wait_for

# Two epochs per trial; a pruner that compares from the second trial on, from the first epoch.
TUNE = {
    "tune.epochs": 2,
    "tune.sampler_startup_trials": 2,
    "tune.pruner_startup_trials": 1,
    "tune.pruner_warmup_epochs": 0,
    "tune.space": {
        "train.learning_rate": {"low": 0.001, "high": 1.0, "log": True},
        "train.dense_units": {"low": 16, "high": 64},
    },
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace whose data stages ran (`dvc repro normalize`), with the repo's commented params.yaml."""
    root = make_workspace(tmp_path_factory.mktemp("tune"), {})
    shutil.copy2(committed_params_file(), root / "params.yaml")  # make_workspace drops the comments: keep them
    write_params(root / "params.yaml", {f"{s}.{k}": v for s, values in TINY.items() for k, v in values.items()} | TUNE)
    sh(root, "git", "commit", "-qam", "tiny params")
    sh(root, "dvc", "repro", "normalize")
    return root


@pytest.fixture
def workspace(prepared: Path, tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    shutil.copytree(prepared, root, symlinks=True)
    return root


def study(root: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{root / 'optuna.db'}")


def child_runs(root: Path, parent: str) -> dict[int, Any]:
    tracker = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = tracker.get_experiment_by_name("trainflow")
    runs = tracker.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    return {int(r.data.tags["tune.trial"]): r for r in runs}


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One test API server for the module's in-process flows (each test reads only its own flow run)."""
    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tmp_path_factory.mktemp("results")}),
    ):
        yield


@pytest.mark.slow
def test_a_study_tracks_every_trial_summarises_and_applies_the_best(
    workspace: Path, prefect_api: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("PATH", tool_env()["PATH"])
    # Optuna's own way to try given values first: a sound learning rate, then one that diverges (pruned at epoch 1)
    first = optuna.create_study(study_name="s", storage=f"sqlite:///{workspace / 'optuna.db'}", direction="maximize")
    first.enqueue_trial({"train.learning_rate": 0.01, "train.dense_units": 32})
    first.enqueue_trial({"train.learning_rate": 1.0, "train.dense_units": 32})
    before = (workspace / "params.yaml").read_text()

    state = tune(trials=4, apply=True, overrides={"tune.study": "s"}, return_state=True)
    summary = state.result()

    # Optuna: four finished trials, the diverging one pruned; summary.json says so
    trials = study(workspace, "s").trials
    assert [t.state.name for t in trials][:2] == ["COMPLETE", "PRUNED"]
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials) and len(trials) == 4
    assert len(trials[1].intermediate_values) == 1  # stopped after its first epoch
    written = json.loads((workspace / "reports/tune/summary.json").read_text())
    assert written["trials"]["complete"] + written["trials"]["pruned"] == 4 and written["trials"]["pruned"] >= 1
    best = max((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert written["best"]["trial"] == best.number and written["best"]["params"] == best.params
    assert written["metric"] == "val.accuracy" and written["wall_seconds"] > 0
    for name in ("optimization_history", "param_importances"):
        assert (workspace / f"reports/tune/{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # MLflow: one parent run, a child per trial with its params, per-epoch val metrics, state; the best one tagged
    children = child_runs(workspace, summary["mlflow_parent_run_id"])
    assert sorted(children) == [0, 1, 2, 3]
    tracker = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    assert tracker.get_run(summary["mlflow_parent_run_id"]).info.status == "FINISHED"
    for number, run in children.items():
        trial = trials[number]
        expected = {"COMPLETE": ("FINISHED", "complete"), "PRUNED": ("KILLED", "pruned")}[trial.state.name]
        assert (run.info.status, run.data.tags["tune.state"]) == expected
        assert float(run.data.params["train.learning_rate"]) == trial.params["train.learning_rate"]
        epochs = tracker.get_metric_history(run.info.run_id, "val_loss")
        assert len(epochs) == len(trial.intermediate_values)
        assert not any(key.startswith("test") for key in run.data.metrics)  # the test split is never scored
        assert (run.data.tags.get("tune.best") == "true") == (number == best.number)
    assert children[best.number].data.metrics["val.accuracy"] == pytest.approx(best.value)

    # Prefect: one task per trial, the pruned one in state Pruned
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    names = {r.name: r.state.name for r in runs}
    assert {k: v for k, v in names.items() if k.startswith("trial-")} == {
        f"trial-{t.number}": "Pruned" if t.state.name == "PRUNED" else "Completed" for t in trials
    }

    # --apply: params.yaml holds the best values, its comments kept; the pipeline's outputs were never touched
    after = (workspace / "params.yaml").read_text()
    assert yaml.safe_load(after)["train"]["learning_rate"] == best.params["train.learning_rate"]
    assert yaml.safe_load(after)["train"]["dense_units"] == best.params["train.dense_units"]
    comments = [line.split("#", 1)[1] for line in before.splitlines() if "#" in line]
    assert all(comment in after for comment in comments)
    assert not (workspace / "models/model.keras").exists() and not (workspace / "models/mlflow_run.json").exists()
    assert tracker.search_registered_models() == []
    assert not (workspace / "reports/tune/trials").exists() or not any((workspace / "reports/tune/trials").iterdir())


@pytest.mark.slow
def test_trials_side_by_side_give_what_each_gives_alone(
    workspace: Path, prefect_api: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two trials at once on the threads runner train as each does alone: train's global seed and dtype policy are
    its process's, and each trial has its own process."""
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("PATH", tool_env()["PATH"])
    values = [
        {"train.learning_rate": 0.01, "train.dense_units": 32},
        {"train.learning_rate": 0.02, "train.dense_units": 48},
    ]
    for name, queued in (("both", values), ("first", values[:1]), ("second", values[1:])):
        created = optuna.create_study(study_name=name, storage=f"sqlite:///{workspace / 'optuna.db'}")
        for trial_values in queued:
            created.enqueue_trial(trial_values)
    no_pruning = {"tune.pruner": "none", "tune.metric": "loss"}
    tune(trials=2, workers=2, overrides={"tune.study": "both", **no_pruning})
    tune(trials=1, overrides={"tune.study": "first", **no_pruning})
    tune(trials=1, overrides={"tune.study": "second", **no_pruning})

    both = study(workspace, "both").trials
    assert [t.params for t in both] == values and all(t.state.name == "COMPLETE" for t in both)
    assert both[1].datetime_start < both[0].datetime_complete  # they did run side by side
    alone_trials = (study(workspace, "first").trials[0], study(workspace, "second").trials[0])
    for trial, alone in zip(both, alone_trials, strict=True):
        assert trial.params == alone.params
        assert trial.intermediate_values == alone.intermediate_values  # val loss, epoch by epoch
        assert trial.value == alone.value


@pytest.mark.slow
def test_a_killed_study_resumes_without_running_a_finished_trial_twice_and_two_workers_overlap(
    workspace: Path,
) -> None:
    command = [sys.executable, "-m", "flows.tune", "--trials", "4", "--study", "k"]
    env = tool_env(PREFECT_HOME=str(workspace / ".prefect"))
    killed = subprocess.Popen(
        command, cwd=workspace, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:

        def mid_trial() -> bool:  # two trials finished and the third started: kill it there
            assert killed.poll() is None, "the study ended before it was killed"
            states = [t.state.name for t in study(workspace, "k").trials]
            return states.count("RUNNING") == 1 and len(states) - states.count("RUNNING") >= 2

        wait_for("two finished trials and one running", mid_trial, timeout=180, every=0.3)
    finally:
        os.killpg(killed.pid, signal.SIGKILL)  # the whole job: the flow, its Prefect server, its trial
        killed.wait()
    before = {t.number: t for t in study(workspace, "k").trials}
    finished = {n: t for n, t in before.items() if t.state.name in ("COMPLETE", "PRUNED")}
    (interrupted,) = [n for n, t in before.items() if t.state.name == "RUNNING"]

    done = sh(workspace, *command, "--workers", "2", PREFECT_HOME=str(workspace / ".prefect"))
    assert f"trial {interrupted} was interrupted" in done.stderr

    after = {t.number: t for t in study(workspace, "k").trials}
    for number, trial in finished.items():  # finished trials are kept as they were, not run again
        assert after[number].datetime_complete == trial.datetime_complete and after[number].value == trial.value
    new = [t for n, t in after.items() if n not in before]
    assert all(t.user_attrs.get("retry_of") in (None, interrupted) for t in new)
    assert after[interrupted].state.name == "FAIL"
    assert [t.user_attrs.get("retry_of") for t in new].count(interrupted) == 1  # its values tried once more
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in after.values()) == 4
    summary = json.loads((workspace / "reports/tune/summary.json").read_text())
    assert summary["ran_now"] == sorted(t.number for t in new)
    # two workers: two trials of the second run were running at the same time
    spans = sorted((t.datetime_start, t.datetime_complete) for t in new)
    assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))
    # MLflow: one parent for both runs; the interrupted trial's run failed, every other trial's run ended
    children = child_runs(workspace, summary["mlflow_parent_run_id"])
    assert sorted(children) == sorted(after)
    assert children[interrupted].info.status == "FAILED"
    assert all(run.info.status != "RUNNING" for run in children.values())
    best = [n for n, run in children.items() if run.data.tags.get("tune.best") == "true"]
    assert best == [summary["best"]["trial"]]  # one best, whichever run of the study found it
    assert processes_in(workspace) == []  # the Prefect server and the trials ended with the command


@pytest.mark.slow
def test_two_clones_sharing_one_study_each_keep_their_own_mlflow_runs(
    prepared: Path, tmp_path: Path, prefect_api: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One study (an absolute SQLite file outside both clones), two clones, each with its own MLflow store: each
    clone's trials are knowledge for the other's, never a run this store must hold (issue 26: the second clone
    crashed tagging the first clone's best trial, a run its store does not have)."""
    clones = {name: tmp_path / name for name in ("a", "b")}
    for clone in clones.values():
        shutil.copytree(prepared, clone, symlinks=True)
    shared = tmp_path / "shared" / "optuna.db"
    shared.parent.mkdir()
    monkeypatch.setenv("PATH", tool_env()["PATH"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    space = {"train.learning_rate": {"choices": [0.005, 0.00001]}}  # params.yaml's 0.005 learns, 0.00001 does not
    overrides = {
        "tune.study": "shared",
        "tune.storage": str(shared),
        "tune.space": space,
        "tune.epochs": 1,
        "tune.pruner": "none",
    }

    def run(clone: str, trials: int, queue: float | None = None) -> dict[str, Any]:
        if queue is not None:  # Optuna's own way to choose the next trial's values: a weak one
            optuna.load_study(study_name="shared", storage=f"sqlite:///{shared}").enqueue_trial(
                {"train.learning_rate": queue}
            )
        monkeypatch.chdir(clones[clone])
        return tune(trials=trials, overrides=overrides)

    first = run("a", 1)  # trial 0: params.yaml's own values, the best, its run in a's store
    second = run("b", 2, queue=0.00001)  # trial 1 in b: weaker; the best stays a's trial 0
    again = run("a", 3, queue=0.00001)  # trial 2 in a again: a's parent run is reopened

    trials = optuna.load_study(study_name="shared", storage=f"sqlite:///{shared}").trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3 and trials[0].value > trials[1].value
    assert second["best"]["trial"] == again["best"]["trial"] == 0
    stores = {name: f"sqlite:///{clones[name] / 'mlflow.db'}" for name in clones}
    assert [t.user_attrs["mlflow_store"] for t in trials] == [stores["a"], stores["b"], stores["a"]]
    assert second["best"]["mlflow_store"] == stores["a"]  # summary.json says where the best trial's run is
    assert again["mlflow_parent_run_id"] == first["mlflow_parent_run_id"]  # one parent per study and store

    # each store holds its own trials' runs under its own parent; b's parent names a's best without tagging a run
    for name, parent, numbers in (("a", again, [0, 2]), ("b", second, [1])):
        assert sorted(child_runs(clones[name], parent["mlflow_parent_run_id"])) == numbers
    tracker = {name: MlflowClient(stores[name]) for name in clones}
    b_parent = tracker["b"].get_run(second["mlflow_parent_run_id"])
    assert b_parent.info.status == "FINISHED"
    assert b_parent.data.tags["tune.best_trial"] == "0" and b_parent.data.tags["tune.best_store"] == stores["a"]
    assert child_runs(clones["a"], first["mlflow_parent_run_id"])[0].data.tags["tune.best"] == "true"
    assert "tune.best" not in child_runs(clones["b"], second["mlflow_parent_run_id"])[1].data.tags
