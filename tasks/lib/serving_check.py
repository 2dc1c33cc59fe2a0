"""The registered model as users serve it: `mlflow models serve` on a free loopback port, asked for predictions.

deploy starts :func:`serving` first and scores the champion while the server comes up; before any alias moves, the
logged model must load in MLflow's own scoring server, answer the test images as evaluate scored them, and answer
one image fast enough to report. The server is a child of this
process, in its own process group, and is stopped (the group, workers included) whatever happens. It dies with this
process even under SIGKILL (a parent-death signal: :mod:`tasks.lib.lifetime`; MLflow sets one for its uvicorn), and
it carries this workspace and this process in its environment, so the next check stops any server a killed run of
this workspace left behind (:func:`stop_leftovers`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tasks.lib.errors import TrainflowError
from tasks.lib.lifetime import dies_with_this_process, owned_by_this_process, stop_leftovers

LATENCY_REQUESTS = 20  # one-image requests timed after the accuracy check
# Its processes: `python -m mlflow models serve ...`, then `uvicorn ... mlflow.pyfunc.scoring_server.app:app`
SERVER_COMMANDS = ("mlflow models serve", "mlflow.pyfunc.scoring_server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, images: np.ndarray, timeout: float) -> list[dict[str, Any]]:
    body = json.dumps({"inputs": images.tolist()}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())["predictions"]


def compare(expected: np.ndarray, served: np.ndarray, tolerance: float) -> dict[str, Any]:
    """How far the served model's probabilities are from evaluate's, and whether the classes agree."""
    if expected.shape != served.shape:
        raise TrainflowError(f"serving check: served output shape {served.shape} != expected {expected.shape}")
    diff = float(np.abs(expected - served).max()) if expected.size else 0.0
    agree = bool((expected.argmax(axis=1) == served.argmax(axis=1)).all())
    return {"checked": len(expected), "max_abs_diff": diff, "classes_agree": agree, "ok": agree and diff <= tolerance}


def check(
    model_uri: str, tracking_uri: str, images: np.ndarray, expected: np.ndarray, tolerance: float, timeout: float
) -> dict[str, Any]:
    """Serve ``model_uri``, compare its answers for ``images`` with ``expected``, time one-image requests
    (:func:`serving`, then its check at once)."""
    with serving(model_uri, tracking_uri, timeout) as served:
        return served(images, expected, tolerance)


@contextlib.contextmanager
def serving(model_uri: str, tracking_uri: str, timeout: float) -> Iterator[Callable[..., dict[str, Any]]]:
    """Start serving ``model_uri`` now; yields ``check(images, expected, tolerance)``, which waits for the server to
    answer, compares its answers for ``images`` with ``expected`` and times one-image requests. Whatever runs inside
    the ``with`` (deploy scores the champion) runs while the server comes up; the server stops when it ends.

    ``check`` returns :func:`compare`'s report plus ``latency_ms`` (p50, p95 of one-image requests), ``startup_s``
    (from the start to the first answer) and ``waited_s`` (what ``check`` waited of it).

    Raises:
        TrainflowError: the server did not answer within ``timeout`` seconds of its start (with its last log line),
            or answered with an error.
    """
    workspace = str(Path.cwd().resolve())
    stop_leftovers(workspace, SERVER_COMMANDS, "serving check")
    port = _free_port()
    # MLflow starts its server as `uvicorn` from PATH: this interpreter's scripts first, also when not activated
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PATH": path,
        **owned_by_this_process(workspace),
    }
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "--workers",  # one uvicorn process, whatever MLFLOW_MODELS_WORKERS says: no worker without a death signal
        "1",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        server = subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=dies_with_this_process(),  # one prctl call in the child
        )

        def served(images: np.ndarray, expected: np.ndarray, tolerance: float) -> dict[str, Any]:
            asked = time.perf_counter()
            try:
                _wait_ready(f"http://127.0.0.1:{port}/ping", server, log, started + timeout)
            except TrainflowError as exc:
                raise TrainflowError(
                    f"{model_uri}: the served model does not load: {exc}; nothing was registered and no alias moved"
                ) from None
            ready = time.perf_counter()
            url = f"http://127.0.0.1:{port}/invocations"
            try:
                answers = np.asarray([row["probabilities"] for row in _post(url, images, timeout)], dtype=np.float32)
                report = compare(expected, answers, tolerance)
                times = []
                for i in range(min(LATENCY_REQUESTS, len(images))):
                    begun = time.perf_counter()
                    _post(url, images[i : i + 1], timeout)
                    times.append((time.perf_counter() - begun) * 1000)
            except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
                raise TrainflowError(f"{model_uri}: the scoring server answered with an error ({exc})") from None
            p50, p95 = np.percentile(times, [50, 95]) if times else (float("nan"), float("nan"))
            return {
                **report,
                "startup_s": round(ready - started, 2),
                "waited_s": round(ready - asked, 2),
                "latency_ms": {"p50": round(float(p50), 2), "p95": round(float(p95), 2)},
            }

        try:
            yield served
        finally:
            _stop(server)


def _wait_ready(url: str, server: subprocess.Popen[bytes], log: Any, deadline: float) -> None:
    while time.perf_counter() < deadline:
        if server.poll() is not None:
            raise TrainflowError(f"the scoring server exited with code {server.returncode} ({_last_line(log)})")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TrainflowError(f"the scoring server did not answer {url} in time ({_last_line(log)})")


def _last_line(log: Any) -> str:
    log.seek(0)
    lines = [line for line in log.read().decode(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def _stop(server: subprocess.Popen[bytes]) -> None:
    """The server and every worker it started (its process group): SIGTERM, then SIGKILL after 10 s."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)  # workers that outlived their parent
