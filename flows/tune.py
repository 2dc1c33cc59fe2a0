"""Prefect flow `tune`: an Optuna study of train + validation scoring, one task per trial (docs/tuning.md).

`python -m flows.tune --trials N [--workers W] [--apply]` searches params' ``tune.space``: each trial trains with
the stage's own code (``tasks.train.run``) on the train split, in its own process (flows/tuning.py) and its own
folder under ``paths.tune``, and is scored as evaluate scores, on the validation split only. The test split is never
read: the test figure comes from the normal pipeline run on the chosen params (``--apply``, then ``dvc repro``), and
the deploy gate decides.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.states import Completed
from prefect.utilities.annotations import quote

from flows import dvc_repo, prefect_api, tuning
from tasks.lib import artifacts, dblock, tracking
from tasks.lib.config import DEFAULT_PARAMS, Params, apply_overrides, load_params, parse_params, read_params_file
from tasks.lib.errors import TrainflowError, redact
from tasks.lib.lock import workspace_lock

SUMMARY_KEY = "tune-summary"
DATA_STAGE = "normalize"  # the last stage before train: trials read its output (and clean's val split)
RUN_STATUS = {"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}  # MLflow's run statuses

log = logging.getLogger(__name__)


@task(name="prepare-data", task_run_name=f"dvc-repro-{DATA_STAGE}", cache_policy=NO_CACHE)
def prepare_data(root: str) -> list[str]:
    """`dvc repro normalize`: the data stages, each only if changed, so trials train on data that matches params."""
    ran = dvc_repo.repro(Path(root), DATA_STAGE, line=get_run_logger().debug)
    get_run_logger().info("data stages: %s", f"ran {', '.join(ran)}" if ran else "up to date")
    return ran


def trial_tags(params: Params, number: int) -> dict[str, Any]:
    return {"tune.study": params.tune.study, "tune.trial": number}


def store(params: Params) -> str:
    """This workspace's MLflow store (its URI, credentials redacted): clones sharing a study each have their own."""
    return redact(tracking.tracking_uri(params.tracking))


def remember_run(trial: Any, params: Params, run_id: str) -> None:
    """Record in the study a trial's MLflow run and the store that holds it (another clone's trials hold theirs)."""
    trial.set_user_attr("mlflow_run_id", run_id)
    trial.set_user_attr("mlflow_store", store(params))


def run_here(params: Params, trial: Any) -> str | None:
    """The trial's MLflow run when this workspace's store holds it; None for a trial of another store."""
    run_id = trial.user_attrs.get("mlflow_run_id")
    return run_id if run_id and tracking.has_run(params.tracking, run_id) else None


@task(cache_policy=NO_CACHE, persist_result=False)
def run_trial(trial: Any, raw: dict[str, Any], parent_run_id: str) -> Any:
    """One trial: train (pruned on its per-epoch val loss) and score on val in a process of its own, record it in
    Optuna and MLflow.

    Train's own MLflow run becomes the trial's child run of the study's run: its params, per-epoch metrics, the val
    scores and its state (FINISHED complete, KILLED pruned, FAILED failed). A failed trial fails this task.
    ``raw`` is the params mapping (plain data: it travels to a Dask worker as it is).
    """
    from tasks.evaluate import HEADLINE

    logger = get_run_logger()
    params = parse_params(raw)
    settings, metric, number = params.tracking, params.tune.metric, trial.number
    folder = Path(params.paths.tune) / "trials" / str(number)
    shutil.rmtree(folder, ignore_errors=True)
    name = f"{params.tune.study} trial {number}"
    tags = trial_tags(params, number)
    child: dict[str, str] = {}

    def opened() -> None:  # train has opened its MLflow run (the trial's run_info): nest it under the study's
        child["id"] = tracking.current_run(Path(trial_params.paths.run_info))
        tracking.nest_run(settings, child["id"], parent_run_id, name, tags)
        remember_run(trial, params, child["id"])

    started, value, error = time.perf_counter(), None, None
    try:
        trial_params = tuning.trial_params(raw, params, trial.params, folder, origin=f"trial {number}")
        # its own process: train sets Keras' global seed and dtype policy, which trials in threads would share
        request = {"raw": raw, "values": trial.params, "folder": str(folder), "number": number}
        scores = tuning.run_trial_process(request, on_begin=opened, on_epoch=tuning.pruner(trial, metric))
        value, state = float(scores[metric]), "complete"
        tracking.log_metrics(settings, child["id"], {f"val.{k}": scores[k] for k in HEADLINE})
    except Exception as exc:  # a pruned trial, or one that failed: either way the study goes on
        state, error = ("pruned" if isinstance(exc, tuning.Pruned) else "failed"), exc
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    seconds = time.perf_counter() - started
    if "id" not in child:  # it failed before train opened a run
        child["id"] = tracking.start_child_run(settings, parent_run_id, name, tags)
        remember_run(trial, params, child["id"])
    outcome = {"tune.state": state, **({"tune.error": str(error)[:500]} if state == "failed" else {})}
    tracking.set_tags(settings, child["id"], outcome)
    tracking.end_run(settings, child["id"], RUN_STATUS[state])
    tuning.tell(trial, value, state)
    result = {"number": number, "state": state, "value": value, "params": trial.params, "seconds": round(seconds, 1)}
    if state == "failed":
        logger.error("trial %d failed after %.0f s: %s", number, seconds, error)
        raise error  # type: ignore[misc]
    if state == "pruned":
        logger.info("trial %d pruned after %.0f s: %s", number, seconds, error)
        return Completed(message=str(error), name="Pruned", data=result)
    logger.info("trial %d complete in %.0f s: val %s %.4f", number, seconds, metric, value)
    return result


def parent_key(params: Params) -> str:
    """The study's attribute naming its MLflow run in this store: one per store, as clones sharing a study each
    have their own (Optuna keeps attribute names up to 512 characters)."""
    return f"mlflow_run_id@{store(params)}"[:512]


def parent_run(study: Any, params: Params, root: Path) -> str:
    """The study's MLflow run in this store: the one a previous run of this study opened here (reopened), else a
    new one. On a database server several machines may start the study at once: they find or open it one at a time
    (a lock of the study's database), so their trials sit under one parent run."""
    url = tuning.storage_url(params.tune.storage, root)
    with dblock.turns(url, f"tune-parent:{params.tune.study}:{parent_key(params)}", "the study's parent run"):
        return _parent_run(study, params, root)


def _parent_run(study: Any, params: Params, root: Path) -> str:
    settings, cfg = params.tracking, params.tune
    for known in (study.user_attrs.get(parent_key(params)), study.user_attrs.get("mlflow_run_id")):  # or as before
        if known and tracking.reopen_run(settings, known):
            study.set_user_attr(parent_key(params), known)
            return known
    values = {
        "tune.study": cfg.study,
        "tune.metric": f"val.{cfg.metric}",
        "tune.epochs": cfg.epochs,
        "tune.pruner": cfg.pruner,
        "tune.storage": tuning.storage_url(cfg.storage, root),
        "tune.space": json.dumps({k: v.model_dump(exclude_defaults=True) for k, v in cfg.space.items()}),
    }
    tags = {"tune.study": cfg.study, "tune.role": "study", "data.source": params.data.source}
    run_id = tracking.start_parent_run(settings, f"tune {cfg.study}", {k: str(v) for k, v in values.items()}, tags)
    study.set_user_attr(parent_key(params), run_id)
    return run_id


def record_best(study: Any, params: Params, parent_id: str, out: Path) -> None:
    """Tag the best trial's run (``tune.best``, moved from the previous best), and log the summary to the parent.

    A best trial another clone ran (a shared study) has its run in that clone's store: the parent names it
    (``tune.best_store``) and no run is tagged here.
    """
    settings = params.tracking
    best = tuning.best_trial(study)
    if best is not None and (run_id := best.user_attrs.get("mlflow_run_id")):
        previous = tracking.run_record(settings, parent_id)["tags"].get("tune.best_run_id")
        if previous and previous != run_id:
            tracking.delete_tag(settings, previous, "tune.best")  # none here when another store held it
        best_tags = {f"tune.best.{k}": v for k, v in best.params.items()}
        if run_here(params, best):
            tracking.set_tags(settings, run_id, {"tune.best": "true"})
            tracking.delete_tag(settings, parent_id, "tune.best_store")  # a previous best of another store's
        else:
            best_tags["tune.best_store"] = where = best.user_attrs.get("mlflow_store", "another MLflow store")
            log.warning("the best trial, %d, ran in %s: its run %s is not in this store", best.number, where, run_id)
        tracking.set_tags(
            settings, parent_id, {"tune.best_run_id": run_id, "tune.best_trial": best.number, **best_tags}
        )
        tracking.log_metrics(settings, parent_id, {f"best.val.{params.tune.metric}": best.value})
    tracking.log_artifacts(settings, parent_id, [out / "summary.json", *sorted(out.glob("*.png"))], "tune")


def summary_markdown(summary: dict[str, Any]) -> str:
    """The flow-run summary: the best trial and one row per trial (credentials redacted)."""
    lines = [f"# tune: study `{summary['study']}`", ""]
    best = summary["best"]
    if best:
        lines += [f"Best: trial {best['trial']}, {summary['metric']} = {best['value']:.4f}, params `{best['params']}`"]
    counted = ", ".join(f"{n} {state}" for state, n in summary["trials"].items() if n)
    lines += ["", f"Trials: {counted}; this run {summary['wall_seconds']:.0f} s", ""]
    lines += ["| trial | state | value | seconds | params |", "| --- | --- | --- | --- | --- |"]
    for t in summary["all_trials"]:
        value = f"{t['value']:.4f}" if t["value"] is not None else "-"
        lines.append(f"| {t['number']} | {t['state']} | {value} | {t['seconds'] or '-'} | `{t['params']}` |")
    return redact("\n".join(lines) + "\n")


@flow(name="tune", log_prints=True)
def tune(
    trials: int,
    workers: int = 1,
    apply: bool = False,
    params_path: str = str(DEFAULT_PARAMS),
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the study ``tune.study`` until it has ``trials`` finished (complete or pruned) trials, ``workers`` at once.

    Args:
        trials: the study's size: finished trials (of earlier runs too) count toward it, so a killed study run again
            runs only the rest; a trial the kill interrupted is failed and its values are tried once more.
        workers: trials at once, on the flow's task runner (threads, or Dask worker processes).
        apply: write the best trial's values to params.yaml (as `dvc exp run -S` would).
        params_path: params.yaml, in the root of the repo the flow runs in.
        overrides: dotted keys changed for this run only (``{"tune.study": "lr-search"}``), not written.

    Returns:
        summary.json's content.
    """
    logger = get_run_logger()
    path = Path(params_path)
    root = path.resolve().parent
    if Path.cwd().resolve() != root:
        raise TrainflowError(f"{params_path}: run the flow from the folder that holds it (the repo root)")
    params = load_params(path, overrides)
    raw = apply_overrides(read_params_file(path), overrides or {})
    space = tuning.search_space(raw, params)  # a bad search space fails here, before any trial
    tuning.storage_url(params.tune.storage, root)  # so does a relative study file outside the repository
    prepare_data(quote(str(root)))  # before the lock: `dvc repro` runs each stage with the lock held
    out = root / params.paths.tune
    with workspace_lock(root / params.paths.lock, "Prefect flow tune"):
        started = time.perf_counter()
        study = tuning.open_study(params, root)
        parent = parent_run(study, params, root)
        # The study's data as its run's inputs, logged before any trial: each trial's train logs the same datasets,
        # and MLflow's store adds a dataset new to the experiment unlocked, so two trials ending together collided on
        # its unique key (sqlite3.IntegrityError, seen with --workers 2 on Dask); now the trials find it there.
        tracking.log_datasets(params.tracking, parent, params.paths.augmented, ("train", "val"))
        tracking.reopen_run(params.tracking, parent)  # log_datasets opens and ends the run through MLflow's fluent API
        for stale in tuning.fail_interrupted(study):
            logger.warning(
                "trial %d was interrupted (its run was killed): failed, its values queued again", stale.number
            )
            run_id = run_here(params, stale) or tracking.start_child_run(
                params.tracking, parent, f"{params.tune.study} trial {stale.number}", trial_tags(params, stale.number)
            )
            tracking.set_tags(params.tracking, run_id, {"tune.state": "failed", "tune.error": "interrupted"})
            tracking.end_run(params.tracking, run_id, "FAILED")
        shutil.rmtree(out / "trials", ignore_errors=True)  # leftovers of killed trials: none runs here now
        if params.tune.baseline_first and (queued := tuning.enqueue_baseline(study, raw, space)):
            logger.info("trial 0 trains params.yaml's own values: %s", queued)
        budget = max(0, trials - sum(tuning.counts(study)[s] for s in tuning.FINISHED))
        logger.info("study %s: %d trial(s) to run, %d at once", params.tune.study, budget, workers)
        submitted, in_flight, ran, failures = 0, [], [], []
        try:
            while True:
                now = tuning.counts(study)  # across every machine of the study, when the storage is shared
                while (
                    len(in_flight) < workers
                    and submitted < budget
                    and now["complete"] + now["pruned"] + now["running"] < trials
                ):
                    trial = tuning.ask(study, space)
                    future = run_trial.with_options(task_run_name=f"trial-{trial.number}").submit(trial, raw, parent)
                    in_flight.append((trial.number, future))
                    submitted, now["running"] = submitted + 1, now["running"] + 1
                if not in_flight:
                    break
                done = next(as_completed([f for _, f in in_flight]))
                number = next(n for n, f in in_flight if f is done)
                in_flight = [(n, f) for n, f in in_flight if f is not done]
                ran.append(number)
                if done.state.is_failed():
                    failures.append(f"trial {number}: {done.state.message}")
        finally:
            for _, future in in_flight:  # an error in the loop: let the running trials finish and record themselves
                future.wait()
            out.mkdir(parents=True, exist_ok=True)
            summary = tuning.summary(study, params, root, time.perf_counter() - started, sorted(ran))
            summary["plots"] = tuning.plots(study, out, params.tune.metric)
            summary["mlflow_parent_run_id"] = parent
            artifacts.write_json(out / "summary.json", summary)
            record_best(study, params, parent, out)
            tracking.end_run(params.tracking, parent, "FINISHED" if summary["best"] else "FAILED")
        if summary["best"] is None:
            why = f" ({failures[-1]})" if failures else ""
            raise TrainflowError(f"study {params.tune.study}: no trial completed{why}")
        if apply:
            summary["applied"] = changed = tuning.changes(raw, summary["best"]["params"])
            if changed:
                dvc_repo.write_params(path, changed)
                logger.info("%s: %s; `dvc repro` trains, evaluates and gates it", params_path, changed)
            else:
                logger.info("%s already holds the best trial's values", params_path)
    create_markdown_artifact(
        markdown=summary_markdown(summary), key=SUMMARY_KEY, description="The study's best trial and every trial"
    )
    return summary


def for_workers(workers: int) -> Any:
    """The tune flow with ``workers`` trials at once: threads that each wait on a trial's own process."""
    from prefect.task_runners import ThreadPoolTaskRunner

    return tune.with_options(task_runner=ThreadPoolTaskRunner(max_workers=workers))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.tune", description="Tune hyper-parameters (Optuna).")
    parser.add_argument("--trials", type=int, required=True, help="the study's size: finished trials, earlier runs'too")
    parser.add_argument("--workers", type=int, default=1, help="trials at once (default: %(default)s)")
    parser.add_argument("--apply", action="store_true", help="write the best trial's values to params.yaml")
    parser.add_argument("--study", help="the study's name for this run (default: tune.study)")
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help="params file (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.workers < 1:
        parser.error("--trials and --workers must be at least 1")
    overrides = {"tune.study": args.study} if args.study else {}
    with prefect_api.one_line_errors("tune"):
        params = load_params(Path(args.params), overrides)
        # a bad search space is one line before Prefect or any trial starts
        tuning.search_space(apply_overrides(read_params_file(Path(args.params)), overrides), params)
        summary = for_workers(args.workers)(
            trials=args.trials,
            workers=args.workers,
            apply=args.apply,
            params_path=args.params,
            overrides=overrides or None,
        )
    print(json.dumps({k: v for k, v in summary.items() if k != "all_trials"}, indent=2))


if __name__ == "__main__":
    main()
