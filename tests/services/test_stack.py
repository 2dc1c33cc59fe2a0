"""The pipeline on a team's shared services (services/stack.py, started once for the module): PostgreSQL behind the
MLflow server, the Prefect server and the Optuna study; a Prefect process pool with two workers; an SSH DVC remote.
Real servers, real clones, configuration only (docs/remote-services.md)."""

from __future__ import annotations

import concurrent.futures
import filecmp
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.helpers import REPO, TINY, make_workspace, needs, sh, tool_env, wait_for

pytestmark = pytest.mark.slow

NAME = "trainflow-classifier"
# the gate on the headline metric only (no per-class recall check): which candidate must win is then clear
GOOD = {**TINY, "deploy": {**TINY["deploy"], "min_metric": 0.1, "max_class_recall_drop": 1.0}}
# the weaker candidate: one epoch, a slow learning rate, few units (it still passes deploy.min_metric)
WEAK = {**GOOD, "train": {**TINY["train"], "epochs": 1, "learning_rate": 0.0005, "dense_units": 8}}
TUNE = {
    "epochs": 1,
    "sampler_startup_trials": 1,
    "pruner": "none",
    "baseline_first": False,
    "space": {"train.learning_rate": {"low": 0.001, "high": 0.01, "log": True}},
}


def _have_services() -> bool:
    try:
        from services.stack import postgres_bin, sshd_bin

        postgres_bin(), sshd_bin()
        import dvc_ssh  # noqa: F401
        import psycopg  # noqa: F401
    except Exception:
        return False
    return True


class Team(NamedTuple):
    stack: Any
    home: Path  # whose ~/.ssh/known_hosts knows the sshd
    password: str  # the database's password: it must never show up anywhere
    env: dict[str, str]  # what a team member exports, with the password inside URLs to prove it is redacted


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    needs(_have_services(), "PostgreSQL's and OpenSSH's servers (Debian: postgresql, openssh-server), psycopg, dvc-ssh")
    from services.stack import Stack

    home = tmp_path_factory.mktemp("home")
    folder = tmp_path_factory.mktemp("stack") / ".services"
    # the documented commands (`make services-up` / `make services-down` run them): the services outlive `up`
    command = [sys.executable, "-m", "services.stack"]
    try:
        up = sh(REPO, *command, "up", "--dir", str(folder), HOME=str(home))
        assert "export MLFLOW_TRACKING_URI=http://127.0.0.1:" in up.stdout, up.stdout
        stack = Stack(folder, home)
        password = stack.pgpass.read_text().strip().rsplit(":", 1)[1]
        assert password not in up.stdout + up.stderr
        env = stack.client_env()
        port = stack.ports()["postgres"]
        env["TRAINFLOW_REGISTRY_LOCK_URI"] = f"postgresql://trainflow:{password}@127.0.0.1:{port}/mlflow"
        env["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"].replace("http://", f"http://trainflow:{password}@")
        # a failure of the tracking server shows at once, not after MLflow's minutes of retries
        env |= {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
        yield Team(stack, home, password, env)
    finally:
        down = sh(REPO, *command, "down", "--purge", "--dir", str(folder), HOME=str(home))
    assert "nothing left running" in down.stdout  # down checked that nothing of the stack runs
    assert not folder.exists()  # and --purge left nothing


class Race(NamedTuple):
    good: Path
    weak: Path
    outputs: list[str]  # every command's stdout and stderr
    good_deploy: dict[str, Any]  # each clone's reports/deploy.json right after the race (later tests deploy again)
    weak_deploy: dict[str, Any]


def clone(root: Path, overrides: dict[str, Any], team: Team) -> Path:
    storage = team.stack.database_url("optuna")
    return make_workspace(root, {**overrides, "tune": {**TUNE, "storage": storage}})


def run_both(team: Team, a: Path, b: Path, *args: str) -> list[subprocess.CompletedProcess[str]]:
    """The same command in two clones at the same moment (two people on two machines)."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda root: sh(root, *args, **team.env), (a, b)))


@pytest.fixture(scope="module")
def race(team: Team, tmp_path_factory: pytest.TempPathFactory) -> Race:
    """Two clones, a good and a weak candidate, run `dvc repro` against the same server at once: the data stages and
    training side by side, then deploy in both at the same moment (so both gates compare with the same champion)."""
    good = clone(tmp_path_factory.mktemp("good") / "ws", GOOD, team)
    weak = clone(tmp_path_factory.mktemp("weak") / "ws", WEAK, team)
    outputs = [
        out for done in run_both(team, good, weak, "dvc", "repro", "evaluate") for out in (done.stdout, done.stderr)
    ]
    outputs += [out for done in run_both(team, good, weak, "dvc", "repro") for out in (done.stdout, done.stderr)]
    return Race(good, weak, outputs, deploy_json(good), deploy_json(weak))


def server(team: Team) -> Any:
    from mlflow import MlflowClient

    uri = team.stack.client_env()["MLFLOW_TRACKING_URI"]
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def deploy_json(root: Path) -> dict[str, Any]:
    return json.loads((root / "reports/deploy.json").read_text())


def promotion_chain(reports: list[dict[str, Any]]) -> list[int]:
    """The promoted versions in the order they took the alias, each compared with the one before: a fork (two
    promoted versions compared with the same champion) means one overwrote the other unseen."""
    promoted = {r["registry"]["version"]: r["gate"]["champion_version"] for r in reports if r["gate"]["promote"]}
    compared = list(promoted.values())
    assert len(compared) == len(set(compared)), f"two promotions compared with the same champion: {promoted}"
    chain, previous = [], None
    while (nxt := next((v for v, c in promoted.items() if c == previous), None)) is not None:
        chain.append(nxt)
        previous = nxt
    assert sorted(chain) == sorted(promoted), f"promotions do not form one chain: {promoted}"
    return chain


def test_two_clones_race_and_the_registry_keeps_the_better_champion(team: Team, race: Race) -> None:
    """`dvc repro` in two clones trains, tracks and registers on the server; racing deploys: no lost version, the
    champion never gets worse, and each deploy.json says what happened to its candidate."""
    tracker = server(team)
    reports = [race.good_deploy, race.weak_deploy]
    versions = sorted(int(v.version) for v in tracker.search_model_versions(f"name='{NAME}'"))
    assert versions == [1, 2] == sorted(r["registry"]["version"] for r in reports)  # both registered, none lost
    for report in reports:  # the registry says what deploy.json says
        version = tracker.get_model_version(NAME, str(report["registry"]["version"]))
        assert version.tags["gate.promote"] == str(report["gate"]["promote"])
        assert version.tags["gate.reason"] == report["gate"]["reason"]
    chain = promotion_chain(reports)
    champion = int(tracker.get_model_version_by_alias(NAME, "champion").version)
    assert chain[-1] == champion == race.good_deploy["registry"]["version"]  # the better one, whoever won
    weak = race.weak_deploy
    assert weak["gate"]["promote"] == (chain == [weak["registry"]["version"], champion])
    assert weak["gate"]["candidate"] < race.good_deploy["gate"]["candidate"]
    # the runs are on the server, nothing in the clones' own stores
    run_id = json.loads((race.good / "models/mlflow_run.json").read_text())["run_id"]
    assert tracker.get_run(run_id).data.metrics["test.accuracy"] > 0.5
    assert not (race.good / "mlflow.db").exists() and not (race.good / "mlartifacts").exists()
    assert any((team.stack.folder / "mlflow-artifacts").rglob("MLmodel"))  # proxied to the server's storage
    assert_no_password(team, race.outputs, race.good, race.weak)


def test_concurrent_promotions_never_overwrite_an_unseen_champion(team: Team, race: Race) -> None:
    """Many promoters at the same instant, each comparing with the champion it read: exactly one moves the alias
    per round (tests/services/promoters.py, the clone's committed copy, with a slow read of the champion). Catches
    dropping the lock in ``registry.champion_lock`` (TRAINFLOW_REGISTRY_LOCK_URI unused): then every promoter of a
    round reads the same champion and moves the alias, and on PostgreSQL two of them setting one alias at once fail
    (measured: UniqueViolation on registered_model_alias_pk, so the promoters' script exits 1)."""
    tracker = server(team)
    source = tracker.get_model_version(NAME, "1").source
    rounds, promoters = 6, 4
    name = f"{NAME}-race"  # a model of its own: the pipeline's champion stays as the clones left it
    done = sh(
        race.good,
        sys.executable,
        "-m",
        "tests.services.promoters",
        name,
        source,
        str(rounds),
        str(promoters),
        **team.env,
    )
    won = json.loads(done.stdout.strip().splitlines()[-1])
    assert [len(w) for w in won] == [1] * rounds, won  # one winner per round
    assert int(tracker.get_model_version_by_alias(name, "champion").version) == won[-1][0]
    # and the registry lost nothing: every version the promoters registered is there, numbered without a gap
    found = sorted(int(v.version) for v in tracker.search_model_versions(f"name='{name}'", max_results=1000))
    assert found == list(range(1, rounds * promoters + 1))


def test_dvc_push_to_the_ssh_remote_and_pull_in_another_clone(team: Team, race: Race, tmp_path: Path) -> None:
    remote = ["dvc", "remote", "add", "-d", "shared", team.stack.remote_url()]
    sh(race.good, *remote)
    sh(race.good, "dvc", "remote", "modify", "--local", "shared", "keyfile", str(team.stack.ssh / "id_ed25519"))
    sh(race.good, "git", "add", ".dvc/config", "dvc.lock")
    sh(race.good, "git", "commit", "-qm", "run on the shared services")
    pushed = sh(race.good, "dvc", "push", HOME=str(team.home))
    assert "pushed" in pushed.stdout
    other = tmp_path / "other"
    sh(tmp_path, "git", "clone", "-q", str(race.good), str(other))
    sh(other, "dvc", "remote", "modify", "--local", "shared", "keyfile", str(team.stack.ssh / "id_ed25519"))
    pulled = sh(other, "dvc", "pull", HOME=str(team.home))
    for folder in ("data/raw", "data/clean", "data/augmented", "data/normalized", "models"):
        mine, theirs = race.good / folder, other / folder
        files = sorted(p.relative_to(mine) for p in mine.rglob("*") if p.is_file() and ".gitignore" not in p.name)
        assert files and all(
            filecmp.cmp(mine / f, theirs / f, shallow=False) for f in files if "checkpoints" not in str(f)
        )
    config = (other / ".dvc/config").read_text()  # as committed: the URL, no key path, no password
    assert team.stack.remote_url() in config and "keyfile" not in config and team.password not in config
    assert_no_password(team, [pushed.stdout, pushed.stderr, pulled.stdout, pulled.stderr])


def prefect_runs(team: Team, deployment: str) -> list[dict[str, Any]]:
    """The flow runs of a deployment on the team's Prefect server: state, work pool, message."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: team.env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        found = client.read_deployment_by_name(deployment)
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[found.id])))
        # the runs started by hand, not those the cron schedule queued for the coming nights
        return [
            {"state": r.state_type.value, "pool": r.work_pool_name, "message": r.state.message if r.state else None}
            for r in runs
            if not r.auto_scheduled
        ]


def prefect_artifacts(team: Team) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: team.env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        return [f"{a.key}: {a.data}" for a in client.read_artifacts()]


def test_the_nightly_deployment_runs_on_a_worker_and_a_killed_worker_crashes_its_run(team: Team, race: Race) -> None:
    env = team.env
    sh(race.good, sys.executable, "-m", "flows.deploy", "--pool", "trainflow", **env)
    started = sh(race.good, "prefect", "deployment", "run", "training/nightly", **env)
    assert "Created flow run" in started.stdout

    def finished() -> list[Any] | None:
        runs = prefect_runs(team, "training/nightly")
        return runs if runs and all(r["state"] in ("COMPLETED", "FAILED", "CRASHED") for r in runs) else None

    runs = wait_for("the nightly run to finish on a worker", finished, timeout=180, every=2)
    assert [(r["state"], r["pool"]) for r in runs] == [("COMPLETED", "trainflow")]

    # a worker killed mid-run with its flow run and stages (SIGKILL: its machine died): the run's heartbeats stop and
    # the stack's automation marks it Crashed; the next run completes
    sh(race.good, "prefect", "deployment", "run", "training/nightly", **env)

    def busy_worker() -> str | None:
        for name in ("worker-1", "worker-2"):
            process = team.stack.process(name)
            if process is not None and any("dvc" in " ".join(c.cmdline()) for c in process.children(recursive=True)):
                return name
        return None

    name = wait_for("a worker to run the flow's stages", busy_worker, timeout=120, every=0.5)
    team.stack.stop(name, signal.SIGKILL)
    crashed = wait_for(
        "the killed run to be marked crashed",
        lambda: [r for r in prefect_runs(team, "training/nightly") if r["state"] == "CRASHED"],
        timeout=240,
        every=3,
    )
    assert len(crashed) == 1 and "heartbeat" in crashed[0]["message"]
    team.stack.start(name)
    sh(race.good, "prefect", "deployment", "run", "training/nightly", **env)
    runs = wait_for(
        "the next run",
        lambda: (
            (r := prefect_runs(team, "training/nightly"))
            and all(x["state"] in ("COMPLETED", "FAILED", "CRASHED") for x in r)
            and len(r) == 3
            and r
        ),
        timeout=180,
        every=2,
    )
    assert sorted(r["state"] for r in runs).count("COMPLETED") == 2
    logs = [p.read_text(errors="replace") for p in team.stack.logs.glob("*.log")]
    assert_no_password(team, logs)
    assert_no_password(team, [json.dumps(prefect_artifacts(team))])


def test_tuning_on_two_machines_shares_one_study_and_one_parent_run(
    team: Team, race: Race, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna

    done = run_both(team, race.good, race.weak, sys.executable, "-m", "flows.tune", "--trials", "3")
    monkeypatch.setenv("PGPASSFILE", str(team.stack.pgpass))  # this process reads the study too
    trials = optuna.load_study(study_name="trainflow", storage=team.stack.database_url("optuna")).trials
    finished = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(finished) >= 3
    summaries = [json.loads((root / "reports/tune/summary.json").read_text()) for root in (race.good, race.weak)]
    assert all(s["ran_now"] for s in summaries)  # each machine ran trials of the one study
    parents = {s["mlflow_parent_run_id"] for s in summaries}
    assert len(parents) == 1  # one parent run for both machines' trials
    tracker = server(team)
    children = tracker.search_runs(
        [tracker.get_experiment_by_name("trainflow").experiment_id], f"tags.`mlflow.parentRunId` = '{parents.pop()}'"
    )
    assert len(children) == len(trials)
    assert_no_password(team, [d.stdout + d.stderr for d in done], race.good, race.weak)


def test_a_stopped_tracking_server_or_database_fails_deploy_cleanly_and_a_rerun_completes(
    team: Team, race: Race
) -> None:
    tracker = server(team)
    before = (
        sorted(int(v.version) for v in tracker.search_model_versions(f"name='{NAME}'")),
        tracker.get_registered_model(NAME).aliases,
    )
    for service in ("mlflow", "postgres"):
        team.stack.stop(service)
        try:
            failed = sh(race.weak, "dvc", "repro", "-s", "-f", "deploy", check=False, **team.env)
        finally:
            team.stack.start(service)
        assert failed.returncode != 0
        errors = [line for line in failed.stderr.splitlines() if line.startswith("error: deploy")]
        assert len(errors) == 1 and ("unreachable" in errors[0] or "failed" in errors[0]), failed.stderr[-2000:]
        after = (
            sorted(int(v.version) for v in tracker.search_model_versions(f"name='{NAME}'")),
            tracker.get_registered_model(NAME).aliases,
        )
        assert after == before  # nothing registered, no alias moved
        assert_no_password(team, [failed.stdout, failed.stderr])
    sh(race.weak, "dvc", "repro", **team.env)  # the services are back: the run completes
    assert deploy_json(race.weak)["registry"]["version"] in before[0]


def assert_no_password(team: Team, texts: list[str], *workspaces: Path) -> None:
    """The database's password is in no output, report, run file, MLflow param or tag, nor committed DVC config."""
    found = [i for i, text in enumerate(texts) if team.password in text]
    assert not found, f"the password is in output {found}"
    tracker = server(team)
    for root in workspaces:
        for path in [*root.glob("reports/**/*.json"), *root.glob("models/*.json"), root / ".dvc/config"]:
            assert team.password not in path.read_text(errors="replace"), path
    for experiment in tracker.search_experiments():
        for run in tracker.search_runs([experiment.experiment_id]):
            assert team.password not in json.dumps({**run.data.params, **run.data.tags})
    for version in tracker.search_model_versions(f"name='{NAME}'"):
        assert team.password not in json.dumps(version.tags)


def test_the_stack_env_holds_no_password_and_down_leaves_nothing(team: Team) -> None:
    stack = team.stack
    assert all(stack.status().values())
    assert team.password not in stack.env_text() and oct(stack.pgpass.stat().st_mode & 0o777) == "0o600"
    for name in ("mlflow", "prefect"):  # no password on any service's command line
        assert team.password not in " ".join(stack.process(name).cmdline())
    done = subprocess.run(
        [sys.executable, "-m", "services.stack", "env", "--dir", str(stack.folder)],
        env=tool_env(),
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert "MLFLOW_TRACKING_URI=http://127.0.0.1:" in done.stdout and team.password not in done.stdout


def test_the_make_targets_run_the_stack_commands_the_fixture_runs() -> None:
    """README: `make services-up` starts the stack and `make services-down` stops it; the `team` fixture runs the same
    commands, so this pins the targets to them."""
    makefile = (REPO / "Makefile").read_text()
    assert "services-up: $(BIN)/dvc\n" in makefile and "\t$(BIN)/python -m services.stack up\n" in makefile
    assert "services-down:\n\t$(BIN)/python -m services.stack down\n" in makefile
    readme = (REPO / "README.md").read_text()
    assert "`make services-up` starts" in readme and "`make services-down` stops them" in readme
