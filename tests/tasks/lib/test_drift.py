"""tasks/lib/drift.py: a shifted dataset is flagged, an unshifted one passes; warn vs fail; the champion's
reference; data that cannot be compared."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tasks.lib import drift, tracking
from tasks.lib.artifacts import Dataset, Split, open_dataset, write_dataset
from tasks.lib.config import Params
from tasks.lib.errors import TrainflowError
from tasks.lib.sources import load_digits

CLASSES = tuple(str(i) for i in range(10))


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    loaded = load_digits()
    return loaded.x, loaded.y


@pytest.fixture
def dparams(params: Params, tmp_path: Path) -> Params:
    paths = params.paths.model_copy(
        update={
            "reference_stats": str(tmp_path / "reference.json"),
            "drift_report": str(tmp_path / "drift.json"),
            "clean": str(tmp_path / "clean"),
        }
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = params.tracking.model_copy(update={"uri": uri, "artifacts": str(tmp_path / "mlartifacts")})
    return params.model_copy(update={"paths": paths, "tracking": settings})


def with_action(params: Params, action: str) -> Params:
    return params.model_copy(update={"validation": params.validation.model_copy(update={"drift_action": action})})


def halves(x: np.ndarray, y: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    return (x[::2], y[::2]), (x[1::2], y[1::2])


def test_two_halves_of_the_same_data_do_not_drift(digits: tuple[np.ndarray, np.ndarray], params: Params) -> None:
    (xa, ya), (xb, yb) = halves(*digits)
    report = drift.compare(
        drift.statistics([(xa, ya)], CLASSES), drift.statistics([(xb, yb)], CLASSES), params.validation
    )
    assert not report["drifted"], report["reasons"]
    assert report["label_p_value"] > 0.5 and report["intensity_psi"] < 0.05


def test_darker_images_drift_in_intensity(digits: tuple[np.ndarray, np.ndarray], params: Params) -> None:
    (xa, ya), (xb, yb) = halves(*digits)
    report = drift.compare(
        drift.statistics([(xa, ya)], CLASSES), drift.statistics([(xb // 3, yb)], CLASSES), params.validation
    )
    assert report["drifted"] and report["intensity_psi"] > params.validation.drift_psi
    assert all(shift < 0 for shift in report["per_class_mean_shift"].values())


def test_a_skewed_label_distribution_drifts(digits: tuple[np.ndarray, np.ndarray], params: Params) -> None:
    (xa, ya), (xb, yb) = halves(*digits)
    skewed = yb < 5
    report = drift.compare(
        drift.statistics([(xa, ya)], CLASSES), drift.statistics([(xb[skewed], yb[skewed])], CLASSES), params.validation
    )
    assert report["drifted"] and report["label_p_value"] < params.validation.drift_label_p_value
    assert any("label distribution" in reason for reason in report["reasons"])


def dataset(x: np.ndarray, y: np.ndarray) -> Dataset:
    return Dataset(splits={"train": Split(x, y)}, classes=CLASSES)


def champion_with(params: Params, reference: dict | None) -> None:
    """A real MLflow registry (SQLite, under tmp) whose champion's run logged ``reference`` as train would."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=params.tracking.uri, registry_uri=params.tracking.uri)
    run = client.create_run(tracking.experiment_id(client, params.tracking))
    if reference is not None:
        local = Path(params.paths.reference_stats)
        local.write_text(json.dumps(reference))
        client.log_artifact(run.info.run_id, str(local), "train")
    name = params.deploy.model_name
    client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(name, tracking.CHAMPION, version.version)


def test_check_without_a_champion_reports_that_and_passes(dparams: Params, digits: tuple) -> None:
    report = drift.check(dataset(*digits), with_action(dparams, "fail"))
    why = f"no reference yet: {dparams.deploy.model_name} has no champion"
    assert report == {"checked": False, "drifted": False, "action": "fail", "why": why}
    assert json.loads(Path(dparams.paths.drift_report).read_text()) == report


def test_check_against_the_champions_reference_warns_or_fails_as_params_say(dparams: Params, digits: tuple) -> None:
    (xa, ya), (xb, yb) = halves(*digits)
    write_dataset(Path(dparams.paths.clean), dataset(xa, ya), shard_size=100)  # train's reference: shard by shard
    drift.write_reference(open_dataset(Path(dparams.paths.clean)), dparams)
    reference = json.loads(Path(dparams.paths.reference_stats).read_text())
    whole = drift.statistics([(xa, ya)], CLASSES)
    assert reference["label_counts"] == whole["label_counts"] and reference["image_shape"] == [8, 8, 1]
    np.testing.assert_allclose(reference["intensity_histogram"], whole["intensity_histogram"])
    champion_with(dparams, reference)
    Path(dparams.paths.reference_stats).unlink()  # the workspace's file is not what ingest reads: the champion's is

    checked = drift.check(dataset(xb, yb), with_action(dparams, "fail"))
    assert checked["checked"] is True and checked["drifted"] is False
    assert checked["reference"].startswith(f"{dparams.deploy.model_name} v1 (run ")
    assert drift.check(dataset(xb // 3, yb), with_action(dparams, "warn"))["drifted"] is True
    Path(dparams.paths.drift_report).unlink()
    with pytest.raises(TrainflowError, match=r"data drift against .* v1 .*reference.json: intensity \(PSI"):
        drift.check(dataset(xb // 3, yb), with_action(dparams, "fail"))
    assert not Path(dparams.paths.drift_report).exists()
    assert drift.check(dataset(xb // 3, yb), with_action(dparams, "ignore"))["checked"] is False


def test_data_of_other_classes_or_shape_is_not_comparable_and_goes_on(dparams: Params, digits: tuple) -> None:
    x, y = digits
    champion_with(dparams, drift.statistics([(x, y)], CLASSES))
    named = Dataset(splits={"train": Split(x, y)}, classes=tuple(f"c{i}" for i in range(10)))
    report = drift.check(named, with_action(dparams, "warn"))
    assert report["checked"] is False and report["comparable"] is False and report["drifted"] is False
    assert "not comparable" in report["why"] and "'c0'" in report["why"]
    bigger = dataset(np.repeat(np.repeat(x, 2, axis=1), 2, axis=2), y)  # 16×16 images, the same classes
    assert "(8, 8, 1)" in drift.check(bigger, with_action(dparams, "warn"))["why"]
    with pytest.raises(TrainflowError, match=r"not comparable .* \(validation.drift_action=fail\)"):
        drift.check(named, with_action(dparams, "fail"))


def test_a_champion_without_reference_statistics_is_not_comparable(dparams: Params, digits: tuple) -> None:
    champion_with(dparams, None)
    report = drift.check(dataset(*digits), with_action(dparams, "warn"))
    assert report["comparable"] is False and "cannot read it" in report["why"]
