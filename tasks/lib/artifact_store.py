"""MLflow artifacts that move with the project: ``trainflow:PATH`` is PATH beside the SQLite tracking database.

MLflow's embedded store writes absolute artifact paths into ``mlflow.db``, so a moved or renamed project folder
loses every artifact (and with them the champion). Experiments made by tasks/lib/tracking.py on a local store take
``trainflow:<tracking.artifacts>`` as their artifact location instead; this repository, registered with MLflow's
documented plugin entry point (``mlflow.artifact_repository`` in pyproject.toml), resolves it against the folder of
the tracking database at the time of use: wherever ``mlflow.db`` moves, its artifacts are found beside it.

A location never leaves its artifact folder (the first folder of PATH, ``mlartifacts``): an absolute PATH, a ``..``
that climbs out of it, or a symbolic link inside it that points elsewhere is refused (MlflowException), for reading,
writing and deleting alike, so a crafted location in the store (a run's, an experiment's, a registered version's
source) cannot read or write the rest of the machine.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from mlflow.exceptions import MlflowException
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


def _refused(what: str, why: str) -> MlflowException:
    return MlflowException.invalid_parameter_value(f"{what}: {why}; refused")


def confined(folder: Path, path: Path, what: str) -> Path:
    """``path``, once it is known to resolve (symbolic links followed) inside ``folder`` (resolved too)."""
    real, inside = Path(os.path.realpath(folder)), Path(os.path.realpath(path))
    if not inside.is_relative_to(real):
        raise _refused(what, f"resolves to {inside}, outside the artifact folder {real}")
    return path


def locate(artifact_uri: str, base: Path) -> tuple[Path, Path]:
    """The artifact folder and the folder of ``trainflow:PATH`` under ``base`` (the database's folder).

    Raises:
        MlflowException: PATH is absolute, empty, starts outside any folder (``..``), or resolves outside its folder.
    """
    relative = artifact_uri.removeprefix(f"{SCHEME}:")
    parts = PurePosixPath(relative).parts
    if relative.startswith("/") or Path(relative).is_absolute():
        raise _refused(artifact_uri, "an absolute path; a location is relative to the tracking database's folder")
    if not parts or parts[0] in (".", ".."):
        raise _refused(artifact_uri, "no artifact folder (the location must start with one, e.g. mlartifacts)")
    root = base / parts[0]
    return root, confined(root, base / relative, artifact_uri)


class ProjectArtifactRepository(LocalArtifactRepository):
    """``trainflow:PATH`` → ``<folder of the tracking database>/PATH``, a local artifact folder."""

    def __init__(self, artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None) -> None:
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        self._location = artifact_uri
        self._root, folder = locate(artifact_uri, database_folder(uri))
        super().__init__(str(folder), tracking_uri, registry_uri)

    @property
    def artifact_dir(self) -> str:
        # checked at every use: a symbolic link made after the repository was opened is refused too (MLflow checks
        # the paths below this folder itself, against the folder's resolved path)
        return str(confined(self._root, Path(self._artifact_dir), self._location))

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        # MLflow copies the tree file by file without checking where each lands: every target is checked first
        target = Path(self.artifact_dir, os.path.normpath(artifact_path) if artifact_path else "")
        for folder, _, files in os.walk(local_dir):
            for name in ("", *files):
                below = Path(folder, name).relative_to(local_dir)
                confined(Path(self.artifact_dir), target / below, f"{self._location}/{artifact_path or ''}")
        super().log_artifacts(local_dir, artifact_path)

    def delete_artifacts(self, artifact_path: str | None = None) -> None:
        target = Path(self.artifact_dir, artifact_path or "")
        confined(Path(self.artifact_dir), target, f"{self._location}/{artifact_path or ''}")
        super().delete_artifacts(artifact_path)
