"""No secret reaches any output: credentials planted in params.yaml and in the environment, the pipeline and the tune
flow run under Prefect, then every file and store of the workspace and every line printed is searched for them."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows.dvc_repo import write_params
from tests.conftest import copy_run
from tests.helpers import free_port, sh

# Each one distinct, and only letters and digits: found as they are in any file, whatever escapes it (JSON, HTML, URL)
PARAM_URI = "pwParamUri3x8"  # params.yaml tracking.uri: the store the training flow writes to
STORAGE = "pwStudyDb5k2"  # params.yaml tune.storage: the Optuna study's database
ENV_URI = "pwEnvUri7q1"  # MLFLOW_TRACKING_URI: the store the tune flow writes to (the same file)
TOKEN = "pwToken9zz4"  # MLFLOW_TRACKING_TOKEN: a secret-named variable, redacted by value
FAILED = "pwFailed2m6"  # MLFLOW_TRACKING_URI of a server that does not answer: the error line names it
SECRETS = (PARAM_URI, STORAGE, ENV_URI, TOKEN, FAILED)
# Where params.yaml's values are kept as written: the file itself, and DVC's records of it (dvc.lock and its run
# cache) and git's. docs/tracking-and-serving.md says so: credentials belong in environment variables.
USERS_OWN = ("params.yaml", "dvc.lock", ".git", ".dvc/cache/runs")

# One trial of one epoch of params.yaml's own values (tune.baseline_first): the cheapest study there is
TUNE = {"tune.epochs": 1, "tune.space": {"train.learning_rate": {"low": 0.001, "high": 0.01, "log": True}}}


def found_in_files(root: Path) -> dict[str, list[str]]:
    """Each secret's files under ``root``, bytes as they are: every file the runs wrote (the project's committed
    files, this test among them, and the records of params.yaml left out)."""
    tracked = sh(root, "git", "ls-files", "-z").stdout.split("\0")
    skip = [root / name for name in (*USERS_OWN, *filter(None, tracked))]
    found: dict[str, list[str]] = {}
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink() or any(path.is_relative_to(s) for s in skip):
            continue
        data = path.read_bytes()
        for secret in SECRETS:
            if secret.encode() in data:
                found.setdefault(secret, []).append(str(path.relative_to(root)))
    return found


@pytest.mark.slow
def test_no_planted_secret_reaches_any_file_store_or_line(tiny_run: Path, tmp_path: Path) -> None:
    root = copy_run(tiny_run, tmp_path / "ws")
    planted = {"tracking.uri": f"sqlite:///mlflow.db?password={PARAM_URI}"}
    planted["tune.storage"] = f"sqlite:///optuna.db?password={STORAGE}"
    write_params(root / "params.yaml", planted | TUNE)
    sh(root, "git", "commit", "-qam", "credentials in params.yaml")
    prefect = {"PREFECT_HOME": str(root / ".prefect"), "PREFECT_API_URL": "", "MLFLOW_TRACKING_TOKEN": TOKEN}
    printed = []

    # the pipeline under Prefect (train, evaluate, deploy and report rerun: tracking.uri changed): params.yaml's store
    done = sh(root, "python", "-m", "flows.training", **prefect)
    printed.append(done.stdout + done.stderr)
    # the tune flow, one trial: the store named by the environment (the same database)
    env_uri = f"sqlite:///{root / 'mlflow.db'}?password={ENV_URI}"
    done = sh(root, "python", "-m", "flows.tune", "--trials", "1", MLFLOW_TRACKING_URI=env_uri, **prefect)
    printed.append(done.stdout + done.stderr)
    assert '"best"' in done.stdout and (root / "optuna.db").is_file()
    # a stage whose tracking server does not answer: its one error line names the store
    unreachable = f"http://alice:{FAILED}@127.0.0.1:{free_port()}"
    done = sh(
        root,
        "python",
        "-m",
        "tasks.report",
        check=False,
        MLFLOW_TRACKING_URI=unreachable,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        MLFLOW_HTTP_REQUEST_TIMEOUT="5",
    )
    printed.append(done.stdout + done.stderr)
    assert done.returncode != 0 and "http://***@127.0.0.1" in done.stderr, done.stderr[-2000:]

    # the planted values were really used where they were planted (else finding none would prove nothing)
    store = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = store.search_runs([store.get_experiment_by_name("trainflow").experiment_id], order_by=["start_time DESC"])
    study = next(r for r in runs if r.data.tags.get("tune.role") == "study")
    trained = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags and r is not study)
    assert trained.data.params["tracking.uri"] == "sqlite:///mlflow.db?password=***"
    assert study.data.params["tune.storage"].endswith("optuna.db?password=***")
    assert any((root / ".prefect").rglob("*.db")) and (root / "reports/tune/summary.json").is_file()
    output = "\n".join(printed)
    assert not [s for s in SECRETS if s in output], output[-4000:]
    assert found_in_files(root) == {}
    # and the search does see them where they are meant to be: the user's params.yaml
    assert PARAM_URI in (root / "params.yaml").read_text() and STORAGE in (root / "params.yaml").read_text()
