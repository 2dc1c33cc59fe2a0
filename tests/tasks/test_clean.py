"""tasks/clean.py: what is removed, what is kept, and the report's exact counts."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tasks.clean import inspect
from tasks.lib.artifacts import Dataset, Split, content_hash
from tasks.lib.config import CleanParams, Params
from tasks.lib.errors import TrainflowError
from tests.conftest import MakeDataset, load_params, run_stage_on, tiny_texts
from tests.helpers import committed_params_file

LENIENT = CleanParams(max_removed_fraction=1.0, max_chars=5000)
PARAMS = load_params(committed_params_file())


def clean(dataset: Dataset, params: CleanParams, config: Params = PARAMS) -> tuple[Dataset, dict]:
    """tasks/clean.py's run() on ``dataset`` as data/raw (one shard per split, or ``data.shard_size``)."""
    return run_stage_on("clean", dataset, config, clean=params)


def with_split(dataset: Dataset, name: str, x: np.ndarray, y: np.ndarray) -> Dataset:
    return Dataset(splits={**dataset.splits, name: Split(x, y)}, classes=dataset.classes, info=dataset.info)


def test_clean_data_passes_untouched(make_dataset: MakeDataset) -> None:
    dataset = make_dataset()
    cleaned, report = clean(dataset, LENIENT)
    for name, split in dataset.splits.items():
        assert content_hash(cleaned.splits[name]) == content_hash(split)
    assert report["removed_total"] == 0 and report["input_total"] == 48
    assert cleaned.info["clean"] == report


def test_each_reason_counted_exactly(make_dataset: MakeDataset) -> None:
    base = make_dataset({"train": 13, "val": 6, "test": 6})  # 10-12 keep every class in train
    tx, ty = base.splits["train"].x.copy(), base.splits["train"].y.copy()
    vx, vy = base.splits["val"].x.copy(), base.splits["val"].y.copy()
    test = base.splits["test"]
    tx[1] = tx[0]  # duplicate of image 0
    tx[2] = tx[0]  # second duplicate
    tx[3] = 7  # constant
    ty[4] = 3  # not a class (3 classes)
    ty[5] = -1  # not a class
    tx[6] = vx[0]  # leaked into val
    tx[7] = test.x[5]  # leaked into test
    vx[2] = vx[1]  # val duplicate
    vx[3] = 0  # val blank
    dataset = with_split(with_split(base, "train", tx, ty), "val", vx, vy)

    cleaned, report = clean(dataset, LENIENT)

    assert report["removed"]["train"] == {"bad_label": 2, "constant": 1, "duplicate": 2, "leak": 2}
    assert report["removed"]["val"] == {"bad_label": 0, "constant": 1, "duplicate": 1, "leak": 0}
    assert report["removed"]["test"] == {"bad_label": 0, "constant": 0, "duplicate": 0, "leak": 0}
    assert report["removed_total"] == 9 and report["input_total"] == 25
    keep_train = [0, 8, 9, 10, 11, 12]
    np.testing.assert_array_equal(cleaned.splits["train"].x, tx[keep_train])
    np.testing.assert_array_equal(cleaned.splits["train"].y, ty[keep_train])
    keep_val = [0, 1, 4, 5]
    np.testing.assert_array_equal(cleaned.splits["val"].x, vx[keep_val])
    np.testing.assert_array_equal(cleaned.splits["val"].y, vy[keep_val])
    assert content_hash(cleaned.splits["test"]) == content_hash(test)


def test_duplicates_keep_the_first_copy_even_with_another_label(make_dataset: MakeDataset) -> None:
    base = make_dataset({"train": 5, "val": 3, "test": 3})
    x, y = base.splits["train"].x.copy(), np.array([2, 0, 1, 1, 0])
    x[3] = x[1]  # later copy with label 1; the first (label 0) stays
    cleaned, report = clean(with_split(base, "train", x, y), LENIENT)
    np.testing.assert_array_equal(cleaned.splits["train"].y, [2, 0, 1, 0])
    np.testing.assert_array_equal(cleaned.splits["train"].x, x[[0, 1, 2, 4]])
    assert report["removed"]["train"]["duplicate"] == 1


def test_duplicate_of_a_bad_label_image_keeps_the_valid_copy(make_dataset: MakeDataset) -> None:
    base = make_dataset({"train": 4, "val": 3, "test": 3})
    x, y = base.splits["train"].x.copy(), np.array([9, 0, 1, 2])
    x[1] = x[0]
    cleaned, report = clean(with_split(base, "train", x, y), LENIENT)
    assert report["removed"]["train"] == {"bad_label": 1, "constant": 0, "duplicate": 0, "leak": 0}
    np.testing.assert_array_equal(cleaned.splits["train"].y, [0, 1, 2])


def test_leak_only_checks_train(make_dataset: MakeDataset) -> None:
    base = make_dataset({"train": 6, "val": 3, "test": 3})
    vx = base.splits["val"].x.copy()
    vx[0] = base.splits["test"].x[0]  # the same image in val and test is not train leakage
    cleaned, report = clean(with_split(base, "val", vx, base.splits["val"].y), LENIENT)
    assert report["removed_total"] == 0
    assert len(cleaned.splits["val"].y) == 3 and len(cleaned.splits["test"].y) == 3


def test_too_much_removed_fails(make_dataset: MakeDataset) -> None:
    base = make_dataset({"train": 10, "val": 5, "test": 5})
    y = base.splits["train"].y.copy()
    y[:5] = 99  # 5 of 20 images = 25%
    dataset = with_split(base, "train", base.splits["train"].x, y)
    expected = r"remove 5 of 20 images \(25\.0%\).*clean\.max_removed_fraction=0\.2"
    with pytest.raises(TrainflowError, match=expected):
        clean(dataset, CleanParams(max_removed_fraction=0.2, max_chars=5000))
    _, report = clean(
        dataset, CleanParams(max_removed_fraction=0.25, max_chars=5000)
    )  # exactly at the limit is allowed
    assert report["removed_total"] == 5


def test_zero_tolerance(make_dataset: MakeDataset) -> None:
    base = make_dataset()
    assert clean(base, CleanParams(max_removed_fraction=0.0, max_chars=5000))[1]["removed_total"] == 0
    x = base.splits["test"].x.copy()
    x[0] = 0
    with pytest.raises(TrainflowError, match="clean would remove 1 of 48"):
        clean(with_split(base, "test", x, base.splits["test"].y), CleanParams(max_removed_fraction=0.0, max_chars=5000))


def test_content_hashes_equal_exactly_for_equal_images() -> None:
    x = np.zeros((3, 2, 2, 1), dtype=np.uint8)
    x[1, 0, 0, 0] = 1
    _, _, hashes = inspect(x, np.zeros(3, dtype=np.int64), 1, LENIENT)
    assert (hashes[0] == hashes[2]).all() and (hashes[0] != hashes[1]).any()


def test_duplicates_and_leaks_are_found_across_shards(make_dataset: MakeDataset) -> None:
    base = make_dataset({"train": 9, "val": 4, "test": 4})
    tx = base.splits["train"].x.copy()
    tx[7] = tx[1]  # a duplicate in another shard (shards of 3)
    tx[8] = base.splits["test"].x[3]  # leaked into test's second shard
    sharded = PARAMS.model_copy(update={"data": PARAMS.data.model_copy(update={"shard_size": 3})})
    cleaned, report = clean(with_split(base, "train", tx, base.splits["train"].y), LENIENT, sharded)
    assert report["removed"]["train"] == {"bad_label": 0, "constant": 0, "duplicate": 1, "leak": 1}
    np.testing.assert_array_equal(cleaned.splits["train"].x, tx[:7])


# --- text ---


def test_text_empty_too_long_duplicate_and_leak_counted_per_reason() -> None:
    base = tiny_texts({"train": 12, "val": 4, "test": 4})
    tx, ty = base.splits["train"].x.tolist(), base.splits["train"].y.copy()
    tx[0], tx[1] = "", "  \t "  # empty, whitespace only
    tx[2] = "free " * 30  # 150 characters: over max_chars
    tx[3] = tx[4]  # a duplicate within train
    tx[5] = str(base.splits["test"].x[0])  # leaked into test
    dataset = with_split(base, "train", np.array(tx, dtype=str), ty)
    cleaned, report = clean(dataset, CleanParams(max_removed_fraction=1.0, max_chars=100))
    assert report["removed"]["train"] == {
        "bad_label": 0,
        "empty": 2,
        "too_long": 1,
        "duplicate": 1,
        "leak": 1,
    }
    kept = cleaned.splits["train"].x.tolist()
    assert len(kept) == 7 and tx[4] in kept and tx[5] not in kept and "" not in kept
    assert cleaned.splits["test"].x.tolist() == base.splits["test"].x.tolist()


def test_text_duplicates_are_found_whatever_the_shards_widths() -> None:
    # NumPy pads texts to the longest of their array: the same text in a shard of longer texts is still a duplicate
    short = np.array(["ok see you"], dtype=str)
    wide = np.array(["ok see you", "x" * 60], dtype="<U80")
    keys = [inspect(x, np.zeros(len(x), dtype=np.int64), 1, LENIENT)[2][0] for x in (short, wide)]
    assert (keys[0] == keys[1]).all()


def with_ids(dataset: Dataset) -> Dataset:
    """``dataset`` with source ids ``SPLIT/I.png``."""
    splits = {
        n: Split(s.x, s.y, np.array([f"{n}/{i}.png" for i in range(len(s.y))])) for n, s in dataset.splits.items()
    }
    return Dataset(splits, dataset.classes)


def test_the_review_drops_and_relabels_by_source_id_and_counts_each(make_dataset: MakeDataset, tmp_path: Path) -> None:
    """A person's review: two drops, one relabel (one to the label it has: no change), counted by reason; the source
    ids stay with their items. Fails if clean ignores paths.review (mutation: ``review = {}`` in run())."""
    review = tmp_path / "review.csv"
    review.write_text(
        "id,action,label\ntrain/3.png,drop,\ntest/1.png,drop,\ntrain/4.png,relabel,c0\n"
        "train/6.png,relabel,c0\ngone/1.png,drop,\n"
    )
    dataset = with_ids(make_dataset({"train": 12, "val": 6, "test": 6}))  # train/4.png is c1, train/6.png c0
    config = PARAMS.model_copy(update={"paths": PARAMS.paths.model_copy(update={"review": str(review)})})
    cleaned, report = clean(dataset, LENIENT, config)
    assert report["removed"]["train"]["excluded_by_review"] == 1
    assert report["removed"]["test"]["excluded_by_review"] == 1
    assert report["review"]["relabelled_by_review"] == {"train": 1, "val": 0, "test": 0}
    assert report["review"]["unmatched"] == 1 and report["review"]["unmatched_examples"] == ["gone/1.png"]
    train = cleaned.splits["train"]
    assert "train/3.png" not in train.ids.tolist() and "test/1.png" not in cleaned.splits["test"].ids.tolist()
    relabelled = train.ids.tolist().index("train/4.png")
    assert train.y[relabelled] == 0
    np.testing.assert_array_equal(train.x[relabelled], dataset.splits["train"].x[4])  # the id stays with its image


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("source,what\n", ":1: the header must be id,action,label"),
        ("id,action,label\na,keep,\n", ":2: action 'keep' for 'a' (drop or relabel)"),
        ("id,action,label\na,relabel,c9\n", ":2: relabel 'a' to 'c9', not one of"),
        ("id,action,label\na,drop,\na,drop,\n", ":3: 'a' is listed twice"),
    ],
)
def test_a_bad_review_is_one_line_naming_the_line(text: str, message: str) -> None:
    """Each mistake in the review file is refused with its line (mutation: no action check → a ValueError)."""
    from tasks.clean import parse_review

    with pytest.raises(TrainflowError, match=re.escape("review.csv" + message)):
        parse_review(text, ("c0", "c1"), "review.csv")
