"""tasks/drift.py: a shifted dataset is flagged, an unshifted one passes; warn vs fail; the reference round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tasks.lib import drift
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
    return params.model_copy(update={"paths": paths})


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


def test_check_without_a_reference_reports_that_and_passes(dparams: Params, digits: tuple) -> None:
    report = drift.check(dataset(*digits), with_action(dparams, "fail"))
    assert report == {"checked": False, "drifted": False, "why": f"no reference yet ({dparams.paths.reference_stats})"}
    assert json.loads(Path(dparams.paths.drift_report).read_text()) == report


def test_check_warns_or_fails_on_drift_as_params_say(dparams: Params, digits: tuple) -> None:
    (xa, ya), (xb, yb) = halves(*digits)
    write_dataset(Path(dparams.paths.clean), dataset(xa, ya), shard_size=100)  # train's reference: shard by shard
    drift.write_reference(open_dataset(Path(dparams.paths.clean)), dparams)
    whole = drift.statistics([(xa, ya)], CLASSES)
    reference = json.loads(Path(dparams.paths.reference_stats).read_text())
    assert reference["label_counts"] == whole["label_counts"]
    np.testing.assert_allclose(reference["intensity_histogram"], whole["intensity_histogram"])
    assert drift.check(dataset(xb, yb), with_action(dparams, "fail"))["drifted"] is False
    assert drift.check(dataset(xb // 3, yb), with_action(dparams, "warn"))["drifted"] is True
    Path(dparams.paths.drift_report).unlink()
    with pytest.raises(TrainflowError, match=r"data drift against .*reference.json: intensity \(PSI"):
        drift.check(dataset(xb // 3, yb), with_action(dparams, "fail"))
    assert not Path(dparams.paths.drift_report).exists()
