"""Prefect flow `training`: the stages of dvc.yaml as tasks wired like `dvc dag`, cached on what DVC hashes.

`python -m flows.training [--set KEY=VALUE ...]` runs it in one process (Prefect's temporary API without
PREFECT_API_URL); flows/deploy.py serves it on a schedule. Both drivers run the same ``tasks.<stage>.run``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext, TaskRunContext
from prefect.states import State
from prefect.utilities.annotations import quote

from flows import dvc_repo, runners
from tasks.lib.config import DEFAULT_PARAMS, Params, load_params
from tasks.lib.errors import TrainflowError, TransientError
from tasks.lib.lock import workspace_lock
from tasks.lib.quiet import quiet_libraries

SUMMARY_KEY = "training-summary"
RETRY_DELAYS = [2, 10]  # seconds before the first and second retry


def stage_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Content hash of the stage's inputs, params slice and code: exactly the deps dvc.yaml lists."""
    root = Path(parameters["root"]).resolve()
    deps = dvc_repo.stage_hashes(root, parameters["stage"], "deps")
    blob = json.dumps({"root": str(root), "stage": parameters["stage"], "deps": deps}, sort_keys=True, default=str)
    return f"{parameters['stage']}-{hashlib.sha256(blob.encode()).hexdigest()}"


def _retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    # Bad data or params fail the same way every time: only retry what may pass on a second try.
    return isinstance(state.result(raise_on_failure=False), TransientError | ConnectionError | TimeoutError)


class _ToRunLogger(logging.Handler):
    """Forwards the stage modules' `logging` records to the Prefect run logger, so they show in the UI."""

    def __init__(self, run_logger: Any) -> None:
        super().__init__(level=logging.INFO)
        self.run_logger = run_logger

    def emit(self, record: logging.LogRecord) -> None:
        self.run_logger.log(record.levelno, record.getMessage())


@task(cache_key_fn=stage_cache_key, persist_result=True, result_serializer="json", retry_condition_fn=_retry_transient)
def run_stage(stage: str, params: Params, root: str) -> dict[str, Any]:
    """Run ``tasks.<stage>.run`` (the code `dvc repro` runs); its report, one-line summary and output hashes.

    The data stages' per-shard work runs as tasks on the flow's task runner (:func:`runners.shard_map`).
    """
    logger = get_run_logger()
    stage_logger = logging.getLogger("tasks")
    handler, level = _ToRunLogger(logger), stage_logger.level
    stage_logger.addHandler(handler)
    stage_logger.setLevel(logging.INFO)
    started = time.perf_counter()
    module = importlib.import_module(f"tasks.{stage}")
    try:
        maps = "mapper" in inspect.signature(module.run).parameters
        report = module.run(params, mapper=runners.shard_map) if maps else module.run(params)
    finally:
        stage_logger.removeHandler(handler)
        stage_logger.setLevel(level)
    seconds = time.perf_counter() - started
    logger.info("%s finished in %.1f s", stage, seconds)
    return {
        "stage": stage,
        "seconds": round(seconds, 2),
        "summary": module.describe(report),
        "report": json.loads(json.dumps(report, default=str)),
        "outs": dvc_repo.stage_hashes(Path(root), stage, "outs"),
    }


# Stages that show dvc.lock (the run report's lineage): before one runs, the flow records the stages before it, as
# `dvc repro` has by then, so that it shows this run's hashes. (Its own entry is recorded after it, with the rest.)
READS_DVC_LOCK = ("report",)


@task(name="dvc-commit", task_run_name="dvc-commit")
def record_in_dvc_lock(root: str, stages: list[str] | None = None) -> None:
    """`dvc commit`: the flow's outputs (of ``stages``; default all) go into dvc.lock and the DVC cache, so `dvc status`
    is clean."""
    dvc_repo.commit(Path(root), stages or ())


def stage(name: str, params: Params, root: str, upstream: list[State]) -> State:
    """One stage as a task run that waits for (and in the run graph hangs from) the stages it reads from.

    The arguments are quoted: Prefect draws an edge from any task whose result holds an object (by id) found in
    another task's arguments, and a string in the params can be the very object a stage returned. The graph's only
    edges are ``upstream``, those of `dvc dag`. Only TransientError-like failures are retried
    (:func:`_retry_transient`); bad data and params fail at once.
    """
    options = {"name": name, "task_run_name": name, "retries": len(RETRY_DELAYS), "retry_delay_seconds": RETRY_DELAYS}
    arguments = (quote(name), quote(params), quote(root))
    state = run_stage.with_options(**options)(*arguments, wait_for=upstream, return_state=True)
    result = state.result()  # re-raises the stage's own error: the flow fails, no later stage runs
    if state.name == "Cached" and result["outs"] != dvc_repo.stage_hashes(Path(root), name, "outs"):
        # A cache hit whose outputs were since deleted or changed on disk: run the stage again.
        rerun = run_stage.with_options(**options, refresh_cache=True)
        state = rerun(*arguments, wait_for=upstream, return_state=True)
        state.result()
    return state


def summary_markdown(
    results: list[dict[str, Any]], metrics: dict[str, Any] | None, run: dict | None = None, report: Path | None = None
) -> str:
    """The flow-run summary: one row per stage (state, duration, its own one-line summary), metrics, the MLflow run
    and the run report (reports/report.html: a file link, and the artifact of the MLflow run)."""
    lines = ["# training flow run", "", "| stage | state | seconds | summary |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['stage']} | {r['state']} | {r['seconds']:.1f} | {r['summary']} |" for r in results]
    if metrics:
        lines += ["", "| split | accuracy | macro F1 | loss |", "| --- | --- | --- | --- |"]
        lines += [f"| {s} | {m['accuracy']:.4f} | {m['f1_macro']:.4f} | {m['loss']:.4f} |" for s, m in metrics.items()]
    if run:
        lines += [
            "",
            f"MLflow run `{run['run_id']}` in {run['tracking_uri']}: "
            f"`mlflow ui --backend-store-uri {run['tracking_uri']}`, then {run['ui_path']}",
        ]
    if report:
        lines += ["", f"Run report (one self-contained page): [{report.name}]({report.resolve().as_uri()})"]
        if run:
            lines[-1] += f", also the MLflow run's artifact `runs:/{run['run_id']}/report/{report.name}`"
    return "\n".join(lines) + "\n"


@flow(name="training", log_prints=True)
def training(params_path: str = str(DEFAULT_PARAMS), overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ingest → … → deploy as Prefect tasks over the same stage code as `dvc repro`, wired as `dvc dag`.

    Args:
        params_path: the params file, in the root of the DVC repo the flow runs in.
        overrides: dotted keys to change first (``{"train.epochs": 2}``), written to params_path as
            `dvc exp run -S` does.

    Returns:
        Per stage its state (Completed or Cached) and duration, the evaluation's headline metrics, the MLflow run.
    """
    path = Path(params_path)
    params = load_params(path, overrides)  # validates every override before any stage runs
    root = path.resolve().parent
    runner = type(FlowRunContext.get().task_runner).__name__
    if (params.flow.task_runner == "dask") != (runner == "DaskTaskRunner"):
        get_run_logger().warning(
            "flow.task_runner=%s, but this run's task runner is %s: start the flow with "
            "`python -m flows.training` (or flows.training.for_params(params)) to follow params",
            params.flow.task_runner,
            runner,
        )
    if Path.cwd().resolve() != root:
        # params.yaml's paths are relative to the repo root, where dvc.yaml also runs its commands.
        raise TrainflowError(f"{params_path}: run the flow from the folder that holds it (the repo root)")
    with workspace_lock(root / params.paths.lock, "Prefect flow training"):
        if overrides:
            dvc_repo.write_params(path, overrides)
        states: dict[str, State] = {}
        for name, upstream in dvc_repo.stage_graph(root).items():  # dvc.yaml: the one list of stages and edges
            waits = [states[u] for u in upstream]
            if name in READS_DVC_LOCK and states:
                recorded = record_in_dvc_lock.with_options(task_run_name=f"dvc-commit-before-{name}")(
                    quote(str(root)), quote(list(states)), wait_for=list(states.values()), return_state=True
                )
                recorded.result()
                waits.append(recorded)
            states[name] = stage(name, params, str(root), waits)
        record_in_dvc_lock(quote(str(root)), wait_for=list(states.values()))
    results = [{**s.result(), "state": s.name} for s in states.values()]
    evaluation = next((r["report"] for r in results if r["stage"] == "evaluate"), None)
    metrics = importlib.import_module("tasks.evaluate").headline(evaluation) if evaluation else None
    run_info = root / params.paths.run_info
    mlflow_run = json.loads(run_info.read_text()) if run_info.is_file() else None
    report = root / params.paths.report
    create_markdown_artifact(
        markdown=summary_markdown(results, metrics, mlflow_run, report if report.is_file() else None),
        key=SUMMARY_KEY,
        description="Stages, durations and evaluation metrics of this run, and its report",
    )
    return {
        "stages": {r["stage"]: {"state": r["state"], "seconds": r["seconds"]} for r in results},
        "metrics": metrics,
        "mlflow_run_id": mlflow_run["run_id"] if mlflow_run else None,
    }


def for_params(params: Params) -> Any:
    """The training flow with the task runner params choose (``flow.task_runner``)."""
    runner = runners.task_runner(params.flow)
    if getattr(runner, "address", "") is None:  # a local Dask cluster, started by this process
        runners.share_prefect_api()
    return training.with_options(task_runner=runner)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["train.epochs=3"]`` → ``{"train.epochs": 3}`` (values parsed as YAML, like `dvc exp run -S`)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise TrainflowError(f"--set {pair}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    return overrides


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.training", description="Run the training flow.")
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help="params file (default: %(default)s)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a param")
    args = parser.parse_args(argv)
    quiet_libraries()
    # No telemetry from the temporary API server (read when it starts): no phoning home, and its heartbeat raced
    # the server's own start-up for the SQLite database ("database is locked" in the log).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        overrides = parse_overrides(args.set)
        params = load_params(Path(args.params), overrides)  # a bad params file or override fails before Prefect starts
        summary = for_params(params)(params_path=args.params, overrides=overrides or None)
    except TrainflowError as exc:
        print(f"error: training flow: {exc}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
