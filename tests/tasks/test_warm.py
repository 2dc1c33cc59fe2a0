"""tasks/warm.py: a stage run through the warm server behaves as the process it stands in for."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks import warm
from tests.helpers import TINY, make_workspace, sh, tool_env

# A stand-in stage: hands itself to the warm server like tasks/cli.py does, then reports what it sees.
PROBE = """
import json, os, sys, time
from tasks import warm

if __name__ == "__main__":
    if warm.enabled():
        code = warm.delegate(os.environ.get("PROBE_PROFILE", "data"))
        if code is not None:
            sys.exit(code)
    what = sys.argv[1]
    if what == "report":
        print(json.dumps({
            "version": VERSION,
            "pid": os.getpid(),
            "cwd": os.getcwd(),
            "argv": sys.argv[1:],
            "env": os.environ.get("PROBE_VALUE"),
            "stdin": sys.stdin.read(),
            "umask": os.umask(0),
            "tensorflow": "tensorflow" in sys.modules,
            "great_expectations": "great_expectations" in sys.modules,
            "warm_child": warm.CHILD in os.environ,
        }))
        print("to stderr", file=sys.stderr)
    elif what == "sleep":
        print(os.getpid(), flush=True)
        time.sleep(60)
    elif what == "exit":
        sys.exit(int(sys.argv[2]))
    elif what == "raise":
        raise RuntimeError("boom")
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = make_workspace(tmp_path_factory.mktemp("warm"), TINY)
    write_probe(root, version=1)
    env = tool_env()
    done = subprocess.run(
        [sys.executable, "-c", "from tasks import warm; import sys; sys.exit(0 if warm.wait_ready('data') else 1)"],
        cwd=root,
        env=env,
        check=False,
    )
    assert done.returncode == 0, "the data server did not become ready"
    yield root


def write_probe(root: Path, version: int) -> None:
    (root / "tasks" / "probe.py").write_text(PROBE.replace("VERSION", str(version)))


def probe(root: Path, *args: str, stdin: str = "", umask: int = 0o022, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tasks.probe", *args],
        cwd=root,
        umask=umask,
        env=tool_env(**env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_child_sees_the_callers_world(workspace: Path) -> None:
    done = probe(workspace, "report", "--flag", stdin="pixels", umask=0o027, PROBE_VALUE="42")
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["warm_child"], "the probe did not run in a warm child"
    assert seen["cwd"] == str(workspace)
    assert seen["argv"] == ["report", "--flag"]
    assert seen["env"] == "42"
    assert seen["stdin"] == "pixels"
    assert seen["umask"] == 0o027
    assert done.stderr.strip() == "to stderr"
    # the data server preloads Great Expectations, never TensorFlow
    assert seen["great_expectations"] and not seen["tensorflow"]


def test_turned_off_it_runs_in_the_calling_process(workspace: Path) -> None:
    done = probe(workspace, "report", TRAINFLOW_WARM="0")
    seen = json.loads(done.stdout)
    assert not seen["warm_child"] and not seen["great_expectations"]


def test_a_code_change_is_seen_at_once(workspace: Path) -> None:
    assert json.loads(probe(workspace, "report").stdout)["version"] == 1
    write_probe(workspace, version=2)
    try:
        assert json.loads(probe(workspace, "report").stdout)["version"] == 2
    finally:
        write_probe(workspace, version=1)


@pytest.mark.parametrize("code", [0, 1, 3])
def test_exit_codes_pass_through(workspace: Path, code: int) -> None:
    assert probe(workspace, "exit", str(code)).returncode == code


def test_an_exception_is_a_traceback_and_exit_1(workspace: Path) -> None:
    done = probe(workspace, "raise")
    assert done.returncode == 1
    assert "RuntimeError: boom" in done.stderr and "Traceback" in done.stderr


def sleeping_probe(root: Path) -> tuple[subprocess.Popen[str], int]:
    caller = subprocess.Popen(
        [sys.executable, "-m", "tasks.probe", "sleep"], cwd=root, env=tool_env(), stdout=subprocess.PIPE, text=True
    )
    assert caller.stdout is not None
    child = int(caller.stdout.readline())
    assert child != caller.pid
    return caller, child


def gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_killing_the_caller_kills_the_child(workspace: Path) -> None:
    caller, child = sleeping_probe(workspace)
    caller.send_signal(signal.SIGKILL)
    caller.wait(timeout=10)
    assert gone(child), "the warm child outlived its SIGKILLed caller"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_are_forwarded(workspace: Path, signum: int) -> None:
    caller, child = sleeping_probe(workspace)
    caller.send_signal(signum)
    code = caller.wait(timeout=10)
    assert gone(child)
    # as without warm start: SIGTERM kills, SIGINT is a KeyboardInterrupt (exit 130)
    assert code == (-signal.SIGTERM if signum == signal.SIGTERM else 130)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_stage_gives_the_same_bytes_warm_and_cold(workspace: Path) -> None:
    sh(workspace, sys.executable, "-m", "tasks.ingest", TRAINFLOW_WARM="0")
    sh(workspace, sys.executable, "-m", "tasks.clean", TRAINFLOW_WARM="0")
    cold = tree(workspace / "data/clean")
    done = sh(workspace, sys.executable, "-m", "tasks.clean")
    assert "clean: removed" in done.stderr  # the stage's own log line, through the caller's stderr
    assert tree(workspace / "data/clean") == cold and "manifest.json" in cold


def test_the_key_covers_the_import_time_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    base = warm.server_key("model")
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert warm.server_key("model") != base
    jax = warm.server_key("model")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")  # read when used, not at import
    assert warm.server_key("model") == jax
    assert warm.server_key("data") != warm.server_key("model")


def test_a_server_starts_the_next_for_the_environment_it_started_with(monkeypatch: pytest.MonkeyPatch) -> None:
    # A server starts the next profile's after its imports; importing Keras sets TF_CPP_MIN_LOG_LEVEL, and a server
    # keyed on that would match no caller (each first run started every server twice).
    started: list[dict] = []
    monkeypatch.setattr(warm, "_is_locked", lambda lock: False)
    monkeypatch.setattr(warm.subprocess, "Popen", lambda *args, **kwargs: started.append(kwargs))
    callers = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")  # what the model server's imports left behind
    warm.start_servers(callers)
    (kwargs,) = started
    assert kwargs["env"] == callers
    assert Path(kwargs["stderr"].name) == warm._socket_path("data", callers).with_suffix(".log")
    kwargs["stderr"].close()
    assert warm.server_key("data", callers) != warm.server_key("data")


def record_starts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The profiles warm.start_servers starts, in order, instead of starting them."""
    started: list[str] = []

    def popen(args: list[str], **kwargs: Any) -> None:
        started.append(args[-1])
        kwargs["stderr"].close()

    monkeypatch.setattr(warm.subprocess, "Popen", popen)
    return started


@pytest.mark.parametrize("cores", [1, 2])
def test_a_first_caller_starts_its_own_server_and_the_next(monkeypatch: pytest.MonkeyPatch, cores: int) -> None:
    started = record_starts(monkeypatch)
    monkeypatch.setattr(warm, "_is_locked", lambda lock: False)
    monkeypatch.setattr(warm.os, "cpu_count", lambda: cores)
    warm.start_servers(first="data")  # `dvc repro` with no server running
    assert started == ["data", "model"][:cores]  # its own, and the next on the core that would idle meanwhile
    started.clear()
    warm.start_servers(first="model")  # `dvc exp run`: train, evaluate, deploy
    assert started == ["model", "serving"][:cores]


def test_a_ready_server_leaves_the_next_to_one_still_importing(monkeypatch: pytest.MonkeyPatch) -> None:
    started = record_starts(monkeypatch)
    monkeypatch.setattr(warm, "_is_locked", lambda lock: not lock.name.startswith("serving"))
    monkeypatch.setattr(warm, "_importing", lambda lock: lock.name.startswith("model"))
    warm.start_servers()  # the data server, its first stage done while the model server imports: no third import
    assert started == []
    monkeypatch.setattr(warm, "_importing", lambda lock: False)
    warm.start_servers()  # the model server after train: deploy's serving check is next
    assert started == ["serving"]
