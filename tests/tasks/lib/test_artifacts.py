"""tasks/artifacts.py: dataset round trip, content hashes, atomic folders and files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tasks.lib.artifacts import (
    Dataset,
    Split,
    atomic_dir,
    content_hash,
    open_dataset,
    read_dataset,
    read_json,
    write_bytes,
    write_dataset,
    write_json,
)
from tasks.lib.errors import TrainflowError
from tests.conftest import MakeDataset


def test_write_read_roundtrip(tmp_path: Path, make_dataset: MakeDataset) -> None:
    dataset = make_dataset()
    dataset = Dataset(splits=dataset.splits, classes=dataset.classes, info={"source": "digits"})
    manifest = write_dataset(tmp_path / "raw", dataset)
    assert manifest["splits"]["train"]["count"] == 30
    assert manifest["splits"]["train"]["class_counts"] == {"c0": 10, "c1": 10, "c2": 10}
    assert manifest["shape"] == [6, 6, 1] and manifest["dtype"] == "uint8"
    assert json.loads((tmp_path / "raw" / "manifest.json").read_text()) == manifest
    for mmap in (False, True):
        back = read_dataset(tmp_path / "raw", mmap=mmap)
        assert back.classes == dataset.classes and dict(back.info) == {"source": "digits"}
        assert list(back.splits) == ["train", "val", "test"]
        for name, split in dataset.splits.items():
            np.testing.assert_array_equal(back.splits[name].x, split.x)
            np.testing.assert_array_equal(back.splits[name].y, split.y)
            assert back.splits[name].x.dtype == split.x.dtype
            (shard,) = manifest["splits"][name]["shards"]  # no shard size: one shard per split
            assert content_hash(back.splits[name]) == shard["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_shards_hold_at_most_shard_size_images_and_read_back_in_order(
    tmp_path: Path, make_dataset: MakeDataset
) -> None:
    dataset = make_dataset({"train": 30, "val": 9, "test": 0})
    manifest = write_dataset(tmp_path / "d", dataset, shard_size=7)
    train = manifest["splits"]["train"]
    assert [s["count"] for s in train["shards"]] == [7, 7, 7, 7, 2]
    assert [s["count"] for s in manifest["splits"]["val"]["shards"]] == [7, 2]
    assert [s["count"] for s in manifest["splits"]["test"]["shards"]] == [0]  # an empty split keeps one empty shard
    assert sorted(p.name for p in (tmp_path / "d" / "train").iterdir())[:2] == ["x-00000.npy", "x-00001.npy"]
    stored = open_dataset(tmp_path / "d")
    assert stored.shard_counts("train") == [7, 7, 7, 7, 2] and stored.count("train") == 30
    np.testing.assert_array_equal(stored.shard("train", 1).x, dataset.splits["train"].x[7:14])
    np.testing.assert_array_equal(stored.load("train").y, dataset.splits["train"].y)
    whole = stored.load("train")
    np.testing.assert_array_equal(whole.x, dataset.splits["train"].x)
    assert stored.load("test").x.shape == (0, 6, 6, 1)
    for entry, shard in zip(train["shards"], stored.shards("train"), strict=True):
        assert entry["sha256"] == content_hash(shard)
    # The split's hash covers every shard: another shard size (same images) is another artifact.
    other = write_dataset(tmp_path / "e", dataset, shard_size=10)
    assert other["splits"]["train"]["sha256"] != train["sha256"]
    assert other["splits"]["train"]["class_counts"] == train["class_counts"] == {"c0": 10, "c1": 10, "c2": 10}


def test_a_shard_that_disagrees_with_the_manifest_is_named(tmp_path: Path, make_dataset: MakeDataset) -> None:
    write_dataset(tmp_path / "d", make_dataset(), shard_size=10)
    np.save(tmp_path / "d" / "train" / "x-00001.npy", np.zeros((3, 6, 6, 1), np.uint8))
    stored = open_dataset(tmp_path / "d")
    stored.shard("train", 0)
    with pytest.raises(TrainflowError, match=r"d/train: shard 1 has 3 images and 10 labels, the manifest says 10"):
        stored.shard("train", 1)


def test_a_manifest_without_shards_asks_for_a_rerun(tmp_path: Path) -> None:
    write_json(tmp_path / "d" / "manifest.json", {"classes": ["a"], "splits": {"train": {"count": 1}}})
    with pytest.raises(TrainflowError, match=r"d/manifest\.json: not a sharded dataset manifest"):
        open_dataset(tmp_path / "d")


def test_content_hash_changes_with_data_dtype_and_shape() -> None:
    x = np.zeros((2, 3, 3, 1), np.uint8)
    y = np.array([0, 1])
    base = content_hash(Split(x, y))
    assert content_hash(Split(x.copy(), y.copy())) == base
    changed = x.copy()
    changed[1, 2, 2, 0] = 1
    assert content_hash(Split(changed, y)) != base
    assert content_hash(Split(x, np.array([1, 0]))) != base
    assert content_hash(Split(x.astype(np.float32), y)) != base
    assert content_hash(Split(x.reshape(2, 9, 1, 1), y)) != base


def test_split_lengths_must_agree() -> None:
    with pytest.raises(TrainflowError, match="3 images but 2 labels"):
        Split(np.zeros((3, 2, 2, 1)), np.zeros(2))


def test_atomic_dir_replaces_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_dir(target) as tmp:
        assert tmp != target and tmp.parent == tmp_path and not any(tmp.iterdir())
        (tmp / "new.txt").write_text("new")
        assert (target / "old.txt").exists()  # not replaced until the body succeeds
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_keeps_old_folder_when_the_body_raises(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_dir(target) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("boom")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    assert (target / "old.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_creates_parents_and_replaces_a_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    target.parent.mkdir()
    target.write_text("was a file")
    with atomic_dir(target) as tmp:
        (tmp / "x").write_text("x")
    assert target.is_dir() and (target / "x").read_text() == "x"
    assert [p.name for p in target.parent.iterdir()] == ["b"]


def test_write_bytes_is_atomic_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "file.bin"
    write_bytes(path, b"one")
    write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in path.parent.iterdir()] == ["file.bin"]
    assert path.stat().st_mode & 0o777 == 0o644


def test_write_dataset_failure_keeps_previous_output(tmp_path: Path, make_dataset: MakeDataset) -> None:
    target = tmp_path / "clean"
    write_dataset(target, make_dataset())
    before = (target / "manifest.json").read_text()
    good = make_dataset({"train": 4})
    bad = Dataset(splits={**good.splits, "no/such/folder": good.splits["train"]}, classes=good.classes)
    with pytest.raises(FileNotFoundError):  # the split's folder cannot be made inside the temporary folder
        write_dataset(target, bad)
    assert (target / "manifest.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["clean"]


def test_json_roundtrip_and_errors(tmp_path: Path) -> None:
    write_json(tmp_path / "m.json", {"a": [1, 2]})
    assert read_json(tmp_path / "m.json") == {"a": [1, 2]}
    with pytest.raises(TrainflowError, match=r"absent\.json: not found"):
        read_json(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(TrainflowError, match=r"bad\.json: not valid JSON"):
        read_json(tmp_path / "bad.json")


def test_read_dataset_missing_split_file_named(tmp_path: Path, make_dataset: MakeDataset) -> None:
    write_dataset(tmp_path / "d", make_dataset())
    (tmp_path / "d" / "val" / "y-00000.npy").unlink()
    with pytest.raises(TrainflowError, match=r"d/val: cannot read shard 0"):
        read_dataset(tmp_path / "d")


def test_a_killed_writers_leftovers_are_removed_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "raw"
    leftovers = [tmp_path / ".raw.k1ll3d.tmp", tmp_path / ".raw.old-0badc0de", tmp_path / ".model.keras.x.tmp.keras"]
    leftovers[0].mkdir()
    (leftovers[0] / "x-00000.npy").write_bytes(b"half")
    leftovers[1].mkdir()
    leftovers[2].write_bytes(b"half a model")
    with atomic_dir(target) as tmp:
        (tmp / "done").write_text("yes")
    assert not leftovers[0].exists() and not leftovers[1].exists()
    assert leftovers[2].exists()  # another target's leftover: its own next write removes it
    write_bytes(tmp_path / "model.keras", b"model")
    assert not leftovers[2].exists() and sorted(p.name for p in tmp_path.iterdir()) == ["model.keras", "raw"]
