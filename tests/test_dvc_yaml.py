"""dvc.yaml as DVC's own example keeps it: each stage lists its own module and the library folder, the params keys it
reads, and the files stay small enough to read (dvc.yaml, the default run's dvc.lock, the flow)."""

from __future__ import annotations

import subprocess

import yaml

from tests.helpers import REPO, STAGES

DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def committed(path: str) -> str:
    """The file as committed: tests never read the working copy's edits."""
    return subprocess.run(["git", "show", f"HEAD:{path}"], cwd=REPO, capture_output=True, text=True, check=True).stdout


def test_a_stage_depends_on_its_own_module_and_the_library_folder_not_on_single_library_modules() -> None:
    for stage in STAGES:
        deps = DVC_YAML[stage]["deps"]
        assert f"tasks/{stage}.py" in deps and "tasks/lib" in deps, stage
        assert not [d for d in deps if d.startswith("tasks/lib/")], f"{stage}: list tasks/lib, not its modules"


def test_no_stage_depends_on_where_its_shards_run() -> None:
    assert not [s for s in STAGES for p in DVC_YAML[s].get("params", []) if str(p).startswith("parallel")]


def test_dvc_yaml_the_default_dvc_lock_and_the_flow_stay_small() -> None:
    assert len(committed("dvc.yaml").splitlines()) <= 200
    # refreshed by `dvc repro` on the default data: nine stages (486 lines for eight; the audit reads the train section)
    assert len(committed("dvc.lock").splitlines()) <= 600
    assert len(committed("flows/training.py").splitlines()) <= 120
