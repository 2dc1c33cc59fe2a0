"""The MLflow model registry: the champion, its logged files, loading a version, registering, aliases.

The one module that knows the registry (DESIGN principle 1: only deploy touches it). Every other stage is a pure
function of its DVC dependencies and params, so DVC's cache is exact; ``tests/tasks/lib/test_registry.py`` checks
that only ``tasks/deploy.py`` (and ``tasks/predict.py``, batch prediction with the champion, no stage) imports it.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tasks.lib.config import TrackingParams
from tasks.lib.errors import TrainflowError
from tasks.lib.tracking import REPORT_TAG, client, texts, tracking_uri

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


def register(
    settings: TrackingParams,
    name: str,
    model_uri: str,
    promote: bool,
    tags: Mapping[str, Any],
    scored_champion: int | None,
) -> dict[str, Any]:
    """Register a logged model under ``name`` (``deploy.model_name``) with ``tags``, and move the aliases.

    Promoted: ``champion`` moves to the new version and the old one gets ``previous-champion``, as a compare-and-set:
    right before the alias moves, the champion must still be ``scored_champion`` (the version the gate compared
    with; None when there was none). MLflow has no atomic alias update, so the window is that of two calls.
    Otherwise the new version becomes ``challenger`` and the champion is untouched.

    Raises:
        TrainflowError: the champion moved since the gate; the new version stays ``challenger``.
    """
    import mlflow

    tracker = client(settings)
    version = mlflow.register_model(model_uri, name, tags=texts(tags))
    if promote:
        current = champion_version(settings, name)
        now = int(current.version) if current is not None else None
        if now != scored_champion:
            tracker.set_registered_model_alias(name, CHALLENGER, version.version)
            raise TrainflowError(
                f"{name}: the champion is v{now} now, the gate compared with v{scored_champion}; v{version.version} "
                "is registered as challenger and the champion is unchanged: run deploy again to compare with it"
            )
        if current is not None:
            tracker.set_registered_model_alias(name, PREVIOUS, current.version)
        tracker.set_registered_model_alias(name, CHAMPION, version.version)
    else:
        tracker.set_registered_model_alias(name, CHALLENGER, version.version)
    return {
        "model_name": name,
        "version": int(version.version),
        "alias": CHAMPION if promote else CHALLENGER,
        "model_uri": version_uri(name, version.version),
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
