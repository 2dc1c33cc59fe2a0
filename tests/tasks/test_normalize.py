"""tasks/normalize.py: scale to [0, 1], or standardise with statistics from train only."""

from __future__ import annotations

import numpy as np

from tasks.lib.artifacts import Dataset, Split
from tasks.lib.config import NormalizeParams
from tasks.normalize import apply, channel_sums, statistics
from tests.conftest import REPO, MakeDataset, load_params, run_stage_on

PARAMS = load_params(REPO / "params.yaml")


def normalize(dataset: Dataset, params: NormalizeParams) -> tuple[Dataset, dict]:
    """tasks/normalize.py's run() on ``dataset`` as data/augmented."""
    return run_stage_on("normalize", dataset, PARAMS, normalize=params)


SCALE = NormalizeParams(method="scale")
STANDARDIZE = NormalizeParams(method="standardize")


def test_scale_maps_to_unit_interval_float32(make_dataset: MakeDataset) -> None:
    dataset = make_dataset()
    out, stats = normalize(dataset, SCALE)
    assert stats == {"method": "scale", "scale": 1 / 255, "mean": [0.0], "std": [1.0]}
    for name, split in out.splits.items():
        assert split.x.dtype == np.float32
        assert split.x.min() == 0.0 and split.x.max() == 1.0
        np.testing.assert_allclose(split.x, dataset.splits[name].x / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(split.y, dataset.splits[name].y)
    assert out.info["normalize"] == stats


def test_standardize_gives_train_zero_mean_unit_std(make_dataset: MakeDataset) -> None:
    dataset = make_dataset(shape=(5, 5, 3))
    out, stats = normalize(dataset, STANDARDIZE)
    train = out.splits["train"].x.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train.std(axis=0), 1.0, atol=1e-5)
    assert len(stats["mean"]) == 3 and len(stats["std"]) == 3
    assert all(s.x.dtype == np.float32 for s in out.splits.values())


def test_standardize_uses_train_statistics_only(make_dataset: MakeDataset) -> None:
    dataset = make_dataset()
    other_val = Split(np.full_like(dataset.splits["val"].x, 250), dataset.splits["val"].y)
    changed = Dataset(splits={**dataset.splits, "val": other_val}, classes=dataset.classes)
    _, stats = normalize(dataset, STANDARDIZE)
    out, stats_changed = normalize(changed, STANDARDIZE)
    assert stats == stats_changed
    train = dataset.splits["train"].x.astype(np.float64) / 255
    np.testing.assert_allclose(stats["mean"], [train.mean()], rtol=1e-9)
    np.testing.assert_allclose(stats["std"], [train.std()], rtol=1e-9)
    expected = (250 / 255 - stats["mean"][0]) / stats["std"][0]
    np.testing.assert_allclose(out.splits["val"].x, expected, rtol=1e-5)


def test_constant_channel_std_falls_back_to_one() -> None:
    x = np.zeros((4, 2, 2, 2), dtype=np.uint8)
    x[..., 1] = np.arange(4)[:, None, None] * 60
    stats = statistics([channel_sums(x)], 2, STANDARDIZE)
    assert stats["std"][0] == 1.0 and stats["std"][1] > 0
    assert np.isfinite(apply(x, stats)).all()


def test_apply_matches_the_formula() -> None:
    x = np.array([[[[0], [51]], [[102], [255]]]], dtype=np.uint8)
    stats = {"method": "standardize", "scale": 1 / 255, "mean": [0.5], "std": [0.25]}
    np.testing.assert_allclose(apply(x, stats)[0, ..., 0], [[-2.0, -1.2], [-0.4, 2.0]], rtol=1e-6)


def test_statistics_over_shards_equal_the_whole() -> None:
    x = np.random.default_rng(0).integers(0, 256, (50, 4, 4, 3), dtype=np.uint8)
    whole = statistics([channel_sums(x)], 3, STANDARDIZE)
    sharded = statistics([channel_sums(x[:20]), channel_sums(x[20:45]), channel_sums(x[45:])], 3, STANDARDIZE)
    np.testing.assert_allclose(sharded["mean"], whole["mean"], rtol=1e-12)
    np.testing.assert_allclose(sharded["std"], whole["std"], rtol=1e-12)
    np.testing.assert_allclose(whole["std"], (x / 255).reshape(-1, 3).std(axis=0), rtol=1e-9)
