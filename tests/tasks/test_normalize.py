"""tasks/normalize.py: it writes the statistics the model applies, never a copy of the data: scale to [0, 1], or
standardise with statistics from train only (texts: the train vocabulary and sequence length); statistics that would
blow pixels up, and a vocabulary that covers val or test poorly, are refused with one line."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tasks.lib import artifacts, parallel
from tasks.lib.artifacts import Dataset, Split, open_dataset, write_dataset
from tasks.lib.config import NormalizeParams, Params
from tasks.lib.errors import TrainflowError
from tasks.lib.vectorize import read_vocabulary
from tasks.normalize import channel_sums, check, check_oov, run, statistics
from tests.conftest import MakeDataset, load_params, tiny_texts
from tests.helpers import committed_params_file

PARAMS = load_params(committed_params_file())
SCALE = PARAMS.normalize.model_copy(update={"method": "scale"})
STANDARDIZE = PARAMS.normalize.model_copy(update={"method": "standardize"})
TINY_OUTPUT = 2048  # bytes: statistics (texts: and a small vocabulary), nothing the size of the data


def in_folder(tmp: str, params: Params, **sections: Any) -> Params:
    """``params`` with every path under ``tmp`` and ``sections`` replaced."""
    paths = {key: f"{tmp}/{value}" for key, value in params.paths.model_dump().items()}
    return params.model_copy(update={"paths": params.paths.model_copy(update=paths), **sections})


def normalize(dataset: Dataset, method: NormalizeParams, params: Params = PARAMS) -> tuple[dict[str, bytes], dict]:
    """tasks/normalize.py's run() on ``dataset`` as data/augmented: the files it wrote (name → bytes) and its report."""
    with tempfile.TemporaryDirectory() as tmp:
        config = in_folder(tmp, params, normalize=method)
        write_dataset(Path(config.paths.augmented), dataset)
        stats = run(config)
        out = Path(config.paths.normalized)
        files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
        assert stats["fitted_on"] == artifacts.fitted_on(open_dataset(Path(config.paths.augmented)))
        return files, stats


def without_source(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k != "fitted_on"}


@pytest.mark.parametrize("method", [SCALE, STANDARDIZE])
def test_normalize_writes_the_statistics_and_no_copy_of_the_images(
    make_dataset: MakeDataset, method: NormalizeParams
) -> None:
    files, stats = normalize(make_dataset(shape=(5, 5, 3)), method)
    assert list(files) == [artifacts.STATISTICS]  # no shards, no manifest: train reads the pixels from augmented
    assert json.loads(files[artifacts.STATISTICS]) == stats and stats["method"] == method.method
    assert sum(len(b) for b in files.values()) < TINY_OUTPUT


def test_scale_reads_no_pixel_and_standardize_only_train_shards(
    make_dataset: MakeDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = make_dataset({"train": 30, "val": 9, "test": 9})
    calls: list[tuple[str, Sequence[tuple]]] = []

    def recording(name: str, fn: Callable[..., Any], args: Sequence[tuple]) -> list[Any]:
        calls.append((name, args))
        return [fn(*a) for a in args]

    monkeypatch.setattr(parallel, "mapper", lambda settings: recording)  # what the stage maps, in this process
    normalize(dataset, SCALE)
    assert calls == []  # augment validated the pixels: nothing to read again
    normalize(dataset, STANDARDIZE)
    assert [(name, [a[1:] for a in args]) for name, args in calls] == [("normalize-statistics", [(0,)])]


def test_scale_is_the_identity_statistics(make_dataset: MakeDataset) -> None:
    _, stats = normalize(make_dataset(), SCALE)
    assert without_source(stats) == {"method": "scale", "scale": 1 / 255, "mean": [0.0], "std": [1.0]}


def test_standardize_uses_train_statistics_only(make_dataset: MakeDataset) -> None:
    dataset = make_dataset()
    other_val = Split(np.full_like(dataset.splits["val"].x, 250), dataset.splits["val"].y)
    changed = Dataset(splits={**dataset.splits, "val": other_val}, classes=dataset.classes)
    _, stats = normalize(dataset, STANDARDIZE)
    _, stats_changed = normalize(changed, STANDARDIZE)
    assert without_source(stats) == without_source(stats_changed)
    assert stats["fitted_on"]["val"] != stats_changed["fitted_on"]["val"]  # ... but they record which data they fit
    train = dataset.splits["train"].x.astype(np.float64) / 255
    np.testing.assert_allclose(stats["mean"], [train.mean()], rtol=1e-9)
    np.testing.assert_allclose(stats["std"], [train.std()], rtol=1e-9)


def test_constant_channel_std_falls_back_to_one() -> None:
    x = np.zeros((4, 2, 2, 2), dtype=np.uint8)
    x[..., 1] = np.arange(4)[:, None, None] * 60
    stats = statistics([channel_sums(x)], 2, STANDARDIZE)
    assert stats["std"][0] == 1.0 and stats["std"][1] > 0


def test_statistics_that_would_blow_pixels_up_are_refused(make_dataset: MakeDataset) -> None:
    dataset = make_dataset()
    train = dataset.splits["train"]
    nearly_constant = train.x.copy()
    nearly_constant[:] = 100
    nearly_constant[0, 0, 0, 0] = 101  # std ≈ 0.0002: pixel 0 would lie ~2,000 standard deviations away
    flat = Dataset(splits={**dataset.splits, "train": Split(nearly_constant, train.y)}, classes=dataset.classes)
    with pytest.raises(TrainflowError, match=r"validation.max_abs_standardized=50.0; a near-constant channel"):
        normalize(flat, STANDARDIZE)
    check(statistics([channel_sums(train.x)], 1, STANDARDIZE), PARAMS)  # ordinary images pass


def test_statistics_over_shards_equal_the_whole() -> None:
    x = np.random.default_rng(0).integers(0, 256, (50, 4, 4, 3), dtype=np.uint8)
    whole = statistics([channel_sums(x)], 3, STANDARDIZE)
    sharded = statistics([channel_sums(x[:20]), channel_sums(x[20:45]), channel_sums(x[45:])], 3, STANDARDIZE)
    np.testing.assert_allclose(sharded["mean"], whole["mean"], rtol=1e-12)
    np.testing.assert_allclose(sharded["std"], whole["std"], rtol=1e-12)
    np.testing.assert_allclose(whole["std"], (x / 255).reshape(-1, 3).std(axis=0), rtol=1e-9)


# --- text ---

LENIENT = PARAMS.model_copy(update={"validation": PARAMS.validation.model_copy(update={"max_oov_rate": 1.0})})


def test_text_vocabulary_and_sequence_length_are_fitted_on_train_only() -> None:
    train = Split(np.array(["free cash now", "free prize", "see you home later ok", "ok"], dtype=str), np.arange(4) % 2)
    val = Split(np.array(["free unseen", "ok later"], dtype=str), np.array([0, 1]))
    test = Split(np.array(["cash", "never seen words"], dtype=str), np.array([0, 1]))
    dataset = Dataset(splits={"train": train, "val": val, "test": test}, classes=("spam", "ham"))
    files, stats = normalize(dataset, SCALE.model_copy(update={"sequence_quantile": 0.5}), LENIENT)
    assert stats["method"] == "vocabulary" and json.loads(files[artifacts.STATISTICS]) == stats
    assert stats["sequence_length"] == 3  # the median of train's 3, 2, 5, 1 words (2.5), rounded up
    assert stats["vocabulary_size"] == 2 + 9  # padding, [UNK] and train's 9 distinct words
    assert stats["oov_rate"] == {"train": 0.0, "val": 0.25, "test": 0.75}


def test_normalize_writes_the_vocabulary_and_no_copy_of_the_texts() -> None:
    files, stats = normalize(tiny_texts(), SCALE, LENIENT)
    assert sorted(files) == sorted([artifacts.STATISTICS, stats["vocabulary"]])  # no shards, no manifest
    assert sum(len(b) for b in files.values()) < TINY_OUTPUT


def test_text_vocabulary_is_stored_by_name_and_capped() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = in_folder(tmp, LENIENT, normalize=SCALE.model_copy(update={"vocabulary_size": 5}))
        write_dataset(Path(config.paths.augmented), tiny_texts())
        stats = run(config)
        vocabulary = read_vocabulary(Path(config.paths.normalized), stats)
    assert vocabulary[:2] == ["", "[UNK]"] and len(vocabulary) == 5 == stats["vocabulary_size"]
    assert stats["oov_rate"]["train"] > 0  # words beyond the 3 most frequent are [UNK]


def test_text_oov_beyond_the_limit_fails_with_one_line_naming_the_split_and_rate() -> None:
    train = Split(np.array(["free cash", "see you"] * 3, dtype=str), np.arange(6) % 2)
    val = Split(np.array(["free zebra", "see you"], dtype=str), np.array([0, 1]))  # 1 of 4 words unknown
    test = Split(np.array(["zebra quokka", "yak gnu"], dtype=str), np.array([0, 1]))  # every word unknown
    dataset = Dataset(splits={"train": train, "val": val, "test": test}, classes=("spam", "ham"))
    with tempfile.TemporaryDirectory() as tmp:
        config = in_folder(tmp, PARAMS, normalize=SCALE)
        write_dataset(Path(config.paths.augmented), dataset)
        with pytest.raises(TrainflowError) as info:
            run(config)
        assert not Path(config.paths.normalized).exists()  # nothing published
    message = str(info.value)
    assert message == (
        f"{config.paths.augmented}: test has 1.0000 of its words outside the train vocabulary, beyond "
        f"validation.max_oov_rate=0.5 (normalize.vocabulary_size={SCALE.vocabulary_size})"
    )


def test_only_val_and_test_oov_rates_are_checked() -> None:
    check_oov({"train": 0.9, "val": 0.5, "test": 0.1}, PARAMS)  # train's own rate: rare words cut by the size
    with pytest.raises(TrainflowError, match=r": val has 0\.5001 of its words outside .*\.max_oov_rate=0\.5 "):
        check_oov({"train": 0.0, "val": 0.5001, "test": 0.0}, PARAMS)
