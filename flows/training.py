"""Prefect flow `training`: each stage of dvc.yaml as one task that runs it through DVC, wired like `dvc dag`.

DVC decides what runs (`dvc repro --single-item <stage>`: a stage whose deps, params and outs did not change is
skipped), so a flow run after `dvc repro` does no stage's work, and the reverse. Prefect adds retries of transient
failures, the run graph, the stages' logs and the run summary; flows/deploy.py serves it on a schedule.
`python -m flows.training [--set KEY=VALUE ...]` runs it once (Prefect's temporary API without PREFECT_API_URL).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows import dvc_repo, prefect_api
from tasks.lib.config import DEFAULT_PARAMS, PathsParams, load_params
from tasks.lib.errors import TrainflowError, TransientError, redact

SUMMARY_KEY = "training-summary"
RETRY_DELAYS = [2, 10]  # seconds before the first and second retry


def _retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    # Bad data or params fail the same way every time: only a stage that exited EXIT_TRANSIENT is retried.
    return isinstance(state.result(raise_on_failure=False), TransientError)


@task(cache_policy=NO_CACHE)
def run_stage(stage: str, root: str) -> dict[str, Any]:
    """`dvc repro --single-item <stage>`; its lines go to the run log. Whether DVC ran it, and how long it took."""
    logger, started = get_run_logger(), time.perf_counter()
    env = {**os.environ, "PREFECT__FLOW_RUN_ID": str(flow_run.id)}  # the stage tags its MLflow run with it
    ran = stage in dvc_repo.repro(Path(root), stage, single_item=True, line=logger.info, env=env)
    seconds = round(time.perf_counter() - started, 2)
    logger.info("%s %s in %.1f s", stage, "ran" if ran else "was up to date (DVC skipped it)", seconds)
    return {"stage": stage, "state": "ran" if ran else "skipped", "seconds": seconds}


def summary_markdown(results: list[dict[str, Any]], paths: PathsParams) -> str:
    """The flow-run summary: one row per stage, the headline metrics, the deploy decision and the run report
    (credentials redacted: a run file written by an older version may hold them)."""
    lines = ["# training flow run", "", "| stage | DVC | seconds |", "| --- | --- | --- |"]
    lines += [f"| {r['stage']} | {r['state']} | {r['seconds']:.1f} |" for r in results]
    if metrics := read(paths.metrics):
        lines += ["", "| split | accuracy | macro F1 | loss |", "| --- | --- | --- | --- |"]
        lines += [f"| {s} | {m['accuracy']:.4f} | {m['f1_macro']:.4f} | {m['loss']:.4f} |" for s, m in metrics.items()]
    if deploy := read(paths.deploy_report):
        verdict = "champion" if deploy["gate"]["promote"] else "challenger"
        lines += ["", f"Deploy: v{deploy['registry']['version']} {verdict}: {deploy['gate']['reason']}"]
    if run := read(paths.run_info):
        lines += ["", f"MLflow run `{run['run_id']}` in {run['tracking_uri']}: {run['ui_path']}"]
    if (report := Path(paths.report)).is_file():
        lines += ["", f"Run report (one self-contained page): [{report.name}]({report.resolve().as_uri()})"]
    return redact("\n".join(lines) + "\n")


def read(path: str) -> Any:
    """A JSON output of this run, or None where the stage wrote none."""
    return json.loads(Path(path).read_text()) if Path(path).is_file() else None


@flow(name="training", log_prints=True)
def training(params_path: str = str(DEFAULT_PARAMS), overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run every stage of dvc.yaml through DVC as one task each, each after the stages it reads from.

    Args:
        params_path: the params file, in the root of the DVC repo the flow runs in (the working directory).
        overrides: dotted keys to change first (``{"train.epochs": 2}``), written to params_path as
            `dvc exp run -S` does.

    Returns:
        Per stage whether DVC ran it and how long it took, and the headline metrics.
    """
    path = Path(params_path)
    params = load_params(path, overrides)  # validates every override before any stage runs
    root = path.resolve().parent
    if Path.cwd().resolve() != root:
        raise TrainflowError(f"{params_path}: run the flow from the folder that holds it (the repo root)")
    if overrides:
        dvc_repo.write_params(path, overrides)
    # Futures, not states, as wait_for: Prefect also looks inside a state's result for objects some task returned,
    # and every stage returns the same keys, so a state would hang each stage from the last one that ran.
    futures: dict[str, Any] = {}
    for name, upstream in dvc_repo.stage_graph(root).items():  # dvc.yaml: the one list of stages and edges
        retry = dict(retries=len(RETRY_DELAYS), retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=_retry_transient)
        stage = run_stage.with_options(name=name, task_run_name=name, **retry)
        futures[name] = stage.submit(name, str(root), wait_for=[futures[u] for u in upstream])
        futures[name].result()  # re-raises the stage's own error: the flow fails, no later stage runs
    results = [f.result() for f in futures.values()]
    summary = summary_markdown(results, params.paths)
    create_markdown_artifact(markdown=summary, key=SUMMARY_KEY, description="Stages, metrics and decision of this run")
    stages = {r["stage"]: {"state": r["state"], "seconds": r["seconds"]} for r in results}
    return {"stages": stages, "metrics": read(params.paths.metrics)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.training", description="Run the training flow.")
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help="params file (default: %(default)s)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a param")
    args = parser.parse_args(argv)
    with prefect_api.one_line_errors("training flow"):
        overrides = dvc_repo.parse_overrides(args.set)
        load_params(Path(args.params), overrides)  # a bad params file or override fails before Prefect starts
        summary = training(params_path=args.params, overrides=overrides or None)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
