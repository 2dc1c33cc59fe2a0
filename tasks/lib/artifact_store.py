"""MLflow artifacts that move with the project: ``trainflow:PATH`` is PATH beside the SQLite tracking database.

MLflow's embedded store writes absolute artifact paths into ``mlflow.db``, so a moved or renamed project folder
loses every artifact (and with them the champion). Experiments made by tasks/lib/tracking.py on a local store take
``trainflow:<tracking.artifacts>`` as their artifact location instead; this repository, registered with MLflow's
documented plugin entry point (``mlflow.artifact_repository`` in pyproject.toml), resolves it against the folder of
the tracking database at the time of use: wherever ``mlflow.db`` moves, its artifacts are found beside it.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

from tasks.lib.tracking import ARTIFACT_SCHEME as SCHEME


def database_folder(tracking_uri: str | None) -> Path:
    """The folder of a ``sqlite:///`` tracking database (relative paths: from the working directory)."""
    if not tracking_uri:
        import mlflow

        tracking_uri = mlflow.get_tracking_uri()
    parsed = urlparse(tracking_uri)
    if parsed.scheme != "sqlite":
        raise ValueError(f"{SCHEME}: artifact locations need a sqlite:/// tracking store, not {tracking_uri}")
    database = tracking_uri.removeprefix("sqlite:///")
    return Path(database).resolve().parent if database else Path.cwd()


class ProjectArtifactRepository(LocalArtifactRepository):
    """``trainflow:PATH`` → ``<folder of the tracking database>/PATH``, a local artifact folder."""

    def __init__(self, artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None) -> None:
        relative = artifact_uri.removeprefix(f"{SCHEME}:").lstrip("/")
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        super().__init__(str(database_folder(uri) / relative), tracking_uri, registry_uri)
