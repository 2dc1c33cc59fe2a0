"""`python -m services.stack up|down|env|status`: the shared services of a team, on loopback, for trying and testing.

PostgreSQL (Debian's package) is the database of the MLflow tracking server (proxied artifact storage), of the
Prefect server and of the Optuna study; a Prefect process work pool has two workers; the DVC remote is an SSH remote
to a local `sshd` (Debian's package) with a key made for it. Everything the stack keeps is in one folder
(``.services/`` by default, git-ignored): the database, the keys, the remote's storage, the logs and what runs
(``state.json``). ``down`` stops all of it and checks that nothing it started is left.

The database's password is made at the first ``up`` and kept in ``pgpass`` (0600, libpq's password file): no URL
the stack prints, logs or passes on a command line holds it; clients find it through ``PGPASSFILE``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

DEFAULT_DIR = Path(".services")
USER = "trainflow"  # the database role every service uses
DATABASES = ("mlflow", "prefect", "optuna")
POOL = "trainflow"  # the Prefect work pool
WORKERS = 2
SERVICES = ("postgres", "sshd", "mlflow", "prefect", *(f"worker-{n}" for n in range(1, WORKERS + 1)))
HEARTBEAT_S = 30  # a flow run's heartbeat, from the workers (Prefect's minimum)
ZOMBIE_AFTER_S = 75  # no heartbeat for this long: the run is marked Crashed (its worker died)
ZOMBIES = "trainflow: crash flow runs whose worker died"
READY_TIMEOUT = 180.0  # seconds a service may take to answer (Prefect's first start migrates its database)


class StackError(Exception):
    """A service did not start, or something is left running: the message is the one line the user sees."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path:
    """The folder of PostgreSQL's server programs (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    if which := shutil.which("initdb"):
        return Path(which).parent
    raise StackError("PostgreSQL's server is not installed (Debian: apt-get install postgresql)")


def sshd_bin() -> Path:
    for candidate in ("/usr/sbin/sshd", shutil.which("sshd")):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    raise StackError("OpenSSH's server is not installed (Debian: apt-get install openssh-server)")


@dataclass
class Stack:
    """The services kept in ``folder``; ``home`` is whose ``~/.ssh/known_hosts`` learns the sshd's host key."""

    folder: Path = DEFAULT_DIR
    home: Path = field(default_factory=Path.home)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder).resolve()

    # ---- where things are -------------------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.folder / "state.json"

    @property
    def pgpass(self) -> Path:
        return self.folder / "pgpass"

    @property
    def logs(self) -> Path:
        return self.folder / "logs"

    @property
    def ssh(self) -> Path:
        return self.folder / "ssh"

    @property
    def remote_storage(self) -> Path:
        return self.folder / "dvc-remote"

    def state(self) -> dict[str, Any]:
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else {}

    def _save(self, state: Mapping[str, Any]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.state_file)

    def ports(self) -> dict[str, int]:
        return self.state()["ports"]

    # ---- what a user exports -------------------------------------------------------------------------------------
    def database_url(self, database: str, driver: str = "postgresql") -> str:
        """A database's URL, without the password (libpq and asyncpg read it from ``PGPASSFILE``)."""
        return f"{driver}://{USER}@127.0.0.1:{self.ports()['postgres']}/{database}"

    def remote_url(self) -> str:
        return f"ssh://{self.state()['ssh_user']}@127.0.0.1:{self.ports()['sshd']}{self.remote_storage}"

    def client_env(self) -> dict[str, str]:
        """The environment variables a machine of the team exports to use the services (no password in any)."""
        ports = self.ports()
        return {
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['mlflow']}",
            "PREFECT_API_URL": f"http://127.0.0.1:{ports['prefect']}/api",
            "PGPASSFILE": str(self.pgpass),
            "TRAINFLOW_REGISTRY_LOCK_URI": self.database_url("mlflow"),  # tasks/lib/registry.py: the champion's lock
        }

    def env_text(self) -> str:
        lines = [f"export {k}={shlex.quote(v)}" for k, v in self.client_env().items()]
        lines += [
            f"# params.yaml: tune.storage: {self.database_url('optuna')}",
            f"# dvc remote add -d shared {self.remote_url()}",
            f"# dvc remote modify --local shared keyfile {self.ssh / 'id_ed25519'}",
        ]
        return "\n".join(lines)

    # ---- up ---------------------------------------------------------------------------------------------------------
    def up(self) -> None:
        """Start every service that is not running (a stopped stack starts on its kept data and ports)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        state = self.state()
        if not state:
            state = {"ports": {name: free_port() for name in ("postgres", "sshd", "mlflow", "prefect")}, "pids": {}}
            state["ssh_user"] = psutil.Process().username()
            self._save(state)
        try:
            for name in SERVICES:
                self.start(name)
        except BaseException:
            with contextlib.suppress(StackError):  # the first error is the one to show
                self.down()
            raise

    def start(self, name: str) -> None:
        """Start one service (``postgres``, ``sshd``, ``mlflow``, ``prefect``, ``worker-N``) unless it runs."""
        if self.running(name):
            return
        getattr(self, f"_start_{name.split('-')[0]}")(name)

    def _start_postgres(self, name: str) -> None:
        state, bindir = self.state(), postgres_bin()
        data = self._postgres_data(state)
        port = state["ports"]["postgres"]
        if not (data / "PG_VERSION").exists():
            password = secrets.token_urlsafe(24)
            with tempfile.NamedTemporaryFile("w", dir=data.parent, delete=False) as pw:
                pw.write(password + "\n")
            _own(Path(pw.name))
            try:
                self._as_postgres(
                    [
                        str(bindir / "initdb"),
                        "-D",
                        str(data),
                        "-U",
                        USER,
                        f"--pwfile={pw.name}",
                        "-A",
                        "scram-sha-256",
                        "-E",
                        "UTF8",
                        "--no-instructions",
                    ],
                )
            finally:
                Path(pw.name).unlink()
            self.pgpass.touch(mode=0o600)
            self.pgpass.write_text(f"127.0.0.1:{port}:*:{USER}:{password}\n")
            os.chmod(self.pgpass, 0o600)
        log = data.parent / "postgres.log"
        options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories=''"  # TCP on loopback only
        self._as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start"])
        self._wait(name, lambda: self._sql("postgres", "SELECT 1"))
        existing = {row[0] for row in self._sql("postgres", "SELECT datname FROM pg_database")}
        for database in DATABASES:
            if database not in existing:
                self._sql("postgres", f"CREATE DATABASE {database}", autocommit=True)

    def _postgres_data(self, state: dict[str, Any]) -> Path:
        """The data folder. PostgreSQL refuses to run as root: then it runs as the ``postgres`` user, in a folder of
        its own under /var/tmp (the stack's folder may be in a home it cannot enter), linked from here."""
        link = self.folder / "postgres"
        if os.geteuid() != 0:
            (link / "data").mkdir(parents=True, exist_ok=True, mode=0o700)
            return link / "data"
        if link.is_symlink() and not link.exists():  # its folder was removed: start a new cluster
            link.unlink()
        if not link.exists():
            made = Path(tempfile.mkdtemp(prefix="trainflow-postgres-", dir="/var/tmp"))  # kept across reboots
            shutil.chown(made, "postgres", "postgres")
            link.symlink_to(made)
            state["postgres_folder"] = str(made)
            self._save(state)
        data = link.resolve() / "data"
        if not data.exists():
            data.mkdir(mode=0o700)
            shutil.chown(data, "postgres", "postgres")
        return data

    def _as_postgres(self, args: list[str]) -> None:
        if os.geteuid() == 0:
            args = ["runuser", "-u", "postgres", "--", *args]
        done = subprocess.run(args, capture_output=True, text=True, check=False, cwd="/")
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:]
            raise StackError(f"{' '.join(args)[-200:]} failed: {' '.join(last)}")

    def _sql(self, database: str, sql: str, autocommit: bool = False) -> list[tuple[Any, ...]]:
        import psycopg

        url = self.database_url(database)
        with psycopg.connect(url, passfile=str(self.pgpass), connect_timeout=5, autocommit=autocommit) as connection:
            cursor = connection.execute(sql)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []

    def _start_sshd(self, name: str) -> None:
        self.ssh.mkdir(mode=0o700, exist_ok=True)
        self.remote_storage.mkdir(exist_ok=True)
        host_key, client_key = self.ssh / "host_ed25519", self.ssh / "id_ed25519"
        for key in (host_key, client_key):
            if not key.exists():
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"trainflow-{key.stem}", "-f", str(key)],
                    check=True,
                )
        authorized = self.ssh / "authorized_keys"
        authorized.write_text(client_key.with_suffix(".pub").read_text())
        os.chmod(authorized, 0o600)
        port = self.ports()["sshd"]
        config = self.ssh / "sshd_config"
        config.write_text(
            f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {host_key}\nAuthorizedKeysFile {authorized}\n"
            f"PidFile {self.ssh / 'sshd.pid'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\nUsePAM no\nSubsystem sftp internal-sftp\n"
            # the keys are in the stack's own 0700 folder, which may lie under /tmp (world-writable: refused)
            "StrictModes no\n"
            f"AllowUsers {self.state()['ssh_user']}\n"
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege separation folder
        self._spawn(name, [str(sshd_bin()), "-D", "-e", "-f", str(config)], {})
        self._wait(name, lambda: socket.create_connection(("127.0.0.1", port), timeout=2).close() or True)
        self._trust_host_key()

    def _known_hosts(self) -> Path:
        return self.home / ".ssh" / "known_hosts"

    def _host_line(self) -> str:
        key = (self.ssh / "host_ed25519.pub").read_text().split()
        return f"[127.0.0.1]:{self.ports()['sshd']} {key[0]} {key[1]}"

    def _trust_host_key(self) -> None:
        """Add the sshd's host key to ``~/.ssh/known_hosts`` (what `ssh-keyscan` and a check of the key would do):
        DVC's SSH client refuses a host it does not know. ``down`` removes the line."""
        known = self._known_hosts()
        known.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lines = known.read_text().splitlines() if known.exists() else []
        if self._host_line() not in lines:
            with known.open("a") as f:
                f.write(self._host_line() + "\n")

    def _forget_host_key(self) -> None:
        known = self._known_hosts()
        if known.exists() and self.state_file.exists() and (self.ssh / "host_ed25519.pub").exists():
            kept = [line for line in known.read_text().splitlines() if line != self._host_line()]
            known.write_text("".join(f"{line}\n" for line in kept))

    def _start_mlflow(self, name: str) -> None:
        port = self.ports()["mlflow"]
        args = [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            self.database_url("mlflow"),
            "--artifacts-destination",
            str(self.folder / "mlflow-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
        ]
        # no job runner: the pipeline queues no MLflow job (it would start two more consumer processes)
        env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        self._spawn(name, args, env)
        self._wait(name, lambda: _answers(f"http://127.0.0.1:{port}/health"))

    def _start_prefect(self, name: str) -> None:
        port = self.ports()["prefect"]
        args = [
            str(Path(sys.executable).parent / "prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        env = {
            "PREFECT_API_DATABASE_CONNECTION_URL": self.database_url("prefect", "postgresql+asyncpg"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        self._spawn(name, args, env)
        self._wait(name, lambda: _answers(f"http://127.0.0.1:{port}/api/health"))
        pool = [
            str(Path(sys.executable).parent / "prefect"),
            "work-pool",
            "create",
            POOL,
            "--type",
            "process",
            "--overwrite",
        ]
        done = subprocess.run(pool, env=self._env(self.client_env()), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise StackError(f"prefect work-pool create {POOL} failed: {done.stdout.strip()[-300:]}")
        self._crash_zombies()

    def _crash_zombies(self) -> None:
        """Prefect's own answer to a worker machine that dies mid-run (its flow run would stay Running): flow runs
        send heartbeats (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``, the workers' environment), and this automation marks
        a run Crashed when they stop for ``ZOMBIE_AFTER_S`` (docs.prefect.io: detect zombie flows)."""
        from datetime import timedelta

        from prefect.automations import Automation
        from prefect.client.schemas.objects import StateType
        from prefect.events.actions import ChangeFlowRunState
        from prefect.events.schemas.automations import EventTrigger, Posture
        from prefect.events.schemas.events import ResourceSpecification
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.client_env()["PREFECT_API_URL"]}):
            with contextlib.suppress(ValueError):  # made by an earlier up
                Automation.read(name=ZOMBIES)
                return
            Automation(
                name=ZOMBIES,
                trigger=EventTrigger(
                    after={"prefect.flow-run.heartbeat"},
                    expect={
                        "prefect.flow-run.heartbeat",
                        "prefect.flow-run.Completed",
                        "prefect.flow-run.Failed",
                        "prefect.flow-run.Cancelled",
                        "prefect.flow-run.Crashed",
                    },
                    match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
                    for_each={"prefect.resource.id"},
                    posture=Posture.Proactive,
                    threshold=1,
                    within=timedelta(seconds=ZOMBIE_AFTER_S),
                ),
                actions=[
                    ChangeFlowRunState(
                        state=StateType.CRASHED,
                        message=f"no heartbeat for {ZOMBIE_AFTER_S} s: its worker or machine died",
                    )
                ],
            ).create()

    def _start_worker(self, name: str) -> None:
        args = [
            str(Path(sys.executable).parent / "prefect"),
            "worker",
            "start",
            "--pool",
            POOL,
            "--type",
            "process",
            "--name",
            name,
            "--limit",
            "1",
        ]
        # a worker is a machine of the team: it has the team's environment, and looks for work every 2 s; its flow
        # runs send a heartbeat every HEARTBEAT_S (Prefect's minimum), which the zombie automation watches
        env = {"PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S)}
        self._spawn(name, args, {**self.client_env(), **env})

    # ---- processes ----------------------------------------------------------------------------------------------
    def _env(self, extra: Mapping[str, str]) -> dict[str, str]:
        # every service finds the database's password in the password file, not in a URL or on a command line
        env = {**os.environ, "PREFECT_HOME": str(self.folder / "prefect-home"), "PGPASSFILE": str(self.pgpass), **extra}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    def _spawn(self, name: str, args: list[str], extra: Mapping[str, str]) -> None:
        with (self.logs / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                args,
                cwd=self.folder,
                env=self._env(extra),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        state = self.state()
        state["pids"][name] = {"pid": process.pid, "started": psutil.Process(process.pid).create_time()}
        self._save(state)

    def _wait(self, name: str, check: Any) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if name != "postgres" and not self.running(name):
                raise StackError(f"{name} exited while starting: see {self.logs / (name + '.log')}")
            with contextlib.suppress(Exception):
                if check():
                    return
            time.sleep(0.5)
        raise StackError(f"{name} did not answer within {READY_TIMEOUT:.0f} s: see {self.logs / (name + '.log')}")

    def process(self, name: str) -> psutil.Process | None:
        """The running process of a service, or None (a recorded pid now used by another process is not it)."""
        if name == "postgres":
            pidfile = self.folder / "postgres" / "data" / "postmaster.pid"
            try:
                pid = int(pidfile.read_text().split()[0])
                return psutil.Process(pid) if "postgres" in psutil.Process(pid).name() else None
            except (OSError, ValueError, IndexError, psutil.NoSuchProcess, psutil.AccessDenied):
                return None
        entry = self.state().get("pids", {}).get(name)
        if not entry:
            return None
        try:
            process = psutil.Process(entry["pid"])
            if abs(process.create_time() - entry["started"]) > 1 or process.status() == psutil.STATUS_ZOMBIE:
                return None
            return process
        except psutil.NoSuchProcess:
            return None

    def running(self, name: str) -> bool:
        return self.process(name) is not None

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Stop one service and everything it started (a worker's flow runs, a server's workers)."""
        if name == "postgres":
            if self.running(name):
                data = self.folder / "postgres" / "data"
                self._as_postgres(
                    [str(postgres_bin() / "pg_ctl"), "-D", str(data.resolve()), "-m", "fast", "-w", "stop"]
                )
            return
        process = self.process(name)
        if process is None:
            return
        family = [process, *process.children(recursive=True)]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        for member in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.send_signal(sig)
        _, alive = psutil.wait_procs(family, timeout=30)
        for member in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.kill()
        psutil.wait_procs(alive, timeout=10)

    def leftovers(self) -> list[str]:
        """Processes of the stack still running: a recorded service, or any process naming the stack's folder."""
        found = {name: p for name in SERVICES if (p := self.process(name)) is not None}
        folder, postgres = str(self.folder), self.state().get("postgres_folder", "\0")
        for process in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                line = " ".join(process.info["cmdline"] or [])
                if process.pid != os.getpid() and (folder in line or postgres in line):
                    found.setdefault(f"pid {process.pid}", process)
        out = []
        for name, process in found.items():
            with contextlib.suppress(psutil.NoSuchProcess):
                out.append(f"{name} ({process.pid}: {' '.join(process.cmdline())[:200]})")
        return out

    def down(self, purge: bool = False) -> None:
        """Stop every service, the workers first, and check that nothing is left; ``purge`` also deletes the data."""
        if not self.state_file.exists():
            return
        for name in reversed(SERVICES):
            self.stop(name)
        self._forget_host_key()
        if left := self.leftovers():
            raise StackError(f"still running after stopping: {'; '.join(left)}")
        if purge:
            if made := self.state().get("postgres_folder"):
                shutil.rmtree(made, ignore_errors=True)
            shutil.rmtree(self.folder, ignore_errors=True)

    def status(self) -> dict[str, bool]:
        return {name: self.running(name) for name in SERVICES}


def _own(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


def _answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=3) as response:
        return response.status == 200


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.stack", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "env", "status"])
    parser.add_argument("--dir", default=str(DEFAULT_DIR), help="the stack's folder (default: %(default)s)")
    parser.add_argument("--purge", action="store_true", help="with down: delete the data, keys and logs too")
    args = parser.parse_args(argv)
    stack = Stack(Path(args.dir))
    try:
        if args.command == "up":
            stack.up()
            print(stack.env_text())
        elif args.command == "down":
            stack.down(purge=args.purge)
            print("stopped; nothing left running")
        elif args.command == "env":
            if not stack.state_file.exists():
                raise StackError(f"{stack.folder}: no stack here (python -m services.stack up)")
            print(stack.env_text())
        else:
            for name, up in stack.status().items():
                print(f"{name}: {'running' if up else 'stopped'}")
    except StackError as exc:
        print(f"error: services.stack: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
