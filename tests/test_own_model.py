"""docs/own-model.md's worked example, end to end on a copy of the session's tiny run: editing the model folder makes
train stale and nothing before it; `dvc exp run -S train.model=architectures.resnet:resnet` trains the residual
network (its custom layer inside), gates it, serves it through `mlflow models serve` (deploy's check) and registers
it; `python -m tasks.predict` answers with it after the folder is gone from the project; MLflow and the report name
the function, its arguments and its parameter count.

Mutations: dvc.yaml without ``architectures`` in train's deps (the edit leaves everything up to date); log_model
without ``code_paths`` (predict without the folder cannot rebuild the custom layer)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tasks.lib import artifacts
from tests.conftest import copy_run
from tests.helpers import ran, sh

pytestmark = pytest.mark.slow


def test_your_own_model_trained_gated_served_and_reported(tmp_path: Path, tiny_run: Path) -> None:
    workspace = copy_run(tiny_run, tmp_path / "workspace")
    sh(workspace, "git", "add", "-A")
    sh(workspace, "git", "commit", "-qm", "tiny run")

    # the dependency rule: an edit of the folder makes train stale, and no stage before it
    own = workspace / "architectures" / "resnet.py"
    own.write_text(own.read_text().replace("dropout: float = 0.1", "dropout: float = 0.2"))
    assert json.loads(sh(workspace, "dvc", "status", "--json").stdout) == {  # audit trains the model function too
        stage: [{"changed deps": {"architectures": "modified"}}] for stage in ("train", "audit")
    }

    done = sh(
        workspace,
        "dvc",
        "exp",
        "run",
        "-S",
        "train.model=architectures.resnet:resnet",
        "-S",
        "+train.model_args.width=8",
    )
    assert ran(done.stdout) == ["train", "evaluate", "deploy", "audit", "report"]
    deployed = json.loads((workspace / "reports" / "deploy.json").read_text())
    assert deployed["registry"]["registered"] and deployed["serving"]["max_abs_diff"] <= 1e-4  # served as scored

    run_info = json.loads((workspace / "models" / "mlflow_run.json").read_text())
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}").get_run(run_info["run_id"])
    assert run.data.params["train.model"] == "architectures.resnet:resnet"
    assert run.data.params["train.model_args.width"] == "8"
    assert run.data.tags["train.architecture"] == "architectures.resnet:resnet"
    parameters = int(run.data.tags["train.parameters"])
    page = (workspace / "reports" / "report.html").read_text()
    assert f"architectures.resnet:resnet(blocks=2, dropout=0.2, width=8), {parameters:,} parameters" in page

    # the logged model carries its code: predict from the project without its folder
    shutil.move(workspace / "architectures", tmp_path / "moved-away")
    test = artifacts.read_dataset(workspace / "data" / "clean").splits["test"]
    np.savez(tmp_path / "batch.npz", x=test.x[:8])
    model = deployed["registry"]["model_uri"]
    out = tmp_path / "out.csv"
    sh(workspace, "python", "-m", "tasks.predict", str(tmp_path / "batch.npz"), "--model", model, "--output", str(out))
    rows = out.read_text().splitlines()
    assert rows[0].startswith("id,predicted,class,probability") and len(rows) == 9
