"""tasks/lib/stats.py: content hashes and the per-shard summary table the suites check."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.lib import stats
from tests.conftest import tiny_dataset

COUNTS = {"train": 30, "val": 12, "test": 12}


def test_summary_table_has_a_row_per_split_shard_and_label() -> None:
    data = tiny_dataset(COUNTS)
    table = stats.summary_table(stats.summarize_dataset(data, shard_size=20))
    for column in ("split", "shard", "label", "images", "height", "width", "channels", "dtype", "min", "max", "mean"):
        assert column in table
    assert {"std", "nan_count", "split_rows", "class_fraction", "leaked_into_train"} <= set(table.columns)
    assert len(table) == 3 * 2 + 3 + 3 and table["id"].is_unique  # train is cut into shards of 20 and 10
    assert table.groupby("split", sort=False)["images"].sum().to_dict() == COUNTS
    first = table.iloc[0]
    images = data.splits["train"].x[:20][data.splits["train"].y[:20] == 0]
    assert (first["split"], first["shard"], first["label"], first["images"]) == ("train", 0, 0, len(images))
    assert (first["height"], first["width"], first["channels"]) == (6, 6, 1)
    assert first["min"] == images.min() and first["max"] == images.max()
    assert first["mean"] == pytest.approx(images.mean()) and first["std"] == pytest.approx(images.std(), rel=1e-6)
    np.testing.assert_allclose(table.loc[table["split"] == "train", "class_fraction"], 1 / 3)


def test_row_hashes_equal_for_equal_images_and_change_with_a_pixel() -> None:
    x = tiny_dataset(COUNTS).splits["train"].x.reshape(30, -1)
    hashes = stats.row_hashes(x)
    assert len({tuple(h) for h in hashes.tolist()}) == 30
    same = stats.row_hashes(np.concatenate([x[:1], x[:1]]))
    assert (same[0] == same[1]).all() and (same[0] == hashes[0]).all()
    changed = x[:1].copy()
    changed[0, -1] ^= 1
    assert (stats.row_hashes(changed)[0] != same[0]).any()
    assert stats.row_hashes(x[:0]).shape == (0, 2)
