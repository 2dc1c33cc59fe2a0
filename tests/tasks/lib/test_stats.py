"""tasks/lib/stats.py: content hashes and the per-shard summary table the suites check."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.lib import stats
from tasks.lib.errors import TrainflowError
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


def test_content_hashes_of_images_are_their_row_hashes() -> None:
    x = tiny_dataset(COUNTS).splits["train"].x
    np.testing.assert_array_equal(stats.content_hashes(x), stats.row_hashes(x.reshape(len(x), -1)))


def test_text_hashes_do_not_depend_on_the_array_width_and_differ_between_texts() -> None:
    texts = ["free entry", "ok lar", "", "ok lar ", "Ok lar", "a\ud800b", "naïve café"]
    narrow, wide = np.array(texts, dtype=str), np.array(texts, dtype="<U900")
    hashes = stats.content_hashes(narrow)
    assert hashes.shape == (7, 2) and hashes.dtype == np.uint64
    np.testing.assert_array_equal(hashes, stats.content_hashes(wide))
    assert len({tuple(h) for h in hashes.tolist()}) == 7  # a space, a capital, a lone surrogate all count
    assert stats.content_hashes(np.array([], dtype=str)).shape == (0, 2)


def test_text_summary_table_columns_and_values() -> None:
    x = np.array(["free entry", "ok lar", "   ", "", "a\ud800b", "call now"], dtype=str)
    y = np.array([0, 1, 0, 1, 0, 1])
    tokens = (np.array([2, 2, 0, 0, 1, 2]), np.array([1, 0, 0, 0, 1, 2]))
    train = stats.summarize("train", 0, x, y, tokens=tokens)
    # val: one text also in train (in an array of another width), one changed by the stage
    val_x = np.array(["ok lar", "brand new text"], dtype="<U40")
    val = stats.summarize(
        "val", 0, val_x, np.array([1, 0]), reference=np.array(["ok lar", "brand new"]), tokens=([2, 3], [0, 3])
    )
    assert train.kind == "text" and train.dtype == "str" and train.shape == ()
    table = stats.summary_table([train, val])
    expected = ["split", "shard", "label", "id", "texts", "dtype", "min_length", "max_length", "mean_length"]
    expected += ["empty", "non_utf8", "tokens", "oov_tokens", "oov_rate", "split_rows", "class_fraction"]
    assert list(table.columns) == [*expected, "split_label", "leaked_into_train", "changed_by_augment"]
    rows = table.set_index("id")
    zero, one = rows.loc["train/0/0"], rows.loc["train/0/1"]
    assert (zero["texts"], zero["dtype"], zero["min_length"], zero["max_length"]) == (3, "str", 3, 10)
    assert zero["mean_length"] == pytest.approx((10 + 3 + 3) / 3)
    assert (zero["empty"], zero["non_utf8"], one["empty"], one["non_utf8"]) == (1, 1, 1, 0)
    assert (zero["tokens"], zero["oov_tokens"], zero["oov_rate"]) == (3, 2, pytest.approx(2 / 3))
    assert (one["min_length"], one["oov_rate"]) == (0, pytest.approx(2 / 4))
    assert rows["split_rows"].to_dict() == {"train/0/0": 6, "train/0/1": 6, "val/0/0": 2, "val/0/1": 2}
    assert rows.loc["val/0/1", "leaked_into_train"] == 1 and rows.loc["val/0/0", "leaked_into_train"] == 0
    assert rows.loc["val/0/0", "changed_by_augment"] == 1 and rows.loc["val/0/1", "changed_by_augment"] == 0
    assert rows.loc["val/0/0", "oov_rate"] == 1.0


def test_text_summaries_without_tokens_have_no_token_columns_and_text_and_images_do_not_mix() -> None:
    text = stats.summarize("train", 0, np.array(["a b", "c"]), np.array([0, 1]))
    assert "oov_rate" not in stats.summary_table([text]) and "images" not in stats.summary_table([text])
    data = tiny_dataset(COUNTS)
    images = stats.summarize("val", 0, data.splits["val"].x, data.splits["val"].y)
    with pytest.raises(TrainflowError, match="both images and texts"):
        stats.summary_table([text, images])


def test_a_hundred_thousand_texts_summarise_with_one_long_text() -> None:
    rng = np.random.default_rng(0)
    words = np.array(["free", "entry", "ok", "lar", "win", "call", "now", "hello"])
    texts = [" ".join(rng.choice(words, rng.integers(0, 40))) for _ in range(100_000)]
    x, y = np.array([*texts[:-1], "x" * 900], dtype=str), rng.integers(0, 2, 100_000)
    table = stats.summary_table([stats.summarize("train", 0, x, y)])  # speed: benchmarks, not a timed test
    assert int(table["texts"].sum()) == 100_000 and int(table["max_length"].max()) == 900


def test_leak_check_counts_every_copy_when_train_repeats_one_text() -> None:
    """Five million copies of one tiny text took ingest 11 minutes: every shard gathered all train rows again."""
    import dataclasses

    texts, labels = np.full(40_000, "x"), np.arange(40_000) % 2
    train, val = (stats.summarize(split, 0, texts, labels) for split in ("train", "val"))
    summaries = [dataclasses.replace(s, shard=i) for s in (train, val) for i in range(50)]
    table = stats.summary_table(summaries)  # 0.3 s here; 50 s when each shard gathered the 2 million train rows
    assert table.loc[table["split"] == "val", "leaked_into_train"].sum() == 50 * 40_000
