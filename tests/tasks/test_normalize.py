"""tasks/normalize.py: the pixels pass unchanged (uint8) with the statistics the model applies: scale to [0, 1], or
standardise with statistics from train only; statistics that would blow pixels up are refused."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from tasks.lib.artifacts import Dataset, Split, open_dataset, write_dataset
from tasks.lib.config import NormalizeParams
from tasks.lib.errors import TrainflowError
from tasks.lib.vectorize import read_vocabulary
from tasks.normalize import channel_sums, check, run, statistics
from tests.conftest import REPO, MakeDataset, load_params, run_stage_on, tiny_texts

PARAMS = load_params(REPO / "params.yaml")


def normalize(dataset: Dataset, params: NormalizeParams) -> tuple[Dataset, dict]:
    """tasks/normalize.py's run() on ``dataset`` as data/augmented."""
    return run_stage_on("normalize", dataset, PARAMS, normalize=params)


SCALE = PARAMS.normalize.model_copy(update={"method": "scale"})
STANDARDIZE = PARAMS.normalize.model_copy(update={"method": "standardize"})


@pytest.mark.parametrize("method", [SCALE, STANDARDIZE])
def test_pixels_pass_unchanged_as_uint8_with_the_statistics(make_dataset: MakeDataset, method: NormalizeParams) -> None:
    dataset = make_dataset(shape=(5, 5, 3))
    out, stats = normalize(dataset, method)
    for name, split in out.splits.items():
        assert split.x.dtype == np.uint8
        np.testing.assert_array_equal(split.x, dataset.splits[name].x)
        np.testing.assert_array_equal(split.y, dataset.splits[name].y)
    assert out.info["normalize"] == stats and stats["method"] == method.method


def test_scale_is_the_identity_statistics(make_dataset: MakeDataset) -> None:
    _, stats = normalize(make_dataset(), SCALE)
    assert stats == {"method": "scale", "scale": 1 / 255, "mean": [0.0], "std": [1.0]}


def test_standardize_uses_train_statistics_only(make_dataset: MakeDataset) -> None:
    dataset = make_dataset()
    other_val = Split(np.full_like(dataset.splits["val"].x, 250), dataset.splits["val"].y)
    changed = Dataset(splits={**dataset.splits, "val": other_val}, classes=dataset.classes)
    _, stats = normalize(dataset, STANDARDIZE)
    _, stats_changed = normalize(changed, STANDARDIZE)
    assert stats == stats_changed
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


def test_text_vocabulary_and_sequence_length_are_fitted_on_train_only(tmp_path: Path) -> None:
    train = Split(np.array(["free cash now", "free prize", "see you home later ok", "ok"], dtype=str), np.arange(4) % 2)
    val = Split(np.array(["free unseen", "ok later"], dtype=str), np.array([0, 1]))
    test = Split(np.array(["cash", "never seen words"], dtype=str), np.array([0, 1]))
    dataset = Dataset(splits={"train": train, "val": val, "test": test}, classes=("spam", "ham"))
    lenient = PARAMS.model_copy(update={"validation": PARAMS.validation.model_copy(update={"max_oov_rate": 1.0})})
    out, stats = run_stage_on(
        "normalize", dataset, lenient, normalize=SCALE.model_copy(update={"sequence_quantile": 0.5})
    )
    for name, split in dataset.splits.items():  # the texts pass unchanged
        assert out.splits[name].x.tolist() == split.x.tolist()
    assert stats["method"] == "vocabulary" and out.info["normalize"] == stats
    assert stats["sequence_length"] == 3  # the median of train's 3, 2, 5, 1 words (2.5), rounded up
    assert stats["vocabulary_size"] == 2 + 9  # padding, [UNK] and train's 9 distinct words
    assert stats["oov_rate"] == {"train": 0.0, "val": 0.25, "test": 0.75}


def test_text_vocabulary_is_stored_with_the_data_and_capped(tmp_path: Path) -> None:
    dataset = tiny_texts()
    with tempfile.TemporaryDirectory() as tmp:
        config = PARAMS.model_copy(
            update={
                "paths": PARAMS.paths.model_copy(
                    update={k: f"{tmp}/{v}" for k, v in PARAMS.paths.model_dump().items()}
                ),
                "normalize": SCALE.model_copy(update={"vocabulary_size": 5}),
                "validation": PARAMS.validation.model_copy(update={"min_images": 1, "max_oov_rate": 1.0}),
            }
        )
        write_dataset(Path(config.paths.augmented), dataset)
        stats = run(config)
        stored = open_dataset(Path(config.paths.normalized))
        vocabulary = read_vocabulary(stored)
    assert vocabulary[:2] == ["", "[UNK]"] and len(vocabulary) == 5 == stats["vocabulary_size"]
    assert stats["oov_rate"]["train"] > 0  # words beyond the 3 most frequent are [UNK]


def test_text_oov_beyond_the_limit_fails_validation() -> None:
    train = Split(np.array(["free cash", "see you"] * 3, dtype=str), np.arange(6) % 2)
    odd = Split(np.array(["zebra quokka", "yak gnu"], dtype=str), np.array([0, 1]))
    dataset = Dataset(splits={"train": train, "val": odd, "test": odd}, classes=("spam", "ham"))
    with pytest.raises(TrainflowError, match=r"validation normalized failed.*oov_rate"):
        normalize(dataset, SCALE)
