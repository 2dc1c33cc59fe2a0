"""Warm start for stage processes: a fork server that has already imported the heavy libraries.

A stage process (`python -m tasks <stage>`) spends seconds before any work: importing Great Expectations (~2 s),
TensorFlow and Keras (~3 s), MLflow (~1 s). The first stage process that finds no server starts its own kind's in the
background (and the next kind's, see start_servers) and queues on it while it imports; later stage processes hand
their module, arguments, working directory, environment, umask and stdin/stdout/stderr to the server, which forks a
child that runs the stage exactly as ``python -m`` would.

What keeps it honest:
- only third-party libraries are preloaded; every child imports the project's own modules afresh from the caller's
  working tree, so a code change is always seen;
- a server serves only callers whose interpreter, site-packages and import-time environment (KERAS_BACKEND, TF_*,
  CUDA_*, …) are the same as its own, and this file's own text: anything else gets its own server;
- the caller remains the process DVC (or the user) sees: it forwards SIGINT/SIGTERM/SIGHUP to the child's process
  group and exits with the child's exit status (or dies of the same signal); a child kills itself and everything it
  started as soon as its caller dies, even of SIGKILL;
- the socket lives in a 0700 directory of the user's and the server checks the peer's uid.

``TRAINFLOW_WARM=0`` turns it off; ``TRAINFLOW_WARM_IDLE`` sets how long an idle server stays (seconds, 900);
``python -m tasks.warm status|stop`` lists or stops this user's servers.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

# What each kind of stage imports before doing anything; a child never imports what its server did not preload.
CONFIG = ("yaml", "pydantic.main", "pydantic.types", "pydantic.functional_validators")  # tasks/config.py's (~45 ms)
PROFILES: dict[str, tuple[str, ...]] = {
    "data": (*CONFIG, "numpy", "pandas", "scipy.stats", "sklearn.model_selection", "great_expectations"),
    "model": (
        *CONFIG,
        "numpy",
        "pandas",
        "scipy.stats",
        "sklearn.metrics",
        "great_expectations",
        "keras",
        "mlflow",
        "mlflow.pyfunc",
        "matplotlib",
    ),
    "serving": ("numpy", "tensorflow"),  # deploy's check of the export: TensorFlow and nothing else
}
# Which profile each stage's process needs (`python -m tasks <stage>` looks it up before importing anything).
STAGES: dict[str, str] = {
    "ingest": "data",
    "clean": "data",
    "augment": "data",
    "normalize": "data",
    "train": "model",
    "evaluate": "model",
    "deploy": "model",
}
# Variables read when those libraries are imported (or that change what an import does): part of a server's key.
IMPORT_TIME_ENV = ("KERAS_", "TF_", "CUDA_", "XLA_", "JAX_", "PYTHON", "LD_", "OMP_", "MKL_", "MPL", "GX_", "HOME")
ENABLE, IDLE, CHILD = "TRAINFLOW_WARM", "TRAINFLOW_WARM_IDLE", "TRAINFLOW_WARM_CHILD"
_HEADER = struct.Struct("!I")
STARTUP_WAIT = 10.0  # seconds a first caller waits for the server it started to bind its socket


def enabled() -> bool:
    """Warm start is on unless TRAINFLOW_WARM=0, and never inside a warm child itself."""
    return os.environ.get(ENABLE, "1") != "0" and CHILD not in os.environ and hasattr(os, "pidfd_open")


def state_dir() -> Path:
    """This user's socket folder (0700), or an error if someone else owns it."""
    path = Path(tempfile.gettempdir()) / f"trainflow-warm-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"{path}: not a private folder of this user")
    return path


def server_key(profile: str, environ: Mapping[str, str] | None = None) -> str:
    """What a server must share with a caller: interpreter, installed packages, import-time environment, this code."""
    environ = os.environ if environ is None else environ
    site = [sysconfig.get_paths()[name] for name in ("purelib", "platlib")]
    facts = {
        "python": [sys.executable, sys.version, repr(sys.flags)],
        "site": {path: os.stat(path).st_mtime_ns for path in sorted(set(site)) if os.path.isdir(path)},
        "env": sorted((k, v) for k, v in environ.items() if k.startswith(IMPORT_TIME_ENV)),
        "profile": [profile, *PROFILES[profile]],
        "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:20]


def _socket_path(profile: str, environ: Mapping[str, str] | None = None) -> Path:
    return state_dir() / f"{profile}-{server_key(profile, environ)}.sock"


# --- the caller ---------------------------------------------------------------------------------------------------


def delegate(profile: str, module: str | None = None, args: list[str] | None = None) -> int | None:
    """Run ``python -m module args`` in a warm child; None when no server can (the caller runs it).

    The first caller of a session starts the servers and queues on its own while that server imports.

    Args:
        profile: the server's library set (PROFILES).
        module, args: what the child runs (default: this process's own ``python -m`` module and arguments).

    Returns:
        The child's exit code. A child that died of a signal makes this process die of the same signal.
    """
    if module is None:
        module = getattr(getattr(sys.modules["__main__"], "__spec__", None), "name", None)
    args = sys.argv[1:] if args is None else args
    if not module:
        return None
    try:
        path = _socket_path(profile)
    except OSError:
        return None
    conn = _connect(path)
    if conn is None:  # none running: start them, and queue on ours rather than import the same libraries twice
        with contextlib.suppress(OSError):
            start_servers(first=profile)
        conn = _connect(path, wait=STARTUP_WAIT)
    if conn is None:
        return None
    with conn:
        request = {
            "module": module,
            "args": args,
            "cwd": os.getcwd(),
            "path0": sys.path[0],
            "env": dict(os.environ),
            "umask": _umask(),
        }
        payload = json.dumps(request).encode()
        try:
            socket.send_fds(conn, [_HEADER.pack(len(payload))], [0, 1, 2])
            conn.sendall(payload)
        except OSError:
            return None  # the server went away: nothing was started
        return _wait(conn)


def _connect(path: Path, wait: float = 0.0) -> socket.socket | None:
    """A connection to the server at ``path``, retried for ``wait`` seconds while it binds; None if there is none."""
    deadline = time.monotonic() + wait
    while True:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(str(path))
            return conn
        except OSError:
            conn.close()
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _wait(conn: socket.socket) -> int | None:
    """Forward signals to the child's process group until the server reports its exit status."""
    stream = conn.makefile("r")
    first = stream.readline().split()
    if first[:1] != ["pid"]:
        return None  # the server hung up before starting anything (see its log): the caller runs the stage itself
    child = int(first[1])

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child, signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, forward)
    last = stream.readline().split()
    if last[:1] != ["exit"]:
        print("error: warm start: lost the stage process (server gone); rerun with TRAINFLOW_WARM=0", file=sys.stderr)
        return 1
    code = int(last[1])
    if code < 0:  # died of a signal: so does this process, as the caller would see without warm start
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


def start_servers(environ: Mapping[str, str] | None = None, first: str | None = None) -> None:
    """Start, in the background, servers for profiles that have none running.

    A caller that found no server (``first``: its own profile) starts that one and, on more than one core, the next
    missing one after it in PROFILES order: it waits for its own, so a second core would idle. A server whose first
    stage has finished (``first`` None) starts the next missing one, unless another server is still importing and
    will do it when done. So the imports never compete with a running stage for more than a core, and come in the
    order the pipeline needs them: data and model together, deploy's serving check once training is over (importing
    TensorFlow next to `model.fit` slowed it by ~20 % on 2 cores); train and serving together for `dvc exp run`.

    Args:
        environ: the environment the servers are for (default: this process's). A server passes the one it started
            with: importing Keras sets TF_CPP_MIN_LOG_LEVEL, and a key made after that would match no caller.
        first: the caller's profile.
    """
    environ = dict(os.environ if environ is None else environ)
    locks = {profile: _socket_path(profile, environ).with_suffix(".lock") for profile in PROFILES}
    missing = [profile for profile, lock in locks.items() if not _is_locked(lock)]
    if first is None:
        if any(_importing(lock) for lock in locks.values()):
            return
        start = missing[:1]
    else:
        order = list(PROFILES)
        later = [profile for profile in missing if order.index(profile) > order.index(first)]
        start = [first] * (first in missing) + later[: 1 if (os.cpu_count() or 1) > 1 else 0]
    for profile in start:
        subprocess.Popen(
            [sys.executable, "-m", "tasks.warm", "serve", profile],
            cwd=Path(__file__).resolve().parents[1],
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=locks[profile].with_suffix(".log").open("ab"),
            start_new_session=True,
            close_fds=True,
        )


def _importing(lock: Path) -> bool:
    """A server holds ``lock`` and has not finished its imports."""
    return _is_locked(lock) and not _imported(lock)


def _imported(lock: Path) -> bool:
    """The server that wrote ``lock`` has finished its imports (serve() appends "ready")."""
    return lock.read_text().endswith("ready\n")


def _is_locked(lock: Path) -> bool:
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


# --- the server ---------------------------------------------------------------------------------------------------


def serve(profile: str, idle_seconds: float) -> None:
    """Bind, preload the profile's libraries, then fork one child per request until idle for ``idle_seconds``."""
    path = _socket_path(profile)
    lock = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    for attempt in range(10):  # a caller's _is_locked() holds it for an instant
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            time.sleep(0.05 * attempt)
    else:
        return  # another server of this key is running
    os.ftruncate(lock, 0)
    os.pwrite(lock, f"{os.getpid()} {profile} {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))  # callers queue in the backlog while the imports below run
    listener.listen(64)
    os.chdir("/")
    environ = dict(os.environ)  # as the callers have it: the imports below may add variables of their own
    for name in PROFILES[profile]:
        __import__(name)
    os.pwrite(lock, b"ready\n", os.fstat(lock).st_size)
    served = 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    children: dict[int, tuple[int, socket.socket]] = {}  # pidfd → (pid, connection)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    idle_since = time.monotonic()
    try:
        while children or time.monotonic() - idle_since < idle_seconds:
            for key, _ in selector.select(timeout=max(1.0, idle_seconds - (time.monotonic() - idle_since))):
                if key.fileobj is listener:
                    started = _accept(listener, selector, children)
                    if started is not None:
                        pidfd, pid, conn = started
                        children[pidfd] = (pid, conn)
                        selector.register(pidfd, selectors.EVENT_READ)
                else:
                    pidfd = key.fd
                    pid, conn = children.pop(pidfd)
                    selector.unregister(pidfd)
                    os.close(pidfd)
                    _, status = os.waitpid(pid, 0)
                    with contextlib.suppress(OSError):
                        conn.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
                    conn.close()
                    idle_since = time.monotonic()
                    served += 1
                    if served == 1:  # the next profile's, now that this one's first stage is done
                        with contextlib.suppress(OSError):
                            start_servers(environ)
    finally:
        path.unlink(missing_ok=True)
        os.close(lock)


def _accept(
    listener: socket.socket, selector: selectors.BaseSelector, children: dict[int, tuple[int, socket.socket]]
) -> tuple[int, int, socket.socket] | None:
    conn, _ = listener.accept()
    fds: list[int] = []
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        caller_pid, caller_uid, _ = struct.unpack("3i", creds)
        if caller_uid != os.getuid():
            raise PermissionError(f"caller uid {caller_uid}")
        conn.settimeout(10)
        header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
        (size,) = _HEADER.unpack(header)
        payload = b""
        while len(payload) < size:
            chunk = conn.recv(size - len(payload))
            if not chunk:
                raise ConnectionError("caller hung up")
            payload += chunk
        request = json.loads(payload)
        conn.settimeout(None)
    except (OSError, ValueError, struct.error) as exc:
        print(f"warm: refused a request: {exc}", file=sys.stderr)
        for fd in fds:
            os.close(fd)
        conn.close()
        return None
    pid = os.fork()
    if pid == 0:
        selector.close()
        listener.close()
        for _, other in children.values():
            other.close()
        _child(conn, fds, request, caller_pid)  # never returns
    for fd in fds:
        os.close(fd)
    conn.sendall(f"pid {pid}\n".encode())
    return os.pidfd_open(pid), pid, conn


def _child(conn: socket.socket, fds: list[int], request: dict, caller_pid: int) -> None:
    """Become the stage process the caller would have been, then exit with its status."""
    code = 1
    try:
        os.setsid()  # its own process group: the caller's signals and the watchdog reach whatever it starts
        for target, fd in zip((0, 1, 2), fds, strict=True):
            os.dup2(fd, target)
            os.close(fd)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _watch(caller_pid)
        os.chdir(request["cwd"])
        os.umask(request["umask"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ[CHILD] = "1"
        sys.stdin, sys.stdout, sys.stderr = (_std_stream(fd) for fd in (0, 1, 2))
        _fresh_state()
        sys.argv = ["-m", *request["args"]]
        sys.path[0] = request["path0"]
        code = _run_module(request["module"])
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        conn.close()
        os._exit(code)


def _watch(caller_pid: int) -> None:
    """Kill this child's process group as soon as the caller is gone, however it died."""
    pidfd = os.pidfd_open(caller_pid)

    def watchdog() -> None:
        poller = selectors.DefaultSelector()
        poller.register(pidfd, selectors.EVENT_READ)
        poller.select()
        os.killpg(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watchdog, name="trainflow-warm-watchdog", daemon=True).start()


def _std_stream(fd: int):
    import io

    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    if fd == 0:
        return io.TextIOWrapper(io.open(fd, "rb", closefd=False), line_buffering=False)  # noqa: UP020
    raw = io.open(fd, "wb", buffering=0 if unbuffered else -1, closefd=False)  # noqa: UP020, SIM115
    interactive = os.isatty(fd)
    return io.TextIOWrapper(
        raw,
        errors="backslashreplace" if fd == 2 else "strict",
        line_buffering=interactive or fd == 2,
        write_through=unbuffered or fd == 2,
    )


def _fresh_state() -> None:
    """What a new interpreter would not share with its siblings: the project's modules, random state, temp dir."""
    import random

    for name in [n for n in sys.modules if n == "tasks" or n.startswith("tasks.")]:
        del sys.modules[name]
    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    tempfile.tempdir = None


def _run_module(module: str) -> int:
    import atexit
    import runpy

    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        import traceback

        traceback.print_exc()
        code = 130
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    return code


# --- administration -----------------------------------------------------------------------------------------------


def servers() -> list[tuple[int, str]]:
    """(pid, description) of this user's running servers."""
    found = []
    for lock in sorted(state_dir().glob("*.lock")):
        if _is_locked(lock):
            text = " ".join(lock.read_text().split())
            found.append((int(text.split()[0]), f"{lock.stem}: {text}"))
    return found


def wait_ready(profile: str, timeout: float = 120.0) -> bool:
    """Start the servers if need be and wait until ``profile``'s has finished its imports."""
    lock = _socket_path(profile).with_suffix(".lock")
    deadline = time.monotonic() + timeout
    start_servers(first=profile)
    while time.monotonic() < deadline:
        if _is_locked(lock) and _imported(lock):
            return True
        time.sleep(0.1)
    return False


def stop_servers() -> int:
    """SIGTERM every running server of this user; how many there were."""
    running = servers()
    for pid, _ in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    return len(running)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "status"
    if command == "serve":
        serve(sys.argv[2], float(os.environ.get(IDLE, "900")))
    elif command == "stop":
        print(f"stopped {stop_servers()} warm server(s)")
    elif command == "status":
        for pid, what in servers():
            print(f"pid {pid}: {what}")
    else:
        sys.exit("usage: python -m tasks.warm [status|stop]")
