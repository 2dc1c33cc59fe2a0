"""Hyper-parameter tuning with Optuna (the one module that knows it): params' ``tune.space`` as distributions, the
study (TPE sampler, median pruner, SQLite or a database server), interrupted trials, pruning, the summary
and the plots; and each trial's training in a process of its own. flows/tune.py runs the trials.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import numbers
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tasks.lib import dblock
from tasks.lib.config import Params, SpaceEntry, apply_overrides, parse_params
from tasks.lib.errors import TrainflowError, redact

log = logging.getLogger(__name__)

TUNABLE_SECTIONS = ("train",)  # trials retrain on the prepared data (augmented + statistics): only train's keys change
FINISHED = ("complete", "pruned")  # what counts toward --trials N (Optuna's MaxTrialsCallback counts these too)
STATE_NAMES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}
# where the trial's files go: every path train writes, inside the trial's own folder under paths.tune
TRIAL_PATHS = {
    "checkpoints": "checkpoints",
    "model": "model.keras",
    "history": "history.csv",
    "run_info": "mlflow_run.json",
    "reference_stats": "reference_stats.json",
}


def direction(metric: str) -> str:
    """``minimize`` for val loss, ``maximize`` for the others."""
    return "minimize" if metric == "loss" else "maximize"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _distribution(key: str, entry: SpaceEntry, current: Any) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    where = f"tune.space.{key}"
    if entry.choices is not None:
        return CategoricalDistribution(entry.choices)
    if current is None and key.startswith(MODEL_ARGS):  # a model argument params.yaml leaves at its default
        current = entry.low  # integer bounds: an integer argument
    if not _is_number(current):
        raise TrainflowError(f"{where}: a range needs a number, but {key} is {current!r}; give choices instead")
    if isinstance(current, int):
        bounds = {"low": entry.low, "high": entry.high, "step": entry.step}
        if not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in bounds.values()):
            raise TrainflowError(f"{where}: {key} is an integer, so low, high and step must be integers ({bounds})")
        return IntDistribution(int(entry.low), int(entry.high), log=entry.log, step=int(entry.step or 1))  # type: ignore[arg-type]
    return FloatDistribution(float(entry.low), float(entry.high), log=entry.log, step=entry.step)  # type: ignore[arg-type]


def search_space(raw: Mapping[str, Any], params: Params) -> dict[str, Any]:
    """``tune.space`` as Optuna distributions, checked against params.yaml before any trial runs.

    Every key must be a ``train.*`` key of ``raw`` (not ``train.epochs``: the budget is ``tune.epochs``), a range
    needs a numeric key (an integer key takes integer bounds), and both ends of a range and every choice must be a
    value params.yaml accepts.

    Raises:
        TrainflowError: one line naming the key.
    """
    space: dict[str, Any] = {}
    for key, entry in params.tune.space.items():
        where = f"tune.space.{key}"
        section, _, leaf = key.partition(".")
        if key.startswith(MODEL_ARGS):
            model_argument(params, key.removeprefix(MODEL_ARGS), where)
        elif not isinstance(raw.get(section), dict) or not leaf or leaf not in raw[section]:
            raise TrainflowError(f"{where}: unknown key (params.yaml has no {key})")
        if section not in TUNABLE_SECTIONS:
            raise TrainflowError(f"{where}: trials retrain on the prepared data, so only train.* keys can be searched")
        if key == "train.epochs":
            raise TrainflowError(f"{where}: every trial trains tune.epochs epochs (the budget); search other keys")
        space[key] = _distribution(key, entry, current(raw, key))
        ends = entry.choices if entry.choices is not None else (entry.low, entry.high)
        for value in ends:
            trial_params(raw, params, {key: value}, Path(params.paths.tune) / "check", origin=f"{where}={value!r}")
    return space


MODEL_ARGS = "train.model_args."  # tune.space keys of the model function's own arguments
TEXT_SOURCES = ("tsv", "csv", "text_folder")


def current(raw: Mapping[str, Any], key: str) -> Any:
    """params.yaml's value of a dotted ``key``; None for a model argument it does not set (the function's default)."""
    node: Any = raw
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def model_argument(params: Params, name: str, where: str) -> None:
    """Check that train.model's function takes the argument ``name`` (tune.space.train.model_args.<name>)."""
    from tasks.lib import architecture

    if not name.isidentifier():
        raise TrainflowError(f"{where}: unknown key (train.model_args.<name> takes one argument name)")
    kind = "text" if params.data.source.partition(":")[0] in TEXT_SOURCES else "images"
    probe = params.train.model_copy(update={"model_args": {**params.train.model_args, name: None}})
    try:
        architecture.resolve(probe, kind)
    except TrainflowError as exc:
        raise TrainflowError(f"{where}: {exc}") from None


def trial_params(
    raw: Mapping[str, Any], params: Params, values: Mapping[str, Any], folder: Path, origin: str = "trial"
) -> Params:
    """The params of one trial: params.yaml with the trial's values, ``tune.epochs`` epochs, and train's outputs
    (model, checkpoints, history, MLflow run file, reference statistics) in the trial's own ``folder``."""
    overrides: dict[str, Any] = {**values, "train.epochs": params.tune.epochs}
    overrides |= {f"paths.{key}": str(folder / name) for key, name in TRIAL_PATHS.items()}
    return parse_params(apply_overrides(copy.deepcopy(dict(raw)), overrides), origin=origin)


def storage_url(storage: str, root: Path) -> str:
    """``tune.storage`` as a SQLAlchemy URL: a database URL as it is, a file path as SQLite; a relative SQLite file
    (``optuna.db``, ``sqlite:///optuna.db``) resolves inside the repository ``root``, like every ``paths.*``, not in
    the working folder of whoever opens it.

    Raises:
        TrainflowError: a relative SQLite file that resolves outside ``root`` (an absolute path says so on purpose).
    """
    if "://" not in storage:
        file, query = storage, ""
    else:
        scheme, _, rest = storage.partition(":///")
        if scheme.partition("+")[0] != "sqlite" or not rest or rest.startswith(("/", ":memory:")):
            return storage  # a database server, an absolute SQLite file, or SQLite in memory
        file, query = rest.partition("?")[::2]
    path, inside = (root / file).resolve(), root.resolve()
    if not Path(file).is_absolute() and inside not in path.parents:
        raise TrainflowError(
            f"tune.storage={storage}: a relative file resolves inside the repository, and {path} is outside "
            f"{inside}; give an absolute path (or a database URL) for a study kept elsewhere"
        )
    return f"sqlite:///{path}" + (f"?{query}" if query else "")


def open_study(params: Params, root: Path) -> Any:
    """Create or load (``load_if_exists``) the study ``tune.study``: TPE (seeded), the pruner params choose.

    Raises:
        TrainflowError: the study exists but optimises another metric (its values would not compare), or the
            storage cannot be opened.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = params.tune
    url = storage_url(cfg.storage, root)
    # PostgreSQL: machines opening a new database at once would race creating Optuna's tables (a unique violation
    # in PostgreSQL's catalog); they take turns under the database's own lock (SQLite's file lock does this itself)
    try:
        # SQLite: a writer waits for the lock (trials in threads or processes write at once) instead of failing
        engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
        with dblock.turns(url, "optuna-storage", "creating the study's tables"):
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine)
            study = optuna.create_study(
                study_name=cfg.study, storage=storage, direction=direction(cfg.metric), load_if_exists=True
            )
    except TrainflowError:
        raise
    except Exception as exc:  # a bad URL, a missing driver, an unreachable server: many types
        raise TrainflowError(f"tune.storage={redact(url)}: cannot open ({str(exc).splitlines()[0][:200]})") from None
    metric = study.user_attrs.get("metric")
    if metric is None:
        study.set_user_attr("metric", cfg.metric)
        metric = cfg.metric
    if metric != cfg.metric:
        raise TrainflowError(
            f"tune.metric={cfg.metric}: study {cfg.study!r} in {redact(url)} optimises val {metric}; its trials "
            "would not compare: set tune.metric back or name a new tune.study"
        )
    # A resumed study seeds its sampler afresh: offset by the trials it has, or it would draw the same points again.
    study.sampler = optuna.samplers.TPESampler(
        seed=params.seed + len(study.trials), n_startup_trials=cfg.sampler_startup_trials, constant_liar=True
    )
    study.pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=cfg.pruner_startup_trials, n_warmup_steps=cfg.pruner_warmup_epochs)
        if cfg.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    return study


def enqueue_baseline(study: Any, raw: Mapping[str, Any], space: Mapping[str, Any]) -> dict[str, Any]:
    """On a new study, queue params.yaml's own values (those inside the space) as the first trial; what was queued."""
    if study.trials:
        return {}
    values = {}
    for key, distribution in space.items():
        value = current(raw, key)
        if value is not None and _inside(distribution, value):
            values[key] = value
    if values:
        study.enqueue_trial(values, user_attrs={"baseline": True})
    return values


def _inside(distribution: Any, value: Any) -> bool:
    from optuna.distributions import CategoricalDistribution

    if isinstance(distribution, CategoricalDistribution):
        return any(type(value) is type(choice) and value == choice for choice in distribution.choices)
    return _is_number(value) and distribution.low <= value <= distribution.high


def changes(raw: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The dotted keys of ``values`` whose value differs from params.yaml's (``raw``)."""
    changed = {}
    for key, value in values.items():
        before = current(raw, key)
        if type(before) is not type(value) or before != value:
            changed[key] = value
    return changed


def owner() -> dict[str, Any]:
    """Who runs a trial: host and working folder (the workspace lock makes it the only runner there) and pid."""
    return {"host": socket.gethostname(), "workspace": str(Path.cwd().resolve()), "pid": os.getpid()}


def fail_interrupted(study: Any) -> list[Any]:
    """Trials left RUNNING by a killed run of this workspace (same host and folder: the workspace lock says no live
    process of ours runs them) are told FAIL, and each is queued once more with the same values. Trials running on
    other machines (a database storage) are left alone. Returns the failed trials."""
    from optuna.trial import TrialState

    me = owner()
    stale = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") == me["host"] and attrs.get("workspace") == me["workspace"]:
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            if "retry_of" not in attrs:  # a second kill of the same values: leave it to the sampler
                study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            stale.append(trial)
    return stale


def counts(study: Any) -> dict[str, int]:
    """Trials by state: complete, pruned, failed, running, waiting."""
    found = dict.fromkeys(STATE_NAMES.values(), 0)
    for trial in study.get_trials(deepcopy=False):
        found[STATE_NAMES[trial.state.name]] += 1
    return found


def ask(study: Any, space: Mapping[str, Any]) -> Any:
    """A new trial with every value of ``space`` drawn (a queued trial's values first), marked with its owner."""
    trial = study.ask(dict(space))
    for key, value in owner().items():
        trial.set_user_attr(key, value)
    return trial


def pruner(trial: Any, metric: str) -> Callable[[int, float], str | None]:
    """For a trial's process: report an epoch's val loss to ``trial``; why the pruner stops it, or None to go on.

    Optuna compares intermediate values in the study's direction, so for a maximised metric the reported value is
    the negated val loss (higher is better).
    """
    sign = 1.0 if direction(metric) == "minimize" else -1.0

    def check(epoch: int, loss: float) -> str | None:
        trial.report(sign * loss, epoch)
        if trial.should_prune():
            return f"val loss {loss:.4f} at epoch {epoch + 1} is behind the earlier trials"
        return None

    return check


# A trial trains in a process of its own (issue 25, decision 7): the train stage sets Keras' global random seed and
# dtype policy, so trials sharing a process (the threads task runner) would reseed each other mid-training. The
# parent keeps Optuna and the MLflow bookkeeping; the child (`python -m flows.tuning`) trains, scores on val, and
# after every epoch asks the parent whether to go on. They speak JSON lines over the child's stdin and stdout.


class Pruned(Exception):
    """The pruner stopped the trial (its message says why)."""


def run_trial_process(
    request: Mapping[str, Any], on_begin: Callable[[], None], on_epoch: Callable[[int, float], str | None]
) -> dict[str, float]:
    """Train and score one trial in a new Python process; its val scores.

    ``request``: ``raw`` (params.yaml as plain data), ``values`` (the trial's), ``folder`` and ``number``.
    ``on_begin`` runs when training starts; ``on_epoch(epoch, val_loss)`` after each epoch: why to prune, or None.

    Raises:
        Pruned: ``on_epoch`` stopped it.
        TrainflowError: the trial failed (the child's error in one line), or its process died.
    """
    child = subprocess.Popen(
        [sys.executable, "-m", "flows.tuning"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        child.stdin.write(json.dumps(dict(request)) + "\n")
        for line in child.stdout:
            message = json.loads(line)
            if "begin" in message:
                on_begin()
                reply: dict[str, Any] = {}
            elif "epoch" in message:
                reply = {"prune": on_epoch(int(message["epoch"]), float(message["val_loss"]))}
            elif "scores" in message:
                child.stdin.close()
                child.wait(timeout=120)
                return {k: float(v) for k, v in message["scores"].items()}
            elif "pruned" in message:
                raise Pruned(message["pruned"])
            else:
                raise TrainflowError(message.get("error", f"unexpected message {line[:200]!r}"))
            child.stdin.write(json.dumps(reply) + "\n")
    except BrokenPipeError:  # the child died before it read a reply
        pass
    finally:
        if child.poll() is None:  # an error on this side (Optuna, MLflow): the child must not outlive it
            child.kill()
        child.wait()
    # its stdout ended without a result: it died (it printed why to stderr)
    raise TrainflowError(f"trial {request['number']}: its process exited {child.returncode} before it finished")


def score_val(params: Params) -> dict[str, Any]:
    """The trial's saved model scored as evaluate scores it, on the clean validation split only."""
    from tasks.evaluate import classification_metrics, model_input
    from tasks.lib import architecture, artifacts
    from tasks.lib.quiet import import_keras

    keras = import_keras()
    architecture.import_module(params.train.model)  # its custom layers, if any, before Keras loads it
    model = keras.saving.load_model(params.paths.model, compile=False, safe_mode=True)
    stored = artifacts.open_dataset(Path(params.paths.clean))
    val = stored.load("val", mmap=True)
    probabilities = model.predict(model_input(val.x), batch_size=params.evaluate.batch_size, verbose=0)
    return classification_metrics(val.y, probabilities, stored.classes)


def trial_process() -> None:
    """The child's side of :func:`run_trial_process`: train the trial with the stage's own code, score it on val."""
    from tasks.lib.quiet import import_keras, quiet_libraries

    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever a library prints goes to stderr: stdout carries the protocol alone
    quiet_libraries()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def say(message: dict[str, Any]) -> None:
        protocol.write(json.dumps(message) + "\n")

    def ask(message: dict[str, Any]) -> dict[str, Any]:
        say(message)
        reply = sys.stdin.readline()
        if not reply:  # the parent is gone: stop here
            sys.exit(1)
        return json.loads(reply)

    request = json.loads(sys.stdin.readline())
    keras = import_keras()

    class Ask(keras.callbacks.Callback):
        def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
            ask({"begin": True})

        def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
            loss = float((logs or {}).get("val_loss", math.nan))
            if why := ask({"epoch": epoch, "val_loss": loss})["prune"]:
                raise Pruned(why)

    from tasks import train

    try:
        raw = request["raw"]
        params = trial_params(raw, parse_params(raw), request["values"], Path(request["folder"]))
        train.run(params, callbacks=[Ask()])
        scores = score_val(params)
        say({"scores": {k: float(v) for k, v in scores.items() if isinstance(v, numbers.Real)}})
    except Pruned as exc:
        say({"pruned": str(exc)})
    except TrainflowError as exc:  # bad input, named in one line: the parent reports it
        say({"error": str(exc).splitlines()[0][:500]})
    except Exception as exc:  # unexpected: one line to the parent, the traceback to stderr
        log.exception("trial %s failed", request.get("number"))
        say({"error": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"[:500]})


def tell(trial: Any, value: float | None, state: str) -> None:
    """Finish ``trial``: ``complete`` with its value, ``pruned`` or ``failed``."""
    from optuna.trial import TrialState

    if state == "complete":
        trial.study.tell(trial, value)
    else:
        trial.study.tell(trial, state=TrialState.PRUNED if state == "pruned" else TrialState.FAIL)


def trial_record(trial: Any) -> dict[str, Any]:
    """One trial for summary.json."""
    seconds = (
        (trial.datetime_complete - trial.datetime_start).total_seconds()
        if trial.datetime_complete and trial.datetime_start
        else None
    )
    return {
        "number": trial.number,
        "state": STATE_NAMES[trial.state.name],
        "value": trial.value if trial.state.name == "COMPLETE" else None,  # Optuna gives a pruned one its last report
        "params": trial.params,
        "epochs": len(trial.intermediate_values),
        "seconds": round(seconds, 1) if seconds is not None else None,
        "mlflow_run_id": trial.user_attrs.get("mlflow_run_id"),
        "mlflow_store": trial.user_attrs.get("mlflow_store"),  # clones sharing a study: each has its own store
        **({"baseline": True} if trial.user_attrs.get("baseline") else {}),
        **({"retry_of": trial.user_attrs["retry_of"]} if "retry_of" in trial.user_attrs else {}),
    }


def best_trial(study: Any) -> Any | None:
    """The best complete trial, or None."""
    from optuna.trial import TrialState

    return study.best_trial if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) else None


def summary(study: Any, params: Params, root: Path, wall_seconds: float, ran: list[int]) -> dict[str, Any]:
    """summary.json: the best trial (value, params, MLflow run), the trials by state, this run's wall time."""
    best = best_trial(study)
    trials = study.get_trials(deepcopy=False)
    return {
        "study": study.study_name,
        "storage": redact(storage_url(params.tune.storage, root)),
        "metric": f"val.{params.tune.metric}",
        "direction": direction(params.tune.metric),
        "best": None
        if best is None
        else {
            "trial": best.number,
            "value": best.value,
            "params": best.params,
            "mlflow_run_id": best.user_attrs.get("mlflow_run_id"),
            "mlflow_store": best.user_attrs.get("mlflow_store"),
        },
        "trials": counts(study),
        "wall_seconds": round(wall_seconds, 1),
        "ran_now": ran,
        "epochs_budget": params.tune.epochs,
        "all_trials": [trial_record(t) for t in trials],
    }


FEW_TRIALS = 20  # below this many complete trials, parameter importances are mostly noise


def importance_caveat(study: Any) -> str | None:
    """What the importance plot cannot tell from few trials, or None once there are :data:`FEW_TRIALS`."""
    from optuna.trial import TrialState

    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if complete >= FEW_TRIALS:
        return None
    return f"from {complete} complete trials: too few for importances to mean much (read them from {FEW_TRIALS} on)"


def plots(study: Any, out: Path, metric: str) -> dict[str, str]:
    """optimization_history.png and param_importances.png (Optuna's matplotlib plots) in ``out``; for each plot,
    its file name or why it was not drawn (importances need two complete trials with different values); with fewer
    than :data:`FEW_TRIALS` complete trials, ``caveat`` says the importances mean little (also in the plot's title)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis
    from optuna.exceptions import ExperimentalWarning

    done: dict[str, str] = {}
    for name, plot in (
        ("optimization_history", vis.plot_optimization_history),
        ("param_importances", vis.plot_param_importances),
    ):
        path = out / f"{name}.png"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)  # importances of very few trials: drawn equal
                axes = plot(study, target_name=f"val {metric}")
            figure = axes.figure
            if name == "param_importances" and (caveat := importance_caveat(study)) is not None:
                axes.set_title(f"{axes.get_title()}\n{caveat}", fontsize=10)
                done["caveat"] = caveat
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            tmp = path.with_name(f".{path.name}.tmp.png")
            figure.savefig(tmp, dpi=100)
            os.replace(tmp, path)
            plt.close(figure)
            done[name] = path.name
        except (ValueError, RuntimeError) as exc:  # too few complete trials for importances
            path.unlink(missing_ok=True)
            plt.close("all")
            done[name] = f"not drawn: {str(exc).splitlines()[0][:200]}"
    return done


if __name__ == "__main__":
    trial_process()
