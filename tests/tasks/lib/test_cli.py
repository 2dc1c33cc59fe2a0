"""tasks/cli.py: bad params or bad input end a stage with exit code 1 and one line on stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.lib.cli import main
from tasks.lib.config import Params
from tasks.lib.errors import EXIT_TRANSIENT, TrainflowError, TransientError
from tests.conftest import REPO
from tests.helpers import committed_params_file


def run_stage(stage: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"tasks.{stage}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_bad_params_file_exits_1_with_one_line(tmp_path: Path) -> None:
    raw = yaml.safe_load((committed_params_file()).read_text())
    raw["clean"]["max_removed_fraction"] = 2.0
    raw["train"]["epoch"] = raw["train"].pop("epochs")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    done = run_stage("clean", "--params", str(bad))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: clean: {bad}: ")
    assert "clean.max_removed_fraction" in lines[0]
    assert "train.epoch: unknown key" in lines[0] and "train.epochs: missing key" in lines[0]
    assert "Traceback" not in done.stderr


def test_missing_params_file_exits_1_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    done = run_stage("clean", "--params", str(missing))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"error: clean: {missing}: params file not found"]


def test_main_turns_trainflow_error_into_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.chdir(tmp_path)  # no dvc.yaml: main checks no stage's inputs (tests/test_stage_order.py does)
    seen: list[Params] = []

    def failing(params: Params) -> None:
        seen.append(params)
        raise TrainflowError("data/raw: not found")

    with pytest.raises(SystemExit) as exited:
        main("clean", failing, ["--params", str(committed_params_file())])
    assert exited.value.code == 1
    assert capsys.readouterr().err == "error: clean: data/raw: not found\n"
    assert seen and seen[0].data.source == "digits"


@pytest.mark.parametrize(
    "error",
    [TransientError("keras:mnist: download failed"), ConnectionError("mlflow:5000 refused"), TimeoutError("x")],
)
def test_a_transient_failure_exits_with_exit_transient_in_one_line(
    error: Exception, capsys: pytest.CaptureFixture[str]
) -> None:
    def failing(params: Params) -> None:
        raise error

    with pytest.raises(SystemExit) as exited:
        main("ingest", failing, ["--params", str(committed_params_file())])
    assert exited.value.code == EXIT_TRANSIENT  # the flow retries only these
    assert capsys.readouterr().err == f"error: ingest: {error}\n"


def test_a_value_the_user_set_for_tensorflow_logging_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    monkeypatch.chdir(tmp_path)  # no dvc.yaml: main checks no stage's inputs
    seen: list[str] = []
    main(
        "clean",
        lambda params: seen.append(os.environ["TF_CPP_MIN_LOG_LEVEL"]),
        ["--params", str(committed_params_file())],
    )
    assert seen == ["0"]


def test_main_runs_the_stage_with_loaded_params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.chdir(tmp_path)  # no dvc.yaml: main checks no stage's inputs
    seen: list[Params] = []
    main("clean", seen.append, ["--params", str(committed_params_file())])
    assert len(seen) == 1 and isinstance(seen[0], Params)


def test_a_credential_in_a_uri_never_reaches_the_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://bob:s3cret-pass@127.0.0.1:9/mlflow?sslkey=abc123")
    monkeypatch.chdir(tmp_path)  # no dvc.yaml: main checks no stage's inputs

    def unreachable(params: Params) -> None:
        from tasks.lib import tracking

        tracking.client(params.tracking)  # no PostgreSQL driver here, nor a server on port 9

    with pytest.raises(SystemExit):
        main("train", unreachable, ["--params", str(committed_params_file())])
    line = capsys.readouterr().err
    assert "MLflow tracking store postgresql://***@127.0.0.1:9/mlflow?sslkey=*** is unreachable" in line
    assert "s3cret-pass" not in line and "abc123" not in line
