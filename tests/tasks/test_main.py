"""tasks/__main__.py: `python -m tasks <stage>`, dvc.yaml's command, is `python -m tasks.<stage>` handed over sooner."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks import warm
from tests.helpers import TINY, make_workspace, sh, tool_env


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = make_workspace(tmp_path_factory.mktemp("main"), TINY)
    done = subprocess.run(
        [sys.executable, "-c", "from tasks import warm; import sys; sys.exit(0 if warm.wait_ready('data') else 1)"],
        cwd=root,
        env=tool_env(),
        check=False,
    )
    assert done.returncode == 0, "the data server did not become ready"
    sh(root, sys.executable, "-m", "tasks.ingest", TRAINFLOW_WARM="0")
    yield root


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_dvc_stage_runs_through_this_entry() -> None:
    import yaml

    stages = yaml.safe_load((Path(__file__).resolve().parents[2] / "dvc.yaml").read_text())["stages"]
    assert {name: stage["cmd"] for name, stage in stages.items()} == {s: f"python -m tasks {s}" for s in warm.STAGES}


def test_the_same_bytes_as_the_stage_module_warm_and_cold(workspace: Path) -> None:
    sh(workspace, sys.executable, "-m", "tasks.clean", TRAINFLOW_WARM="0")
    reference = tree(workspace / "data/clean")
    for env in ({"TRAINFLOW_WARM": "0"}, {}):
        done = sh(workspace, sys.executable, "-m", "tasks", "clean", **env)
        assert "clean: removed" in done.stderr  # the stage's own log line
        assert tree(workspace / "data/clean") == reference


def test_the_caller_hands_over_before_importing_the_stage(workspace: Path) -> None:
    # -X importtime lists what the calling process imports; the warm child (forked from a server started without
    # it) lists nothing. Handing over must not wait for numpy, pydantic or the stage module.
    done = sh(workspace, sys.executable, "-X", "importtime", "-m", "tasks", "clean")
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "tasks.warm" in imported
    assert not imported & {"numpy", "pydantic", "tasks.config", "tasks.clean"}
    assert "clean: removed" in done.stderr


def test_its_arguments_reach_the_stage(workspace: Path) -> None:
    done = sh(workspace, sys.executable, "-m", "tasks", "clean", "--params", "missing.yaml", check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "missing.yaml" in done.stderr


@pytest.mark.parametrize("args", [[], ["bogus"]])
def test_an_unknown_stage_is_one_line_and_exit_1(workspace: Path, args: list[str]) -> None:
    done = sh(workspace, sys.executable, "-m", "tasks", *args, check=False)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: ") and "usage: python -m tasks {ingest,clean," in line
