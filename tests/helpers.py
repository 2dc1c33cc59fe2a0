"""Helpers for tests that run the real tools on a throw-away copy of this repo."""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import psutil
import pytest
import yaml

from tasks.lib.config import Params, load_params

REPO = Path(__file__).resolve().parents[1]
STAGES = tuple(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])  # dvc.yaml: the one list
# Small enough to train in seconds on digits, big enough to learn something.
TINY: dict[str, dict[str, Any]] = {
    "train": {"epochs": 2, "filters": [8, 16], "dense_units": 32, "batch_size": 32, "learning_rate": 0.005},
    "augment": {"copies": 1},
    "deploy": {"check_samples": 16, "min_metric": 0.5},  # a tiny model is good enough to become champion
    "audit": {"folds": 2, "epochs": 1},
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


def needs(present: bool, what: str) -> None:
    """Skip a test that lacks ``what`` locally; under ``CI=true`` fail instead, naming it (CI never skips silently)."""
    if present:
        return
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"CI=true and this test needs {what}, which is missing (.ci/run provides it)")
    pytest.skip(f"needs {what}")


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


def workspace_processes(folder: Path) -> list[psutil.Process]:
    """Processes (other than this one) of ``folder``: working in it, naming it on their command line, holding one of
    its files open, or started for it (``DVC_ROOT``, which `dvc repro` passes to every descendant, or
    ``TRAINFLOW_WORKSPACE``, which marks a server the pipeline starts). A process that `chdir`s away is still found."""
    found = []
    for process in psutil.process_iter(["pid", "cwd", "cmdline", "status"]):
        if process.info["pid"] == os.getpid() or process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            env = process.environ()
            files = [f.path for f in process.open_files()]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        places = [process.info["cwd"] or "/", *files]
        if (
            any(Path(place).is_relative_to(folder) for place in places)
            or str(folder) in " ".join(process.info["cmdline"] or [])
            or str(folder) in (env.get("DVC_ROOT"), env.get("TRAINFLOW_WORKSPACE"))
        ):
            found.append(process)
    return found


def processes_in(folder: Path) -> list[str]:
    """The command lines of :func:`workspace_processes`: `[]` after a command means it left nothing running."""
    described = []
    for process in workspace_processes(folder):
        with contextlib.suppress(psutil.NoSuchProcess):
            described.append(f"{process.pid}: {' '.join(process.cmdline())[:300]}")
    return described


def tool_env(**extra: str) -> dict[str, str]:
    """PATH with this interpreter's bin first, so `python -m tasks.x` in dvc.yaml runs in this environment."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("MLFLOW_REGISTRY_URI", None)  # exported by mlflow.set_registry_uri in an earlier in-process test
    env.update(extra)
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


def committed_tree(to: Path, repo: Path = REPO) -> Path:
    """The files of ``repo``'s last commit (``git archive HEAD``) at ``to``: never the working copy's edits, such as
    the values `dvc exp run -S` leaves in params.yaml."""
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=repo, capture_output=True, check=True)
    to.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(to, filter="data")
    return to


def committed_params_file(repo: Path = REPO) -> Path:
    """``repo``'s params.yaml as committed, in a temporary file of this test session (one per repo)."""
    if repo not in _COMMITTED_PARAMS:
        text = subprocess.run(
            ["git", "show", "HEAD:params.yaml"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout
        folder = Path(tempfile.mkdtemp(prefix="trainflow-params-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        (folder / "params.yaml").write_text(text)
        _COMMITTED_PARAMS[repo] = folder / "params.yaml"
    return _COMMITTED_PARAMS[repo]


_COMMITTED_PARAMS: dict[Path, Path] = {}


def committed_params(repo: Path = REPO) -> Params:
    """The default config: ``repo``'s committed params.yaml, loaded and checked as a stage loads it."""
    return load_params(committed_params_file(repo))


def make_workspace(root: Path, overrides: dict[str, dict[str, Any]], repo: Path = REPO) -> Path:
    """A fresh git repo at ``root`` holding ``repo``'s committed files (:func:`committed_tree`), with params
    sections overridden. Uncommitted edits are left out, so commit what a test of the pipeline should run."""
    committed_tree(root, repo)
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


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module: benchmarks/ is a folder of scripts, not a package, so each is loaded
    under a name of its own (``benchmarks_<name>``)."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", REPO / "benchmarks" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


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
    # no job runner (two huey consumer processes MLflow starts for its UI's jobs): the pipeline queues no job
    env = tool_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    with background_server(root, args, f"http://127.0.0.1:{port}/health", env):
        yield f"http://127.0.0.1:{port}"


CHROMIUM = next(
    (found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))), None
)


def in_chromium(html: str, folder: Path, probe: str) -> dict[str, Any]:
    """Load a page in headless Chromium with every request to the network sent to a dead proxy; the probe's result.

    ``probe`` is a <script> appended to a test copy of the page: it writes its JSON result into a
    ``<pre id="probe">`` for --dump-dom.
    """
    needs(CHROMIUM is not None, "Chromium (the Debian package chromium)")
    page = folder / "page.html"
    head, body_end, tail = html.rpartition("</body>")  # the last: inlined JavaScript may hold the string too
    page.write_text(head + probe + body_end + tail, encoding="utf-8")
    args = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--proxy-server=127.0.0.1:9",  # the discard port: nothing listens there, so nothing can load
        "--proxy-bypass-list=<-loopback>",
        f"--user-data-dir={folder / 'profile'}",
        "--virtual-time-budget=3000",
        "--dump-dom",
        page.as_uri(),
    ]
    browser = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True, text=True
    )
    try:
        dom, _ = browser.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(browser.pid, signal.SIGKILL)  # its zygote and renderers too
        browser.wait()
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, f"the probe did not run; Chromium printed: {dom[-1000:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<"))
