"""Prefect flow `training`: the stages of dvc.yaml as tasks, cached on what DVC hashes, recorded in dvc.lock."""

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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext, TaskRunContext

from tasks.config import DEFAULT_PARAMS, FlowParams, Params, load_params
from tasks.errors import TrainflowError, TransientError
from tasks.evaluate import EVAL_SPLITS, HEADLINE
from tasks.lock import workspace_lock

SUMMARY_KEY = "training-summary"
RETRY_DELAYS = [2, 10]  # seconds before the first and second retry


def _open_repo(root: Path) -> Any:
    from dvc.repo import Repo

    return Repo(str(root))


def stage_names(root: Path = Path()) -> list[str]:
    """The pipeline's stages in dvc.yaml order: dvc.yaml is the one list of stages both drivers run."""
    with _open_repo(root) as repo:
        return [stage.name for stage in repo.index.stages]


def _hashes(root: Path, stage: str, which: str) -> dict[str, Any]:
    """DVC's own hashes of a stage's deps (code, data, params values) or outs, keyed by path."""
    with _open_repo(root) as repo:
        (spec,) = [s for s in repo.index.stages if s.name == stage]
        items = spec.deps if which == "deps" else spec.outs
        result = {}
        for item in items:
            if which == "outs" and not item.exists:
                result[item.def_path] = None
                continue
            info = item.get_hash()
            result[item.def_path] = info.value if info else None
        return result


def stage_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Content hash of the stage's inputs, params slice and code: exactly the deps dvc.yaml lists."""
    root = Path(parameters["root"]).resolve()
    deps = _hashes(root, parameters["stage"], "deps")
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


@task(cache_policy=NO_CACHE, persist_result=False)
def shard(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    """One call of a data stage's per-shard work, on the flow's task runner (threads, or a Dask worker)."""
    return fn(*args)


def shard_map(name: str, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> list[Any]:
    """A stage's mapper (tasks/parallel.py) under Prefect: one task run per call, ``<name>-<i>``, results in order."""
    futures = [shard.with_options(task_run_name=f"{name}-{i}").submit(fn, args) for i, args in enumerate(calls)]
    return [future.result() for future in futures]


def task_runner(params: FlowParams) -> Any:
    """The task runner params choose for the per-shard tasks: a thread pool, or Dask (an existing scheduler from
    ``flow.dask_address`` or $DASK_SCHEDULER_ADDRESS, else a local cluster of worker processes)."""
    workers = params.workers or os.cpu_count() or 1
    if params.task_runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # read when distributed is imported
    from prefect_dask import DaskTaskRunner

    address = params.dask_address or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        return DaskTaskRunner(address=address)
    # dashboard on a free port: a second cluster on this machine must not collide with the first
    cluster = {"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": ":0"}
    return DaskTaskRunner(cluster_kwargs=cluster)


def share_prefect_api() -> None:
    """Without PREFECT_API_URL, start Prefect's temporary API server now and point the environment at it.

    Every process of a run then reports to that one server: Dask worker processes inherit the variable instead
    of each starting a temporary server of its own (~10 s each, and their task runs would land in their own).
    """
    if os.environ.get("PREFECT_API_URL"):
        return
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return
    server = SubprocessASGIServer()
    server.start()
    os.environ["PREFECT_API_URL"] = server.api_url


def for_params(params: Params) -> Any:
    """The training flow with the task runner params choose (``flow.task_runner``)."""
    runner = task_runner(params.flow)
    if getattr(runner, "address", "") is None:  # a local Dask cluster, started by this process
        share_prefect_api()
    return training.with_options(task_runner=runner)


@task(cache_key_fn=stage_cache_key, persist_result=True, result_serializer="json", retry_condition_fn=_retry_transient)
def run_stage(stage: str, params: Params, root: str) -> dict[str, Any]:
    """Run ``tasks.<stage>.run`` (the code `dvc repro` runs) and return its report and output hashes.

    The data stages' per-shard work runs as tasks on the flow's task runner (:func:`shard_map`).
    """
    logger = get_run_logger()
    stage_logger = logging.getLogger("tasks")
    handler, level = _ToRunLogger(logger), stage_logger.level
    stage_logger.addHandler(handler)
    stage_logger.setLevel(logging.INFO)
    started = time.perf_counter()
    try:
        run = importlib.import_module(f"tasks.{stage}").run
        maps = "mapper" in inspect.signature(run).parameters
        report = run(params, mapper=shard_map) if maps else run(params)
    finally:
        stage_logger.removeHandler(handler)
        stage_logger.setLevel(level)
    seconds = time.perf_counter() - started
    logger.info("%s finished in %.1f s", stage, seconds)
    return {
        "stage": stage,
        "seconds": round(seconds, 2),
        "report": json.loads(json.dumps(report, default=str)),
        "outs": _hashes(Path(root), stage, "outs"),
    }


@task(name="dvc-commit", task_run_name="dvc-commit")
def record_in_dvc_lock(root: str) -> None:
    """`dvc commit`: the flow's outputs go into dvc.lock and the DVC cache, so `dvc status` is clean."""
    with _open_repo(Path(root)) as repo:
        repo.commit(force=True)


def write_overrides(path: Path, overrides: dict[str, Any]) -> None:
    """Apply validated overrides to params.yaml, as `dvc exp run -S` does, so artifacts and params agree."""
    from dvc.utils.serialize import modify_yaml

    with modify_yaml(str(path)) as data:
        for dotted, value in overrides.items():
            *parents, leaf = dotted.split(".")
            node = data
            for part in parents:
                node = node[part]
            node[leaf] = value


def stage_detail(stage: str, report: dict[str, Any]) -> str:
    """One line of counts from a stage's report for the summary table."""
    if stage == "ingest":
        return " / ".join(f"{name} {split['count']}" for name, split in report["splits"].items())
    if stage == "clean":
        return f"removed {report['removed_total']} of {report['input_total']}"
    if stage == "augment":
        return f"train {report['train_original']} + {report['train_added']} augmented"
    if stage == "normalize":
        return report["method"]
    if stage == "train":
        return f"{report['epochs_run']} epochs on {report['device']} ({report['backend']})"
    if stage == "evaluate":
        return f"test accuracy {report['test']['accuracy']:.4f}"
    if stage == "deploy":
        return f"{report['checked']} predictions checked, max diff {report['max_abs_diff']:.1e}"
    return ""


def summary_markdown(
    results: list[dict[str, Any]], metrics: dict[str, Any] | None, mlflow_run: dict[str, Any] | None = None
) -> str:
    """The flow-run summary: one row per stage (state, duration, counts), the metrics, the MLflow run."""
    lines = ["# training flow run", "", "| stage | state | seconds | counts |", "| --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r['stage']} | {r['state']} | {r['seconds']:.1f} | {stage_detail(r['stage'], r['report'])} |")
    if metrics:
        lines += ["", "| split | accuracy | macro F1 | loss |", "| --- | --- | --- | --- |"]
        for split, m in metrics.items():
            lines.append(f"| {split} | {m['accuracy']:.4f} | {m['f1_macro']:.4f} | {m['loss']:.4f} |")
    if mlflow_run:
        lines += [
            "",
            f"MLflow run `{mlflow_run['run_id']}` in {mlflow_run['tracking_uri']}: "
            f"`mlflow ui --backend-store-uri {mlflow_run['tracking_uri']}`, then {mlflow_run['ui_path']}",
        ]
    return "\n".join(lines) + "\n"


def _run_stage_task(stage: str, params: Params, root: str) -> dict[str, Any]:
    # Every stage may meet a transient fault (ingest's keras:NAME download, the MLflow store); only
    # TransientError-like failures are retried (_retry_transient), bad data and params fail at once.
    stage_task = run_stage.with_options(
        name=stage, task_run_name=stage, retries=len(RETRY_DELAYS), retry_delay_seconds=RETRY_DELAYS
    )
    state = stage_task(stage, params, root, return_state=True)
    result = state.result()  # re-raises the stage's own error: the flow fails, no later stage runs
    if state.name == "Cached" and result["outs"] != _hashes(Path(root), stage, "outs"):
        # A cache hit whose outputs were since deleted or changed on disk: run the stage again.
        state = stage_task.with_options(refresh_cache=True)(stage, params, root, return_state=True)
        result = state.result()
    return {**result, "state": state.name}


@flow(name="training", log_prints=True)
def training(params_path: str = str(DEFAULT_PARAMS), overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ingest → … → deploy as Prefect tasks over the same stage code as `dvc repro`.

    Args:
        params_path: the params file, in the root of the DVC repo the flow runs in.
        overrides: dotted keys to change first (``{"train.epochs": 2}``), written to params_path as
            `dvc exp run -S` does.

    Returns:
        Per stage its state (Completed or Cached), duration and report.
    """
    path = Path(params_path)
    params = load_params(path, overrides)  # validates every override before any stage runs
    root = str(path.resolve().parent)
    runner = type(FlowRunContext.get().task_runner).__name__
    if (params.flow.task_runner == "dask") != (runner == "DaskTaskRunner"):
        get_run_logger().warning(
            "flow.task_runner=%s, but this run's task runner is %s: start the flow with "
            "`python -m flows.training` (or flows.training.for_params(params)) to follow params",
            params.flow.task_runner,
            runner,
        )
    if Path.cwd().resolve() != Path(root):
        # params.yaml's paths are relative to the repo root, where dvc.yaml also runs its commands.
        raise TrainflowError(f"{params_path}: run the flow from the folder that holds it (the repo root)")
    with workspace_lock(Path(root) / params.paths.lock, "Prefect flow training"):
        if overrides:
            write_overrides(path, overrides)
        results = [_run_stage_task(stage, params, root) for stage in stage_names(Path(root))]
        record_in_dvc_lock(root)
    metrics = next((r["report"] for r in results if r["stage"] == "evaluate"), None)
    if metrics:
        metrics = {split: {k: metrics[split][k] for k in HEADLINE} for split in EVAL_SPLITS}
    run_info = Path(root) / params.paths.run_info
    mlflow_run = json.loads(run_info.read_text()) if run_info.is_file() else None
    create_markdown_artifact(
        markdown=summary_markdown(results, metrics, mlflow_run),
        key=SUMMARY_KEY,
        description="Stages, durations and evaluation metrics of this run",
    )
    return {
        "stages": {r["stage"]: {"state": r["state"], "seconds": r["seconds"]} for r in results},
        "metrics": metrics,
        "mlflow_run_id": mlflow_run["run_id"] if mlflow_run else None,
    }


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
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
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
