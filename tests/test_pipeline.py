"""End to end: the real `dvc repro` / `dvc exp run` on a copy of this repo with tiny params."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "clean", "augment", "normalize", "train", "evaluate", "deploy")
TINY = {
    "train": {"epochs": 2, "filters": [8, 16], "dense_units": 32, "batch_size": 32, "learning_rate": 0.005},
    "augment": {"copies": 1},
    "deploy": {"check_samples": 16},
}


def tool_env() -> dict[str, str]:
    """PATH with this interpreter's bin first, so `python -m tasks.x` in dvc.yaml runs in this environment."""
    env = dict(os.environ, DVC_NO_ANALYTICS="1", TF_CPP_MIN_LOG_LEVEL="3")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def sh(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, cwd=cwd, env=tool_env(), capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def ran(output: str) -> list[str]:
    return [stage for stage in STAGES if f"Running stage '{stage}'" in output]


def make_workspace(root: Path, overrides: dict) -> Path:
    """Copy the repo's tracked and unignored files into a fresh git repo with params overridden."""
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


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("pipeline"), TINY)


def test_repro_runs_every_stage_then_skips_then_reruns_from_train(workspace: Path) -> None:
    first = sh(workspace, "dvc", "repro")
    assert ran(first.stdout) == list(STAGES)
    manifest = json.loads((workspace / "data/raw/manifest.json").read_text())
    assert manifest["source"] == "digits" and manifest["shape"] == [8, 8, 1]
    assert sum(s["count"] for s in manifest["splits"].values()) == 1797
    metrics = json.loads((workspace / "reports/metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.5
    assert len(metrics["test"]["confusion_matrix"]) == 10
    assert (workspace / "models/serving/saved_model.pb").is_file()
    assert json.loads((workspace / "reports/deploy.json").read_text())["ok"] is True
    for png in ("reports/augment/samples.png", "reports/evaluate/figures/confusion_matrix.png"):
        assert (workspace / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    second = sh(workspace, "dvc", "repro")
    assert ran(second.stdout) == []
    assert "up to date" in sh(workspace, "dvc", "status").stdout

    sh(workspace, "git", "add", "-A")
    sh(workspace, "git", "commit", "-qm", "baseline run")
    experiment = sh(workspace, "dvc", "exp", "run", "-S", "train.epochs=1")
    assert ran(experiment.stdout) == ["train", "evaluate", "deploy"]
    history = (workspace / "reports/train/history.csv").read_text().strip().splitlines()
    assert len(history) == 1 + 1  # header + one epoch

    shown = json.loads(sh(workspace, "dvc", "metrics", "show", "--json").stdout)
    assert "reports/metrics.json" in json.dumps(shown)
    plots = sh(workspace, "dvc", "plots", "show", "--out", "dvc_plots")
    assert plots.returncode == 0 and (workspace / "dvc_plots/index.html").is_file()
    sh(workspace, "dvc", "push")
    assert any((workspace / ".dvc-storage").rglob("*"))


def test_a_bad_source_stops_repro_with_one_clear_line(tmp_path: Path) -> None:
    workspace = make_workspace(tmp_path, {**TINY, "data": {"source": "idx:missing/mnist"}})
    failed = sh(workspace, "dvc", "repro", check=False)
    assert failed.returncode != 0
    assert "error: ingest: missing/mnist: data source path not found" in failed.stderr + failed.stdout
    assert not (workspace / "data/raw").exists()
    assert ran(failed.stdout) == ["ingest"]
