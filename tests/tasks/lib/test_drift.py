"""tasks/lib/drift.py: a shifted dataset is flagged, an unshifted one passes; warn vs fail; the champion's
reference (read by deploy's check_drift, the only reader of the registry); data that cannot be compared."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tasks import deploy
from tasks.lib import drift, registry, tracking
from tasks.lib.artifacts import Dataset, Split, open_dataset, write_dataset
from tasks.lib.config import Params
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
            "statistics": str(tmp_path / "statistics.json"),
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
    client.set_registered_model_alias(name, registry.CHAMPION, version.version)


def stats(data: Dataset) -> dict:
    """What ingest records of ``data`` (every split)."""
    return drift.statistics(((s.x, s.y) for s in data.splits.values()), data.classes, drift.NEW_VOCABULARY)


def test_ingest_records_the_statistics_of_every_split(tmp_path: Path, digits: tuple) -> None:
    (xa, ya), (xb, yb) = halves(*digits)
    data = Dataset(splits={"train": Split(xa, ya), "test": Split(xb, yb)}, classes=CLASSES)
    written = drift.record(data, tmp_path / "statistics.json")
    assert json.loads((tmp_path / "statistics.json").read_text()) == written
    assert written["count"] == len(digits[1]) and written == drift.statistics([digits], CLASSES)


def test_check_without_a_champion_reports_that_and_passes(dparams: Params, digits: tuple) -> None:
    report = deploy.check_drift(with_action(dparams, "fail"), stats(dataset(*digits)))
    why = f"no reference yet: {dparams.deploy.model_name} has no champion"
    assert report == {"checked": False, "drifted": False, "action": "fail", "why": why}
    assert drift.blocks(report) is None


def test_check_against_the_champions_reference_warns_or_fails_as_params_say(dparams: Params, digits: tuple) -> None:
    (xa, ya), (xb, yb) = halves(*digits)
    write_dataset(Path(dparams.paths.clean), dataset(xa, ya), shard_size=100)  # train's reference: shard by shard
    drift.write_reference(open_dataset(Path(dparams.paths.clean)), dparams)
    reference = json.loads(Path(dparams.paths.reference_stats).read_text())
    whole = drift.statistics([(xa, ya)], CLASSES)
    assert reference["label_counts"] == whole["label_counts"] and reference["image_shape"] == [8, 8, 1]
    np.testing.assert_allclose(reference["intensity_histogram"], whole["intensity_histogram"])
    champion_with(dparams, reference)
    Path(dparams.paths.reference_stats).unlink()  # the workspace's file is not what deploy reads: the champion's is

    checked = deploy.check_drift(with_action(dparams, "fail"), stats(dataset(xb, yb)))
    assert checked["checked"] is True and checked["drifted"] is False and drift.blocks(checked) is None
    assert checked["reference"].startswith(f"{dparams.deploy.model_name} v1 (run ")
    assert deploy.check_drift(with_action(dparams, "warn"), stats(dataset(xb // 3, yb)))["drifted"] is True
    failed = deploy.check_drift(with_action(dparams, "fail"), stats(dataset(xb // 3, yb)))
    assert failed["drifted"] is True
    assert re.match(r"data drift against .* v1 .*reference.json: intensity \(PSI", drift.blocks(failed) or "")
    assert deploy.check_drift(with_action(dparams, "ignore"), stats(dataset(xb // 3, yb)))["checked"] is False


def test_data_of_other_classes_or_shape_is_not_comparable_and_goes_on(dparams: Params, digits: tuple) -> None:
    x, y = digits
    champion_with(dparams, drift.statistics([(x, y)], CLASSES))
    named = Dataset(splits={"train": Split(x, y)}, classes=tuple(f"c{i}" for i in range(10)))
    report = deploy.check_drift(with_action(dparams, "warn"), stats(named))
    assert report["checked"] is False and report["comparable"] is False and report["drifted"] is False
    assert "not comparable" in report["why"] and "'c0'" in report["why"] and drift.blocks(report) is None
    bigger = dataset(np.repeat(np.repeat(x, 2, axis=1), 2, axis=2), y)  # 16×16 images, the same classes
    assert "(8, 8, 1)" in deploy.check_drift(with_action(dparams, "warn"), stats(bigger))["why"]
    refused = deploy.check_drift(with_action(dparams, "fail"), stats(named))
    assert re.match(r"data not comparable .* \(validation.drift_action=fail\)", drift.blocks(refused) or "")


def test_a_champion_without_reference_statistics_is_not_comparable(dparams: Params, digits: tuple) -> None:
    champion_with(dparams, None)
    report = deploy.check_drift(with_action(dparams, "warn"), stats(dataset(*digits)))
    assert report["comparable"] is False and "cannot read it" in report["why"]


# ---------------------------------------------------------------------------------------------- texts

TEXT_CLASSES = ("ham", "spam")


def corpus(n: int, vocabulary: list[str], words: tuple[int, int] = (3, 30), seed: int = 0) -> tuple[np.ndarray, ...]:
    """``n`` texts of ``words`` (low, high) words drawn from ``vocabulary``, with punctuation and capitals that
    drift's word splitting removes."""
    rng = np.random.default_rng(seed)
    texts = [
        " ".join(rng.choice(vocabulary, rng.integers(*words))).capitalize() + rng.choice([".", "!", "?"])
        for _ in range(n)
    ]
    return np.array(texts, dtype=str), np.arange(n, dtype=np.int64) // 2 % 2  # balanced in both halves too


ENGLISH = [f"word{i}" for i in range(300)]


def text_compare(reference: tuple[np.ndarray, ...], current: tuple[np.ndarray, ...], params: Params) -> dict:
    """Scores as deploy computes them: a reference as train writes it, every word of the current data."""
    return drift.compare(
        drift.statistics([reference], TEXT_CLASSES), drift.statistics([current], TEXT_CLASSES, None), params.validation
    )


def test_text_statistics_count_words_lengths_and_labels() -> None:
    x = np.array(["Free entry, WIN now!", "ok lar...", "", "x " * 500], dtype=str)
    found = drift.statistics([(x[:2], np.array([0, 1])), (x[2:], np.array([1, 1]))], TEXT_CLASSES)
    assert found["kind"] == "text" and found["count"] == 4 and found["label_counts"] == {"ham": 1, "spam": 3}
    assert found["tokens"] == 4 + 2 + 500 and found["vocabulary"]["x"] == 500 and found["vocabulary"]["free"] == 1
    assert "entry," not in found["vocabulary"] and "lar" in found["vocabulary"]
    histogram = found["length_histogram"]
    assert len(histogram) == drift.BINS and histogram[0] == 0.75 and histogram[-1] == 0.25  # 500 words: the last bin
    assert drift.statistics([(x, np.zeros(4, int))], TEXT_CLASSES, vocabulary=1)["vocabulary"] == {"x": 500}
    assert drift.statistics([], TEXT_CLASSES)["kind"] == "images"  # nothing to tell: as before texts existed


def test_two_halves_of_the_same_texts_do_not_drift(params: Params) -> None:
    x, y = corpus(2000, ENGLISH)
    report = text_compare((x[::2], y[::2]), (x[1::2], y[1::2]), params)
    assert not report["drifted"], report["reasons"]
    assert report["length_psi"] < 0.05 and report["oov_rate"] == 0.0 and report["label_p_value"] > 0.5
    assert "intensity_psi" not in report


def test_longer_texts_drift_in_length_not_vocabulary(params: Params) -> None:
    report = text_compare(corpus(1000, ENGLISH), corpus(1000, ENGLISH, words=(60, 150), seed=1), params)
    assert report["drifted"] and report["length_psi"] > params.validation.drift_psi
    assert report["oov_rate"] == 0.0 and [r.split(" (")[0] for r in report["reasons"]] == ["text length"]


def test_new_words_drift_in_vocabulary_not_length(params: Params) -> None:
    other = ENGLISH[:150] + [f"new{i}" for i in range(150)]  # half the words unknown to the reference
    report = text_compare(corpus(1000, ENGLISH), corpus(1000, other, seed=1), params)
    assert report["drifted"] and report["oov_rate"] == pytest.approx(0.5, abs=0.05)
    assert report["length_psi"] < params.validation.drift_psi
    assert [r.split(" (")[0] for r in report["reasons"]] == ["vocabulary"]


def test_texts_and_images_are_not_comparable(dparams: Params, digits: tuple) -> None:
    x, y = corpus(200, ENGLISH)
    texts = stats(Dataset(splits={"train": Split(x, y)}, classes=CLASSES[:2]))
    images = drift.statistics([digits], CLASSES)
    assert (
        drift.comparable({**images, "label_counts": {"0": 1, "1": 1}}, texts) == "reference holds images, ingested text"
    )
    old = {k: v for k, v in images.items() if k != "kind"}  # written before texts existed: images
    assert "holds images" in drift.comparable(old, texts)
    assert (
        drift.comparable(drift.statistics([(x, y)], CLASSES), stats(dataset(*digits)))
        == "reference holds text, ingested images"
    )
    with pytest.raises(ValueError, match="cannot compare text statistics with a images reference"):
        drift.compare(images, drift.statistics([(x, y)], CLASSES[:2]), dparams.validation)
    champion_with(dparams, images)
    report = deploy.check_drift(with_action(dparams, "warn"), texts)
    assert report["comparable"] is False and "reference holds images, ingested text" in report["why"]


def test_check_texts_against_the_champions_text_reference(dparams: Params) -> None:
    x, y = corpus(1000, ENGLISH)
    train = Dataset(splits={"train": Split(x[::2], y[::2])}, classes=TEXT_CLASSES)
    write_dataset(Path(dparams.paths.clean), train, shard_size=100)
    drift.write_reference(open_dataset(Path(dparams.paths.clean)), dparams)
    reference = json.loads(Path(dparams.paths.reference_stats).read_text())
    assert reference == drift.statistics([(x[::2], y[::2])], TEXT_CLASSES)  # shard by shard = all at once
    champion_with(dparams, reference)
    same = Dataset(splits={"train": Split(x[1::2], y[1::2])}, classes=TEXT_CLASSES)
    checked = deploy.check_drift(with_action(dparams, "fail"), stats(same))
    assert checked["checked"] is True and checked["drifted"] is False and checked["oov_rate"] == 0.0
    new = corpus(500, [f"new{i}" for i in range(300)], seed=2)
    failed = deploy.check_drift(with_action(dparams, "fail"), stats(Dataset({"train": Split(*new)}, TEXT_CLASSES)))
    assert re.match(r"data drift against .*: vocabulary \(out-of-vocabulary rate 1.000", drift.blocks(failed) or "")
