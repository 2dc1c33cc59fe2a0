"""Crashes: a stage killed mid-write leaves the previous output intact; a killed training resumes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tasks.lib import artifacts
from tests.helpers import TINY, make_workspace, sh, tool_env

pytestmark = pytest.mark.slow


def stage(workspace: Path, name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", f"tasks.{name}"],
        cwd=workspace,
        env=tool_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def set_params(workspace: Path, section: str, **values: object) -> None:
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params[section].update(values)
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def kill_when(process: subprocess.Popen[bytes], ready: object, timeout: float = 120) -> bool:
    """SIGKILL ``process`` as soon as ``ready()`` holds; False if it finished first."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if ready():  # type: ignore[operator]
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            return True
        time.sleep(0.001)
    return False


def test_a_stage_killed_mid_write_keeps_the_previous_output_and_reruns_correctly(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path / "workspace", TINY)
    rng = np.random.default_rng(0)
    big = tmp_path / "big.npz"
    np.savez(
        big,
        x_train=rng.integers(0, 256, (60_000, 28, 28), dtype=np.uint8),
        y_train=np.arange(60_000) % 10,
        x_test=rng.integers(0, 256, (10_000, 28, 28), dtype=np.uint8),
        y_test=np.arange(10_000) % 10,
    )

    def writing() -> bool:  # the new output is being written beside the old one
        return any((p / "train" / "x-00000.npy").exists() for p in (workspace / "data").glob(".raw.*.tmp"))

    for _attempt in range(5):
        set_params(workspace, "data", source="digits")
        sh(workspace, sys.executable, "-m", "tasks.ingest")
        before = (workspace / "data/raw/manifest.json").read_text()
        set_params(workspace, "data", source="npz", path=str(big))
        if kill_when(stage(workspace, "ingest"), writing):
            break
    else:
        pytest.fail("ingest finished every time before it could be killed mid-write")

    assert (workspace / "data/raw/manifest.json").read_text() == before
    kept = artifacts.open_dataset(workspace / "data/raw")
    manifest = json.loads(before)
    assert {name: [artifacts.content_hash(s) for s in kept.shards(name)] for name in kept.splits} == {
        name: [shard["sha256"] for shard in s["shards"]] for name, s in manifest["splits"].items()
    }
    rerun = stage(workspace, "ingest")
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read().decode()[-2000:]
    counts = json.loads((workspace / "data/raw/manifest.json").read_text())["splits"]
    assert sum(s["count"] for s in counts.values()) == 70_000 and counts["test"]["count"] == 10_000


def test_a_killed_training_resumes_from_its_last_epoch_in_the_same_mlflow_run(tmp_path: Path) -> None:
    epochs = 6
    workspace = make_workspace(
        tmp_path / "workspace", {**TINY, "train": {**TINY["train"], "epochs": epochs, "batch_size": 8}}
    )
    for name in ("ingest", "clean", "augment", "normalize"):
        sh(workspace, sys.executable, "-m", f"tasks.{name}")

    def two_epochs_done() -> bool:
        logs = list((workspace / "models/checkpoints").glob("*.history.csv"))
        return bool(logs) and len(logs[0].read_text().splitlines()) >= 3

    assert kill_when(stage(workspace, "train"), two_epochs_done), "training finished before it could be killed"
    first_run = json.loads((workspace / "models/mlflow_run.json").read_text())["run_id"]
    assert not (workspace / "models/model.keras").exists()

    resumed = sh(workspace, sys.executable, "-m", "tasks.train")
    assert f"resuming MLflow run {first_run}" in resumed.stderr
    rows = (workspace / "reports/train/history.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(epochs))  # every epoch once: none lost, none twice
    assert json.loads((workspace / "models/mlflow_run.json").read_text())["run_id"] == first_run
    assert (workspace / "models/model.keras").is_file()
    assert not list((workspace / "models/checkpoints").iterdir())  # the checkpoint is gone once training finished
