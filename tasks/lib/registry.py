"""The MLflow model registry: the champion, its logged files, loading a version, registering, aliases.

The one module that knows the registry (DESIGN principle 1: only deploy touches it). Every other stage is a pure
function of its DVC dependencies and params, so DVC's cache is exact; ``tests/tasks/lib/test_registry.py`` checks
that only ``tasks/deploy.py`` (and ``tasks/predict.py``, batch prediction with the champion, no stage) imports it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tasks.lib import dblock
from tasks.lib.config import TrackingParams
from tasks.lib.errors import TrainflowError
from tasks.lib.lock import waiting_lock
from tasks.lib.tracking import REPORT_TAG, client, sqlite_lock, texts, tracking_uri

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"
CONTRACT_TAG = "trainflow.contract"  # a registered version's input shape, dtype and classes (JSON)
FINGERPRINT_TAG = "trainflow.fingerprint"  # SHA-256 of its architecture and weights: an identical model is found


def champion_version(settings: TrackingParams, model_name: str) -> Any | None:
    """The registered version under the ``champion`` alias, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client(settings).get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None


def champion_json(settings: TrackingParams, model_name: str, artifact: str) -> tuple[Any, str] | None:
    """A JSON artifact of the champion's run and where it came from (``name v3 (run …): path``); None without one.

    Raises:
        TrainflowError: when the champion's run has no such artifact (it cannot be compared, say so).
    """
    from mlflow.exceptions import MlflowException

    version = champion_version(settings, model_name)
    if version is None:
        return None
    where = f"{model_name} v{version.version} (run {version.run_id}): {artifact}"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client(settings).download_artifacts(version.run_id, artifact, tmp)
            return json.loads(Path(local).read_text()), where
        except (MlflowException, OSError, ValueError) as exc:
            raise TrainflowError(f"{where}: cannot read it ({str(exc).splitlines()[0][:200]})") from None


def load_model(settings: TrackingParams, uri: str) -> Any:
    """A registered model (a ``models:/`` URI) as an MLflow pyfunc model."""
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    client(settings)
    try:
        return mlflow.pyfunc.load_model(uri, suppress_warnings=True)  # its requirements are exact pins of ours
    except MlflowException as exc:
        raise TrainflowError(f"{uri}: cannot load from {tracking_uri(settings)} ({exc.message[:200]})") from None


def version_uri(name: str, version: int | str) -> str:
    """The ``models:/`` URI of one registered version."""
    return f"models:/{name}/{version}"


def version_contract(version: Any) -> dict[str, Any] | None:
    """The contract a registered version was tagged with at registration, or None (registered before tags)."""
    tagged = (version.tags or {}).get(CONTRACT_TAG)
    return json.loads(tagged) if tagged else None


def identical_version(settings: TrackingParams, name: str, fingerprint: str) -> int | None:
    """The oldest registered version of ``name`` tagged with this model fingerprint, or None."""
    quoted = name.replace("'", "\\'")
    found = client(settings).search_model_versions(f"name='{quoted}' and tags.`{FINGERPRINT_TAG}` = '{fingerprint}'")
    return min((int(v.version) for v in found), default=None)


def model_aliases(settings: TrackingParams, name: str) -> dict[str, int]:
    """Every alias of a registered model and the version it names (empty when the model is not registered)."""
    from mlflow.exceptions import MlflowException

    try:
        model = client(settings).get_registered_model(name)
    except MlflowException:
        return {}
    return {alias: int(version) for alias, version in sorted(model.aliases.items())}


LOCK_URI = "TRAINFLOW_REGISTRY_LOCK_URI"  # a PostgreSQL database every promoter reaches: the champion's lock


@contextlib.contextmanager
def champion_lock(settings: TrackingParams, name: str) -> Iterator[None]:
    """Hold the lock that makes reading, checking and moving the ``champion`` alias one step.

    MLflow has no atomic alias update. With ``TRAINFLOW_REGISTRY_LOCK_URI`` (a ``postgresql://`` URL, its password
    from ``PGPASSFILE`` or the URL), a PostgreSQL advisory lock of the model's name, held for one transaction: the
    database releases it when the transaction ends or the connection drops (a killed promoter holds nothing). With the
    embedded SQLite store, a ``flock`` on the lock file beside ``mlflow.db``. Otherwise none: a tracking
    server alone offers no lock, and two promotions of the same moment can both move the alias.

    Raises:
        TransientError: the lock's database is unreachable, or another promotion held the lock ``dblock.WAIT_S``.
    """
    url = os.environ.get(LOCK_URI)
    if url:
        with dblock.advisory_lock(url, f"{CHAMPION}:{name}", f"moving the {CHAMPION} alias of {name}; no alias moved"):
            yield
        return
    lock = sqlite_lock(tracking_uri(settings))
    if lock is None:
        yield
        return
    with waiting_lock(lock, f"moving the {CHAMPION} alias of {name}", timeout=dblock.WAIT_S):
        yield


def register_version(settings: TrackingParams, name: str, model_uri: str, tags: Mapping[str, Any]) -> int:
    """Register a logged model under ``name`` (``deploy.model_name``) with ``tags``: its new version, no alias yet."""
    import mlflow

    client(settings)
    return int(mlflow.register_model(model_uri, name, tags=texts(tags)).version)


def promote(settings: TrackingParams, name: str, version: int, scored_champion: int | None) -> int | None:
    """Make ``version`` the champion as a compare-and-set: under :func:`champion_lock`, only if the champion is still
    ``scored_champion`` (the version the gate compared with; None: there was none). The old champion gets
    ``previous-champion``.

    Returns:
        None when ``version`` is the champion now; else the champion found instead (nothing moved).
    """
    tracker = client(settings)  # opened before the lock: opening a SQLite store takes the same lock file
    with champion_lock(settings, name):
        current = champion_version(settings, name)
        now = int(current.version) if current is not None else None
        if now != scored_champion:
            return now
        if current is not None:
            tracker.set_registered_model_alias(name, PREVIOUS, current.version)
        tracker.set_registered_model_alias(name, CHAMPION, str(version))
    return None


def make_challenger(settings: TrackingParams, name: str, version: int) -> None:
    """Point ``challenger`` at ``version`` (registered, not promoted)."""
    client(settings).set_registered_model_alias(name, CHALLENGER, str(version))


def tag_version(settings: TrackingParams, name: str, version: int, tags: Mapping[str, Any]) -> None:
    """Set tags on a registered version (the gate's final decision, after a champion moved under it)."""
    tracker = client(settings)
    for key, value in texts(tags).items():
        tracker.set_model_version_tag(name, str(version), key, value)


def entry(name: str, version: int, promoted: bool) -> dict[str, Any]:
    """What deploy.json says about the registration."""
    return {
        "model_name": name,
        "version": version,
        "alias": CHAMPION if promoted else CHALLENGER,
        "model_uri": version_uri(name, version),
    }


def point_at_report(settings: TrackingParams, name: str, version: int, uri: str) -> None:
    """Tag a registered version with its run's report (``trainflow.report``: the ``runs:/`` URI) and say so in its
    description, so the registry page of a version leads to its report (the report stage logs it there)."""
    tracker = client(settings)
    tracker.set_model_version_tag(name, str(version), REPORT_TAG, uri)
    tracker.update_model_version(
        name,
        str(version),
        description=f"Run report: {uri} (the run's Artifacts tab, written by the report stage): data, training, "
        "evaluation, the gate's decision, lineage and the model card on one self-contained page.",
    )
