"""Helpers for tests that run the real tools on a throw-away copy of this repo."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = tuple(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])  # dvc.yaml: the one list
# Small enough to train in seconds on digits, big enough to learn something.
TINY: dict[str, dict[str, Any]] = {
    "train": {"epochs": 2, "filters": [8, 16], "dense_units": 32, "batch_size": 32, "learning_rate": 0.005},
    "augment": {"copies": 1},
    "deploy": {"check_samples": 16, "min_metric": 0.5},  # a tiny model is good enough to become champion
}


def readme_command(start: str) -> str:
    """The README's command line that starts with ``start`` (its comment removed): tests run what users copy."""
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith(start):
            return line.split("  #")[0].strip()
    raise AssertionError(f"README.md has no line starting {start!r}")


EXP_SHOW = readme_command("dvc exp show")


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def wait_for(what: str, check: object, timeout: float, every: float = 1.0) -> object:
    """Poll ``check()`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()  # type: ignore[operator]
        except Exception:  # not up yet
            result = None
        if result:
            return result
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def processes_in(folder: Path) -> list[str]:
    """Processes (other than this one) whose working directory is ``folder`` or below it."""
    found = []
    for process in psutil.process_iter(["pid", "cwd", "cmdline"]):
        cwd = process.info["cwd"]
        if process.info["pid"] != os.getpid() and cwd and Path(cwd).is_relative_to(folder):
            found.append(" ".join(process.info["cmdline"] or []))
    return found


def tool_env(**extra: str) -> dict[str, str]:
    """PATH with this interpreter's bin first, so `python -m tasks.x` in dvc.yaml runs in this environment."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "TF_CPP_MIN_LOG_LEVEL": "3", **extra}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def sh(cwd: Path, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a command in ``cwd``; with ``check`` a non-zero exit fails the test with the command's output."""
    done = subprocess.run(args, cwd=cwd, env=tool_env(**env), capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


_PEAK_RSS = (
    "import resource, subprocess, sys; code = subprocess.call(sys.argv[2:]); "
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(code)"
)


def sh_peak(cwd: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run a command like ``sh(check=False)``; also return its peak resident memory in MiB (Linux ru_maxrss)."""
    with tempfile.NamedTemporaryFile(suffix=".rss") as out:
        done = sh(cwd, sys.executable, "-c", _PEAK_RSS, out.name, *args, check=False)
        return done, int(Path(out.name).read_text() or 0) / 1024


def ran(dvc_output: str) -> list[str]:
    """The stages a `dvc repro` / `dvc exp run` output says it ran."""
    return [stage for stage in STAGES if f"Running stage '{stage}'" in dvc_output]


def make_workspace(root: Path, overrides: dict[str, dict[str, Any]]) -> Path:
    """Copy the repo's tracked and unignored files into a fresh git repo, with params sections overridden."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in overrides.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "dvc.lock").unlink(missing_ok=True)
    sh(root, "git", "init", "-q")
    sh(root, "git", "config", "user.email", "test@trainflow.invalid")
    sh(root, "git", "config", "user.name", "trainflow test")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "workspace")
    return root


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_json(url: str, payload: bytes, timeout: float = 60) -> tuple[int, dict[str, Any]]:
    """POST a JSON body; the status and the decoded answer, for 4xx/5xx too."""
    request = urllib.request.Request(url, data=payload, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@contextmanager
def background_server(cwd: Path, args: list[str], ready_url: str, env: dict[str, str]) -> Iterator[None]:
    """Run a server process until its ``ready_url`` answers (120 s at most); stop it and its workers afterwards."""
    server = subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:

        def answers() -> bool:
            if server.poll() is not None:
                pytest.fail(f"{' '.join(args)} exited {server.returncode}")
            urllib.request.urlopen(ready_url, timeout=2)
            return True

        wait_for(f"{' '.join(args)} to answer {ready_url}", answers, timeout=120)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have exited (and failed the test) already
            os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn/gunicorn workers
        server.wait(timeout=30)


@contextmanager
def mlflow_serve(workspace: Path, model_uri: str, tracking_uri: str) -> Iterator[str]:
    """A real `mlflow models serve` on a free loopback port; yields its /invocations URL, then stops it."""
    port = free_port()
    mlflow = str(Path(sys.executable).parent / "mlflow")
    args = [mlflow, "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    with background_server(
        workspace, args, f"http://127.0.0.1:{port}/ping", tool_env(MLFLOW_TRACKING_URI=tracking_uri)
    ):
        yield f"http://127.0.0.1:{port}/invocations"


@contextmanager
def mlflow_tracking_server(root: Path) -> Iterator[str]:
    """A real `mlflow server` (SQLite database backend, proxied artifacts under ``root``) on a free loopback port."""
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    args = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'server.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with background_server(root, args, f"http://127.0.0.1:{port}/health", tool_env()):
        yield f"http://127.0.0.1:{port}"
