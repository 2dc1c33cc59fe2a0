"""The search space, trial params and study bookkeeping of flows/tuning.py (real Optuna, no training)."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import optuna
import psutil
import pytest

from flows import tuning
from tasks.lib.config import parse_params
from tasks.lib.errors import TrainflowError
from tests.helpers import REPO, committed_params_file, sh


def space_of(raw: dict[str, Any], space: dict[str, Any], **tune: Any) -> tuple[dict[str, Any], Any]:
    changed = copy.deepcopy(raw)
    changed["tune"]["space"] = space
    changed["tune"].update(tune)
    return changed, parse_params(changed)


def test_the_default_space_is_valid_and_typed(raw: dict[str, Any]) -> None:
    space = tuning.search_space(raw, parse_params(raw))
    lr, units, batch = space["train.learning_rate"], space["train.dense_units"], space["train.batch_size"]
    assert isinstance(lr, optuna.distributions.FloatDistribution) and lr.log
    assert isinstance(units, optuna.distributions.IntDistribution) and units.log  # an int key: integers drawn
    assert batch.choices == (32, 64, 128)


def test_the_text_model_space_of_docs_tuning_md_is_valid(raw: dict[str, Any]) -> None:
    text_space = {
        "train.rnn": {"choices": ["lstm", "gru"]},
        "train.rnn_units": {"low": 16, "high": 128, "log": True},
        "train.embedding_dim": {"choices": [32, 64, 128]},
        "train.bidirectional": {"choices": [False, True]},
    }
    changed, params = space_of(raw, text_space)
    space = tuning.search_space(changed, params)
    assert space["train.rnn"].choices == ("lstm", "gru")
    assert isinstance(space["train.rnn_units"], optuna.distributions.IntDistribution)
    bad, params = space_of(raw, {"train.rnn": {"choices": ["lstm", "transformer"]}})
    with pytest.raises(TrainflowError, match=r"tune\.space\.train\.rnn='transformer'"):
        tuning.search_space(bad, params)


def test_the_space_searches_the_model_functions_own_arguments(raw: dict[str, Any]) -> None:
    """tune.space.train.model_args.<name>: a name the function takes (set in params.yaml or left at its default) is
    searched and reaches the trial's train.model_args; one it does not take is one line naming it. Mutation: the
    model_args branch of search_space removed ("unknown key")."""
    raw["train"]["model"] = "architectures.resnet:resnet"
    raw["train"]["model_args"] = {"width": 8}
    searched = {"train.model_args.width": {"choices": [4, 8]}, "train.model_args.blocks": {"low": 1, "high": 3}}
    changed, params = space_of(raw, searched)
    space = tuning.search_space(changed, params)
    assert space["train.model_args.width"].choices == (4, 8)
    assert isinstance(space["train.model_args.blocks"], optuna.distributions.IntDistribution)
    values = {"train.model_args.width": 4, "train.model_args.blocks": 3}
    trial = tuning.trial_params(changed, params, values, Path("trial"))
    assert trial.train.model_args == {"width": 4, "blocks": 3}
    assert tuning.changes(changed, values) == values
    bad, params = space_of(raw, {"train.model_args.depth": {"low": 1, "high": 3}})
    with pytest.raises(TrainflowError, match=r"tune\.space\.train\.model_args\.depth: train\.model_args: resnet takes"):
        tuning.search_space(bad, params)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"train.dropot": {"low": 0.0, "high": 0.5}}, "tune.space.train.dropot: unknown key"),
        ({"trian.dropout": {"low": 0.0, "high": 0.5}}, "tune.space.trian.dropout: unknown key"),
        ({"train.model": {"low": 0, "high": 2}}, "tune.space.train.model: a range needs a number"),
        ({"train.batch_norm": {"low": 0, "high": 1}}, "tune.space.train.batch_norm: a range needs a number"),
        ({"train.dense_units": {"low": 16, "high": 64.5}}, "tune.space.train.dense_units: train.dense_units is an int"),
        ({"train.dropout": {"low": 0.0, "high": 1.0}}, "tune.space.train.dropout=1.0: train.dropout: Input should be"),
        ({"train.batch_size": {"choices": [0, 32]}}, "tune.space.train.batch_size=0: train.batch_size"),
        ({"augment.copies": {"low": 0, "high": 3}}, "tune.space.augment.copies: trials retrain on the prepared data"),
        ({"train.epochs": {"low": 2, "high": 9}}, "tune.space.train.epochs: every trial trains tune.epochs"),
    ],
)
def test_a_bad_search_key_is_one_line_naming_it(raw: dict[str, Any], space: dict[str, Any], message: str) -> None:
    changed, params = space_of(raw, space)
    with pytest.raises(TrainflowError, match=message.replace(".", r"\.").replace("(", r"\(")) as error:
        tuning.search_space(changed, params)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("tune", "message"),
    [
        ({"space": {"train.dropout": {"low": 0.5, "high": 0.1}}}, "tune.space.train.dropout: empty range"),
        ({"space": {"train.dropout": {"low": 0.2, "high": 0.2}}}, "tune.space.train.dropout: empty range"),
        ({"space": {"train.dropout": {"choices": []}}}, "tune.space.train.dropout: no choices"),
        ({"space": {"train.dropout": {"low": 0.1}}}, "tune.space.train.dropout: a range needs both low and high"),
        ({"space": {"train.l2": {"low": 0.0, "high": 0.1, "log": True}}}, "tune.space.train.l2: a log range needs"),
        ({"space": {"train.dropout": {"low": 0.0, "high": 0.5, "scale": "log"}}}, "train.dropout.scale: unknown key"),
        ({"metric": "acc"}, "tune.metric: Input should be 'accuracy'"),
        ({"metric": "test_accuracy"}, "tune.metric: Input should be"),
        ({"space": {}}, "tune.space: "),
    ],
)
def test_a_bad_range_or_metric_is_a_params_error_naming_it(
    raw: dict[str, Any], tune: dict[str, Any], message: str
) -> None:
    changed = copy.deepcopy(raw)
    changed["tune"].update(tune)
    with pytest.raises(TrainflowError, match=message.replace(".", r"\.")) as error:
        parse_params(changed)
    assert "\n" not in str(error.value)


def test_trial_params_train_the_budget_in_their_own_folder(raw: dict[str, Any], tmp_path: Path) -> None:
    params = parse_params(raw)
    trial = tuning.trial_params(raw, params, {"train.learning_rate": 0.002}, tmp_path / "7")
    assert trial.train.learning_rate == 0.002 and trial.train.epochs == params.tune.epochs
    for key in tuning.TRIAL_PATHS:  # everything train writes goes to the trial's folder...
        assert Path(getattr(trial.paths, key)).parent == tmp_path / "7"
    # ... and it reads the pipeline's prepared data
    assert (trial.paths.normalized, trial.paths.clean) == (params.paths.normalized, params.paths.clean)
    assert raw["train"]["learning_rate"] != 0.002  # the caller's mapping is left alone


def test_changes_are_the_values_params_yaml_does_not_hold(raw: dict[str, Any]) -> None:
    same = {"train.learning_rate": raw["train"]["learning_rate"], "train.batch_norm": raw["train"]["batch_norm"]}
    assert tuning.changes(raw, same) == {}
    assert tuning.changes(raw, {**same, "train.dropout": 0.4}) == {"train.dropout": 0.4}


def test_a_killed_runs_trials_fail_and_are_queued_once_more_but_others_machines_are_left(
    raw: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    params = parse_params({**raw, "tune": {**raw["tune"], "storage": str(tmp_path / "s.db")}})
    study = tuning.open_study(params, tmp_path)
    space = tuning.search_space(raw, params)
    finished = tuning.ask(study, space)
    study.tell(finished, 0.5)
    mine, theirs = tuning.ask(study, space), tuning.ask(study, space)
    theirs.set_user_attr("host", "another-machine")
    again = tuning.open_study(params, tmp_path)  # the next run of the study
    assert [t.number for t in tuning.fail_interrupted(again)] == [mine.number]
    states = {t.number: t.state.name for t in again.trials}
    assert states == {finished.number: "COMPLETE", mine.number: "FAIL", theirs.number: "RUNNING", 3: "WAITING"}
    retry = tuning.ask(again, space)
    assert retry.params == mine.params and retry.user_attrs["retry_of"] == mine.number


@pytest.mark.parametrize("storage", ["sqlite:///tune.db", "tune.db", "sqlite:///./studies/../tune.db"])
def test_a_relative_storage_lands_in_the_repository_whatever_the_working_folder(
    raw: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, storage: str
) -> None:
    root, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    root.mkdir(), elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # whoever opens the study runs somewhere else
    params = parse_params({**raw, "tune": {**raw["tune"], "storage": storage}})
    study = tuning.open_study(params, root)
    study.tell(study.ask(), 0.5)
    assert (root / "tune.db").is_file() and list(elsewhere.iterdir()) == []
    assert tuning.storage_url(storage, root) == f"sqlite:///{(root / 'tune.db').resolve()}"


def test_a_relative_storage_outside_the_repository_is_refused_and_absolute_urls_are_kept(tmp_path: Path) -> None:
    with pytest.raises(TrainflowError, match=r"tune\.storage=sqlite:///\.\./tune\.db: a relative file .* outside"):
        tuning.storage_url("sqlite:///../tune.db", tmp_path)
    with pytest.raises(TrainflowError, match=r"tune\.storage=\.\./tune\.db: a relative file"):
        tuning.storage_url("../tune.db", tmp_path)
    for kept in (f"sqlite:///{tmp_path}/shared.db", "sqlite://", "postgresql://u@h/optuna", "postgresql:///optuna"):
        assert tuning.storage_url(kept, tmp_path / "repo") == kept
    assert tuning.storage_url(str(tmp_path / "s.db"), tmp_path / "repo") == f"sqlite:///{tmp_path / 's.db'}"
    assert tuning.storage_url("sqlite:///t.db?timeout=9", tmp_path) == f"sqlite:///{tmp_path.resolve()}/t.db?timeout=9"


def test_a_study_keeps_its_metric(raw: dict[str, Any], tmp_path: Path) -> None:
    params = parse_params({**raw, "tune": {**raw["tune"], "storage": "s.db"}})
    tuning.open_study(params, tmp_path)
    other = params.model_copy(update={"tune": params.tune.model_copy(update={"metric": "f1_macro"})})
    with pytest.raises(TrainflowError, match=r"tune\.metric=f1_macro: study 'trainflow' .* optimises val accuracy"):
        tuning.open_study(other, tmp_path)


def test_the_cli_refuses_a_bad_space_in_one_line_before_any_trial(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(
        committed_params_file().read_text().replace("train.dropout: {low", "train.dropot: {low")
    )
    started = time.perf_counter()
    done = sh(tmp_path, "python", "-m", "flows.tune", "--trials", "3", check=False, PYTHONPATH=str(REPO))
    assert done.returncode == 1
    assert done.stderr.strip() == "error: tune: tune.space.train.dropot: unknown key (params.yaml has no train.dropot)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # no study, no MLflow store, no reports
    assert time.perf_counter() - started < 30


@pytest.mark.slow  # the trial's process imports TensorFlow
def test_a_trial_that_fails_in_its_process_is_one_line_and_leaves_no_process(
    raw: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)  # where `python -m flows.tuning` runs
    changed = copy.deepcopy(raw)
    changed["paths"].update(
        augmented=str(tmp_path / "no-data"), normalized=str(tmp_path / "no-data"), clean=str(tmp_path / "no-clean")
    )  # none of the inputs exist, also on a fresh checkout where `dvc repro` never ran
    request = {"raw": changed, "values": {"train.learning_rate": 0.002}, "folder": str(tmp_path / "0"), "number": 0}
    began: list[bool] = []
    before = set(psutil.Process().children(recursive=True))  # e.g. a process pool's forkserver of an earlier test
    with pytest.raises(TrainflowError) as error:
        tuning.run_trial_process(request, on_begin=lambda: began.append(True), on_epoch=lambda epoch, loss: None)
    assert "no-data" in str(error.value) and "\n" not in str(error.value)
    assert began == [] and set(psutil.Process().children(recursive=True)) - before == set()


@pytest.mark.parametrize(("trials", "caveat"), [(3, True), (tuning.FEW_TRIALS, False)])
def test_the_importance_plot_says_when_it_has_too_few_trials(tmp_path: Path, trials: int, caveat: bool) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-1) + t.suggest_int("units", 8, 64) / 100, trials)
    drawn = tuning.plots(study, tmp_path, "accuracy")
    assert drawn["param_importances"] == "param_importances.png" and (tmp_path / "param_importances.png").exists()
    assert ("caveat" in drawn) is caveat
    if caveat:
        assert drawn["caveat"].startswith("from 3 complete trials: too few for importances to mean much")
