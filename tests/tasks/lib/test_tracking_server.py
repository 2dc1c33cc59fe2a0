"""A real `mlflow server` (database backend) instead of the embedded SQLite store: configuration, no code change."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.helpers import TINY, make_workspace, mlflow_tracking_server, sh

pytestmark = pytest.mark.slow


def test_dvc_repro_tracks_and_registers_on_a_tracking_server(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    workspace = make_workspace(tmp_path / "workspace", {**TINY, "deploy": {"min_metric": 0.1}})
    with mlflow_tracking_server(tmp_path / "server") as plain:
        uri = plain.replace("http://", "http://trainflow:s3cret-pass@")  # a credential in the URI (ignored here)
        done = sh(workspace, "dvc", "repro", MLFLOW_TRACKING_URI=uri)
        assert "Running stage 'deploy'" in done.stdout
        # the credential is in no output, no report or run-info file, and none of the run's params or tags
        written = {
            str(p): p.read_text() for folder in ("reports", "models") for p in (workspace / folder).rglob("*.json")
        }
        outputs = {"stdout": done.stdout, "stderr": done.stderr, **written}
        assert written and not [name for name, text in outputs.items() if "s3cret-pass" in text]
        assert json.loads((workspace / "models/mlflow_run.json").read_text())["tracking_uri"].startswith("http://***@")

        run_id = json.loads((workspace / "models/mlflow_run.json").read_text())["run_id"]
        server = MlflowClient(tracking_uri=uri, registry_uri=uri)
        run = server.get_run(run_id)
        assert run.data.params["train.epochs"] == "2" and run.data.metrics["test.accuracy"] > 0.5
        assert "s3cret-pass" not in json.dumps({**run.data.params, **run.data.tags})
        assert len(server.get_metric_history(run_id, "val_loss")) == 2
        champion = server.get_model_version_by_alias("trainflow-classifier", "champion")
        assert champion.run_id == run_id
        # artifacts went through the server to its own store, nothing to the workspace's local store
        assert any((tmp_path / "server/artifacts").rglob("MLmodel"))
        assert not (workspace / "mlflow.db").exists() and not (workspace / "mlartifacts").exists()
        # and the champion loads from the server's registry and answers raw pixels (in its own process: MLflow's
        # set_tracking_uri also sets MLFLOW_TRACKING_URI, which must not leak into later tests)
        load = (
            "import json, sys, mlflow, numpy as np; "
            "model = mlflow.pyfunc.load_model('models:/trainflow-classifier@champion'); "
            "answer = model.predict(np.load(sys.argv[1])[:3].astype(object)); "
            "print(json.dumps({'rows': len(answer), 'columns': sorted(answer.columns)}))"
        )
        done = sh(workspace, sys.executable, "-c", load, "data/clean/test/x-00000.npy", MLFLOW_TRACKING_URI=uri)
        answer = json.loads(done.stdout.strip().splitlines()[-1])
        assert answer["rows"] == 3 and {"label", "probabilities"} <= set(answer["columns"])
