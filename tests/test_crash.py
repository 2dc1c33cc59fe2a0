"""Crashes: a stage killed mid-write (SIGKILL, SIGTERM) leaves the previous output intact and its leftovers go with
the next good run; a killed training loses at most train.checkpoint_seconds and resumes from its last backup; a
killed `dvc repro` (or the flow's task running it) leaves no process behind, not even deploy's scoring server."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tasks.lib import artifacts
from tests.conftest import copy_run
from tests.helpers import TINY, make_workspace, sh, tool_env, wait_for, workspace_processes

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


def kill_when(
    process: subprocess.Popen[bytes],
    ready: object,
    timeout: float = 120,
    how: signal.Signals = signal.SIGKILL,
    group: bool = False,
) -> bool:
    """Send ``how`` (SIGKILL) to ``process`` (with ``group``: its process group) as soon as ``ready()`` holds; False
    if it finished first."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if ready():  # type: ignore[operator]
            if group:
                os.killpg(process.pid, how)
            else:
                process.send_signal(how)
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

    def leftovers() -> set[Path]:
        return set((workspace / "data").glob(".raw.*.tmp"))

    def writing(besides: set[Path]) -> object:  # a new output is being written beside the old one
        return lambda: any((p / "train" / "x-00000.npy").exists() for p in leftovers() - besides)

    for _attempt in range(5):
        set_params(workspace, "data", source="digits")
        sh(workspace, sys.executable, "-m", "tasks.ingest")
        before = (workspace / "data/raw/manifest.json").read_text()
        set_params(workspace, "data", source="npz", path=str(big))
        if not kill_when(stage(workspace, "ingest"), writing(set())):
            continue
        first = leftovers()
        if kill_when(stage(workspace, "ingest"), writing(first), how=signal.SIGTERM):
            break
    else:
        pytest.fail("ingest finished every time before it could be killed mid-write")
    assert len(first) == 1 and len(leftovers()) == 1 and not first & leftovers()  # the second run removed the first's

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
    assert not list((workspace / "data").glob(".raw.*.tmp"))  # the next good run removed the leftovers


def finished_epochs(backup_dir: Path) -> int:
    """Epochs a resume would skip: Keras's BackupAndRestore metadata (its previous copy when a kill cut it short)."""
    for name in ("training_metadata.json", "training_metadata.json.bkp"):
        try:
            return json.loads((backup_dir / name).read_text())["epoch"]
        except (OSError, ValueError, KeyError):
            continue
    return 0


def test_a_killed_training_loses_at_most_checkpoint_seconds_and_resumes_in_the_same_mlflow_run(tmp_path: Path) -> None:
    """Backups by time (train.checkpoint_seconds): killed with two finished epochs not backed up, the training had
    lost at most checkpoint_seconds, and no two backups were further apart; the resume trains from the last backup,
    repeating no backed-up epoch, in the same MLflow run, where every backed-up epoch is logged once.

    Fails with a backup every epoch (two unsaved epochs never appear: never killed), or with backups only at the end
    (none to resume from)."""
    epochs, seconds = 30, 2.5
    train = {  # epochs of about 0.3 s: several of them between two backups
        **TINY["train"],
        "epochs": epochs,
        "batch_size": 128,
        "checkpoint_seconds": seconds,
        "early_stopping_patience": epochs,
    }
    workspace = make_workspace(tmp_path / "workspace", {**TINY, "train": train})
    for name in ("ingest", "clean", "augment", "normalize"):
        sh(workspace, sys.executable, "-m", f"tasks.{name}")
    checkpoints = workspace / "models/checkpoints"
    backups: list[tuple[int, float]] = []  # (epochs backed up, when the poll saw it)

    def history_rows() -> int:
        return max((len(f.read_text().splitlines()) - 1 for f in checkpoints.glob("*.history.csv")), default=0)

    def two_epochs_unsaved() -> bool:
        known = backups[-1][0] if backups else 0  # a backup being rewritten may read as none
        backed_up = max([known, *(finished_epochs(d) for d in checkpoints.glob("*") if d.is_dir())])
        if backed_up != known:
            backups.append((backed_up, time.monotonic()))
        return len(backups) >= 2 and history_rows() >= backed_up + 2

    assert kill_when(stage(workspace, "train"), two_epochs_unsaved), "training finished before it could be killed"
    killed_at = time.monotonic()
    finished = max(finished_epochs(d) for d in checkpoints.glob("*") if d.is_dir())
    apart = np.diff([at for _, at in backups] + [killed_at])  # training a kill at each moment would have lost
    assert max(apart) <= 1.5 * seconds, (backups, killed_at)  # checkpoint_seconds, give or take an epoch's jitter
    first_run = json.loads((workspace / "models/mlflow_run.json").read_text())["run_id"]
    assert not (workspace / "models/model.keras").exists()

    resumed = sh(workspace, sys.executable, "-m", "tasks.train")
    assert f"resuming MLflow run {first_run}" in resumed.stdout  # progress is on stdout, warnings and errors on stderr
    # Keras prints "Epoch k/N" for each epoch it trains: the resumed process trains only the epochs not backed up.
    trained = [int(m) for m in re.findall(rf"^Epoch (\d+)/{epochs}$", resumed.stdout, re.M)]
    assert finished >= 2 and trained == list(range(finished + 1, epochs + 1)), (finished, trained)
    rows = (workspace / "reports/train/history.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(epochs))
    assert json.loads((workspace / "models/mlflow_run.json").read_text())["run_id"] == first_run
    history = MlflowClient(f"sqlite:///{workspace}/mlflow.db").get_metric_history(first_run, "loss")
    steps = sorted(m.step for m in history)
    assert sorted(set(steps)) == list(range(epochs))  # every epoch logged: none lost
    assert [s for s in steps if s < finished] == list(range(finished))  # each backed-up epoch once, never repeated
    latest = {m.step: m.value for m in sorted(history, key=lambda m: m.timestamp)}  # a repeated epoch: the resumed's
    losses = [float(row["loss"]) for row in csv.DictReader(rows)]
    assert [latest[e] for e in range(epochs)] == pytest.approx(losses, rel=1e-6)
    assert (workspace / "models/model.keras").is_file()
    assert not list(checkpoints.iterdir())  # the checkpoint is gone once training finished


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, tiny_run: Path) -> Path:
    """A finished run (v1 the champion), retrained and evaluated with one epoch: `dvc repro deploy` runs deploy only,
    on a new model (an identical one would be neither served nor registered)."""
    workspace = copy_run(tiny_run, tmp_path_factory.mktemp("serving").resolve() / "workspace")
    set_params(workspace, "train", epochs=1)
    sh(workspace, "dvc", "repro", "evaluate")
    return workspace


def scoring_server_port(workspace: Path) -> int | None:
    """The port deploy's scoring server (its uvicorn, started under this workspace's `dvc repro`) listens on."""
    for process in workspace_processes(workspace):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if "mlflow.pyfunc.scoring_server" in " ".join(process.cmdline()):
                listening = [c.laddr.port for c in process.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
                if listening:
                    return listening[0]
    return None


def answers(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def alive(processes: list[psutil.Process]) -> list[str]:
    left = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{process.pid}: {' '.join(process.cmdline())[:200]}")
    return left


# `dvc repro deploy` as a user runs it, and as the training flow's task runs it (flows/dvc_repo.py, in its own process);
# killed alone, as `kill -9 PID` does, or with its process group (`kill -9 -PGID`: dvc and the stage, not the server)
FLOW_TASK = (
    "from pathlib import Path; from flows import dvc_repo; "
    "dvc_repo.repro(Path(), 'deploy', single_item=True, line=lambda text: None)"
)
KILLED = {
    "dvc repro": (["dvc", "repro", "deploy"], False),
    "dvc repro's process group": (["dvc", "repro", "deploy"], True),
    "flow task": ([sys.executable, "-c", FLOW_TASK], False),
}


@pytest.mark.parametrize(("command", "group"), KILLED.values(), ids=KILLED.keys())
def test_kill_9_while_deploy_serves_its_check_leaves_no_process(
    evaluated: Path, command: list[str], group: bool
) -> None:
    workspace = evaluated
    killed = subprocess.Popen(
        command,
        cwd=workspace,
        env=tool_env(PYTHONPATH=str(workspace), SHELL="/bin/sh"),  # dash, which stays between DVC and the stage
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, as a shell's job
    )
    port = None

    def serving() -> bool:
        nonlocal port
        port = scoring_server_port(workspace)
        if port is None:
            time.sleep(0.2)  # a scan reads every process's environment: not in a tight loop
        return port is not None

    assert kill_when(killed, serving, timeout=600, group=group), "deploy finished before its server was seen"
    deadline = time.monotonic() + 10
    while (alive(workspace_processes(workspace)) or answers(port)) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = alive(workspace_processes(workspace))
    assert left == [] and not answers(port), (port, left)
    # DVC's lock names the killed `dvc repro`: the next one waits while that pid exists, even as a zombie that the
    # machine's init has not reaped yet (seen in CI), so the next case starts once it is gone
    lock = workspace / ".dvc/tmp/rwlock"
    pids = {int(p) for p in re.findall(r'"pid": (\d+)', lock.read_text())} if lock.exists() else set()
    wait_for("the killed processes to be reaped", lambda: not any(map(psutil.pid_exists, pids)), timeout=60, every=0.2)
    # nothing went on after the kill: no model was registered (v1 is the finished run's), no deploy report written
    uri = f"sqlite:///{workspace}/mlflow.db"
    assert [v.version for v in MlflowClient(uri, registry_uri=uri).search_model_versions()] == [1]
    assert not (workspace / "reports/deploy.json").exists()
