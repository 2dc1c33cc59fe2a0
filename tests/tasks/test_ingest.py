"""tasks/ingest.py: the stratified, seeded train/val/test split and the ordered one; the stage's peak memory."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tasks.ingest import split
from tasks.lib.config import IngestParams, Params
from tasks.lib.errors import TrainflowError
from tasks.lib.sources import Loaded
from tests.helpers import make_workspace, sh_peak


def loaded(per_class: list[int], seed: int = 0, with_test: int = 0) -> Loaded:
    """Distinct 4x4 images, ``per_class[k]`` of class k; each image's first pixel holds its index."""
    y = np.repeat(np.arange(len(per_class)), per_class).astype(np.int64)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (len(y), 4, 4, 1), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(len(y)) % 256
    x[:, 0, 1, 0] = np.arange(len(y)) // 256
    if not with_test:
        return Loaded(x, y)
    y_test = np.arange(with_test, dtype=np.int64) % len(per_class)
    return Loaded(x, y, rng.integers(0, 256, (with_test, 4, 4, 1), dtype=np.uint8), y_test)


def fractions(val: float = 0.2, test: float = 0.2, how: str = "stratified") -> IngestParams:
    return IngestParams(split=how, val_fraction=val, test_fraction=test)


def test_split_sizes_and_stratification(params: Params) -> None:
    data = loaded([50, 100, 150])
    dataset = split(data, params.data, fractions(0.2, 0.2), seed=1)
    sizes = {name: len(s.y) for name, s in dataset.splits.items()}
    assert sizes == {"train": 180, "val": 60, "test": 60}
    for name, s in dataset.splits.items():
        counts = np.bincount(s.y, minlength=3)
        np.testing.assert_array_equal(counts, np.array([1, 2, 3]) * sizes[name] // 6, err_msg=name)
    assert dataset.classes == ("0", "1", "2")
    assert dataset.info == {"source": "digits"}


def test_split_is_a_partition_with_labels_kept(params: Params) -> None:
    data = loaded([30, 30])
    dataset = split(data, params.data, fractions(), seed=3)
    pixels = [s.x[:, 0, :2, 0].astype(int) for s in dataset.splits.values()]
    index = np.concatenate([p[:, 0] + 256 * p[:, 1] for p in pixels])
    labels = np.concatenate([s.y for s in dataset.splits.values()])
    assert sorted(index.tolist()) == list(range(60))
    np.testing.assert_array_equal(labels, data.y[index])


def test_split_is_deterministic_for_a_seed(params: Params) -> None:
    data = loaded([40, 40, 40])
    first = split(data, params.data, fractions(), seed=7)
    again = split(data, params.data, fractions(), seed=7)
    other = split(data, params.data, fractions(), seed=8)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(first.splits[name].x, again.splits[name].x)
        np.testing.assert_array_equal(first.splits[name].y, again.splits[name].y)
    assert not np.array_equal(first.splits["train"].x, other.splits["train"].x)


def test_source_test_split_is_kept(params: Params) -> None:
    data = loaded([40, 40], with_test=10)
    dataset = split(data, params.data, fractions(0.25, 0.5), seed=0)
    np.testing.assert_array_equal(dataset.splits["test"].x, data.x_test)
    np.testing.assert_array_equal(dataset.splits["test"].y, data.y_test)
    # test_fraction is ignored; val_fraction is a share of the source's train set
    assert len(dataset.splits["val"].y) == 20 and len(dataset.splits["train"].y) == 60


def test_class_names_from_params_then_source(params: Params) -> None:
    data = loaded([10, 10])
    named = params.data.model_copy(update={"classes": ("cat", "dog")})
    assert split(data, named, fractions(), seed=0).classes == ("cat", "dog")
    with_names = Loaded(data.x, data.y, classes=("a", "b"))
    assert split(with_names, params.data, fractions(), seed=0).classes == ("a", "b")


def test_class_names_in_params_with_an_invisible_character_are_refused_by_name(params: Params) -> None:
    named = params.data.model_copy(update={"classes": ("cat", "dog\x00")})
    with pytest.raises(TrainflowError, match=r"^data.classes: class name 'dog\\x00' holds '\\x00' \(U\+0000\)"):
        split(loaded([10, 10]), named, fractions(), seed=0)


def test_a_text_class_too_small_to_split_is_named(params: Params) -> None:
    texts = np.array([f"message {i}" for i in range(41)], dtype=str)
    data = Loaded(texts, np.r_[np.arange(40) % 2, 2].astype(np.int64), classes=("ham", "spam", "C++ (other)"))
    with pytest.raises(TrainflowError) as caught:
        split(data, params.data, fractions(), seed=0)
    assert str(caught.value).endswith(
        "cannot split 41 texts into a stratified test split of 20% (ingest.test_fraction): "
        "only one text of class 'C++ (other)': a stratified split needs two per class"
    )


def test_text_labels_follow_the_order_of_data_classes(params: Params) -> None:
    texts = np.array([f"message {i}" for i in range(40)], dtype=str)
    data = Loaded(texts, np.arange(40, dtype=np.int64) % 2, classes=("ham", "spam"))  # the loader's sorted names
    reordered = split(data, params.data.model_copy(update={"classes": ("spam", "ham")}), fractions(), seed=0)
    assert reordered.classes == ("spam", "ham") and reordered.kind == "text"
    original = {str(t): ("ham", "spam")[i % 2] for i, t in enumerate(texts)}
    for part in reordered.splits.values():  # a text keeps its class name, under the new number
        assert [original[str(t)] for t in part.x] == [reordered.classes[y] for y in part.y]
    with pytest.raises(TrainflowError, match=r"labels \['spam'\] are not in data.classes \['ham', 'other'\]"):
        split(data, params.data.model_copy(update={"classes": ("ham", "other")}), fractions(), seed=0)


def test_empty_dataset_refused(params: Params) -> None:
    empty = Loaded(np.zeros((0, 4, 4, 1), np.uint8), np.zeros(0, np.int64))
    with pytest.raises(TrainflowError, match="empty"):
        split(empty, params.data, fractions(), seed=0)


def test_single_class_refused(params: Params) -> None:
    with pytest.raises(TrainflowError, match="only one class"):
        split(loaded([20]), params.data, fractions(), seed=0)


@pytest.mark.parametrize("per_class", [[1, 5], [2, 2]])
def test_too_small_to_stratify_refused(params: Params, per_class: list[int]) -> None:
    with pytest.raises(TrainflowError, match=r"cannot split \d+ images into a stratified"):
        split(loaded(per_class), params.data, fractions(0.1, 0.1), seed=0)


def test_test_split_of_another_shape_refused(params: Params) -> None:
    data = loaded([20, 20])
    odd = Loaded(data.x, data.y, np.zeros((4, 5, 5, 1), np.uint8), np.array([0, 1, 0, 1]))
    with pytest.raises(TrainflowError, match="test images"):
        split(odd, params.data, fractions(), seed=0)


def test_default_classes_cover_the_source_test_labels(params: Params) -> None:
    data = loaded([20, 20])
    with_test = Loaded(data.x, data.y, data.x[:3], np.array([0, 1, 2]))
    assert split(with_test, params.data, fractions(), seed=0).classes == ("0", "1", "2")


def test_ordered_split_keeps_the_source_order(params: Params) -> None:
    # the seed script's split: first 80 % to train (here minus val), last 20 % to test, nothing shuffled
    data = loaded([50, 50])
    dataset = split(data, params.data, fractions(0.1, 0.2, "ordered"), seed=1)
    np.testing.assert_array_equal(dataset.splits["test"].x, data.x[80:])
    np.testing.assert_array_equal(dataset.splits["val"].x, data.x[70:80])
    np.testing.assert_array_equal(dataset.splits["train"].x, data.x[:70])
    np.testing.assert_array_equal(dataset.splits["train"].y, data.y[:70])
    assert split(data, params.data, fractions(0.1, 0.2, "ordered"), seed=2).splits["train"].x.tobytes() == (
        dataset.splits["train"].x.tobytes()
    )


def test_ordered_split_with_the_source_test_split(params: Params) -> None:
    data = loaded([40, 40], with_test=10)
    dataset = split(data, params.data, fractions(0.25, 0.5, "ordered"), seed=0)
    np.testing.assert_array_equal(dataset.splits["test"].x, data.x_test)
    np.testing.assert_array_equal(dataset.splits["val"].x, data.x[60:])
    np.testing.assert_array_equal(dataset.splits["train"].x, data.x[:60])


LIBRARIES_MIB = 400  # numpy, scikit-learn, Great Expectations: ingest of the 8×8 digits peaks at about 300 MiB
DATA_MULTIPLE = 2  # docs/own-data.md: ingest's peak memory is the libraries plus at most twice the data


@pytest.mark.slow
def test_ingest_peak_memory_is_the_libraries_plus_twice_the_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n, n_test = 110_000, 20_000  # 101 MiB of 28×28 pixels
    path = tmp_path / "data.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        y_train=np.arange(n) % 10,
        x_test=rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        y_test=np.arange(n_test) % 10,
    )
    data_mib = (n + n_test) * 28 * 28 / 2**20
    workspace = make_workspace(tmp_path / "workspace", {"validation": {"drift_action": "ignore"}})
    params = workspace / "params.yaml"
    params.write_text(
        params.read_text().replace("source: digits", "source: npz").replace("path: data/input", f"path: {path}")
    )
    done, peak_mib = sh_peak(workspace, sys.executable, "-m", "tasks.ingest")
    assert done.returncode == 0, done.stderr[-2000:]
    assert peak_mib <= LIBRARIES_MIB + DATA_MULTIPLE * data_mib, f"{peak_mib:.0f} MiB for {data_mib:.0f} MiB of data"


def _sources(root: Path) -> dict[str, tuple[str, Callable[[str], Any]]]:
    """One tiny source of each file kind under ``root``: (data.path, how a source id reads its item back)."""
    from PIL import Image

    from tests.helpers import idx_bytes

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 5, 5), dtype=np.uint8)
    labels = np.arange(40, dtype=np.uint8) % 2
    (root / "idx").mkdir()
    (root / "idx" / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(images, 0x803))
    (root / "idx" / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels, 0x801))
    np.savez(root / "d.npz", x_train=images[:30], y_train=labels[:30], x_test=images[30:], y_test=labels[30:])
    for i, image in enumerate(images):
        (root / "folder" / f"c{labels[i]}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "folder" / f"c{labels[i]}" / f"{i}.png")
        (root / "text_folder" / f"c{labels[i]}").mkdir(parents=True, exist_ok=True)
        (root / "text_folder" / f"c{labels[i]}" / f"{i}.txt").write_text(f"text {i}")
    lines = [f"c{labels[i]}\ttext {i}" for i in range(40)]
    (root / "d.tsv").write_text("\n".join([*lines[:5], "", *lines[5:]]) + "\n")  # a blank line: numbers still count
    (root / "d.csv").write_text("label,text\n" + "".join(f'c{labels[i]},"text\n{i}"\n' for i in range(40)))
    tsv, csv = (root / "d.tsv").read_text().splitlines(), (root / "d.csv").read_text().splitlines()
    npz = {"x_train": images[:30], "x_test": images[30:]}
    return {
        "idx": ("idx", lambda i: images[int(i.split(":")[1])]),
        "npz": ("d.npz", lambda i: npz[i.split(":")[1]][int(i.split(":")[2])]),
        "folder": ("folder", lambda i: np.asarray(Image.open(root / "folder" / i))),
        "tsv": ("d.tsv", lambda i: tsv[int(i.split(":")[1]) - 1].split("\t")[1]),
        "csv": ("d.csv", lambda i: "text\n" + csv[int(i.split(":")[1])].rstrip('"')),
        "text_folder": ("text_folder", lambda i: (root / "text_folder" / i).read_text()),
    }


@pytest.mark.parametrize("kind", ["digits", "idx", "npz", "folder", "tsv", "csv", "text_folder"])
def test_every_item_keeps_its_source_identity_through_the_split(params: Params, tmp_path: Path, kind: str) -> None:
    """Each item's id (file path, FILE:INDEX, FILE:LINE) reads back that very item, in every split.

    Fails without the loaders' provenance (mutation: ingest.split numbering the items instead of taking
    ``loaded.ids``: every kind fails)."""
    from sklearn.datasets import load_digits

    from tasks.lib.sources import load_source

    if kind == "digits":
        path, read = "unused", lambda i: np.rint(load_digits().images[int(i.split(":")[1])] * 255 / 16)
    else:
        path, read = _sources(tmp_path)[kind]
    data = params.data.model_copy(update={"source": kind, "path": str(tmp_path / path)})
    dataset = split(load_source(data), data, fractions(0.2, 0.2), seed=1)
    seen = []
    for s in dataset.splits.values():
        assert s.ids is not None and len(s.ids) == len(s.y)
        for x, source_id in list(zip(s.x, s.ids, strict=True))[:8]:
            expected = read(str(source_id))
            assert (x == expected) if x.dtype.kind == "U" else np.array_equal(x[..., 0], expected), source_id
        seen += s.ids.tolist()
    assert len(set(seen)) == len(seen)  # unique: a review names one item
