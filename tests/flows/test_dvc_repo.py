"""flows/dvc_repo.py, the one adapter that knows DVC: its internal stage graph checked against `dvc dag`, a stage run
through `dvc repro`, params written as `dvc exp run -S` writes them."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from flows import dvc_repo
from tasks.lib.errors import EXIT_TRANSIENT, TrainflowError, TransientError
from tests.helpers import REPO, STAGES, committed_params_file, sh, tool_env


def test_the_stage_graph_is_dvc_dag() -> None:
    dot = sh(REPO, "dvc", "dag", "--dot").stdout
    edges = {(a, b) for a in STAGES for b in STAGES if f'"{a}" -> "{b}"' in dot}
    assert ("ingest", "clean") in edges  # the parse found edges
    graph = dvc_repo.stage_graph(REPO)
    assert list(graph) == list(STAGES)
    assert {(upstream, stage) for stage, ups in graph.items() for upstream in ups} == edges


def tiny_repo(root: Path) -> Path:
    """A git + DVC repo with one stage: copy a.txt to b.txt, with param x."""
    sh(root, "git", "init", "-q")
    sh(root, "dvc", "init", "-q")
    (root / "a.txt").write_text("one\n")
    (root / "params.yaml").write_text("# a comment that must survive\nstage:\n  x: 1  # and this one\n")
    stage = {"cmd": "cp a.txt b.txt", "deps": ["a.txt"], "params": ["stage.x"], "outs": ["b.txt"]}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"copy": stage}}))
    sh(root, "dvc", "repro", "-q")
    return root


def test_repro_runs_a_changed_stage_and_skips_an_unchanged_one(tmp_path: Path) -> None:
    root = tiny_repo(tmp_path)
    lines: list[str] = []
    assert dvc_repo.repro(root, "copy", single_item=True, line=lines.append) == []  # dvc repro ran it already
    assert any("didn't change, skipping" in line for line in lines)  # DVC's own words reach the caller
    (root / "a.txt").write_text("two\n")
    assert dvc_repo.repro(root, "copy", single_item=True, line=lines.append) == ["copy"]
    assert (root / "b.txt").read_text() == "two\n"
    assert "up to date" in sh(root, "dvc", "status").stdout  # recorded in dvc.lock, as `dvc repro` records it


@pytest.mark.parametrize(("status", "error"), [(75, TransientError), (1, TrainflowError), (3, TrainflowError)])
def test_a_failed_stage_raises_its_own_error_line_transient_only_for_exit_transient(
    tmp_path: Path, status: int, error: type[Exception]
) -> None:
    root = tiny_repo(tmp_path)
    script = f"import sys; print('error: copy: a.txt is broken', file=sys.stderr); sys.exit({status})"
    stage = {"cmd": f'python -c "{script}"', "deps": ["a.txt"], "outs": ["c.txt"]}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"fail": stage}}))
    with pytest.raises(error, match=r"^copy: a\.txt is broken$") as raised:
        dvc_repo.repro(root, "fail", single_item=True, line=lambda line: None)
    assert isinstance(raised.value, TransientError) is (status == EXIT_TRANSIENT)


# A stage that prints nothing while it works (a broken pipe to a killed flow would never reach it): pid, then sleep
QUIET_STAGE = """
import os, pathlib, sys, time
from tasks.lib.cli import main
main("quiet", lambda params: (pathlib.Path("started").write_text(str(os.getpid())), time.sleep(120)), sys.argv[1:])
"""
FLOW_TASK = "from pathlib import Path; from flows import dvc_repo; dvc_repo.repro(Path(), 'quiet', line=print)"


# DVC runs a stage through $SHELL -c: bash execs the command, dash (/bin/sh where SHELL is unset) stays its parent
@pytest.mark.parametrize("shell", ["/bin/bash", "/bin/sh"])
def test_a_killed_flow_takes_its_dvc_repro_and_the_stage_down(tmp_path: Path, shell: str) -> None:
    root = tiny_repo(tmp_path)
    (root / "quiet.py").write_text(QUIET_STAGE)
    stage = {"cmd": f"python quiet.py --params {committed_params_file()}"}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"quiet": stage}}))
    flow = subprocess.Popen(
        [sys.executable, "-c", FLOW_TASK],
        cwd=root,
        env=tool_env(PYTHONPATH=str(REPO), SHELL=shell),
        stdout=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not (root / "started").exists() and flow.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (root / "started").exists(), "the stage did not start"
    processes = [*psutil.Process(flow.pid).children(recursive=True)]  # dvc repro, and the stage it runs
    assert int((root / "started").read_text()) in [p.pid for p in processes]
    flow.send_signal(signal.SIGKILL)
    flow.wait()
    _, left = psutil.wait_procs(processes, timeout=5)
    try:
        assert left == [], [" ".join(p.cmdline()) for p in left]
    finally:
        for process in left:
            process.kill()


def test_write_params_sets_keys_and_keeps_comments(tmp_path: Path) -> None:
    root = tiny_repo(tmp_path)
    dvc_repo.write_params(root / "params.yaml", {"stage.x": 2})
    text = (root / "params.yaml").read_text()
    assert "# a comment that must survive" in text and "# and this one" in text
    assert yaml.safe_load(text) == {"stage": {"x": 2}}
    assert "copy" in sh(root, "dvc", "status").stdout  # DVC sees the new value: the stage is out of date
