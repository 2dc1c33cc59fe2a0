"""ingest: data.source (data.path) → data/raw (uint8 N×H×W×C images or texts, int labels, train/val/test, manifest)
and the data's drift statistics (paths.statistics)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tasks.lib import artifacts, drift, validation
from tasks.lib.artifacts import Dataset, Split
from tasks.lib.config import DataParams, IngestParams, Params
from tasks.lib.errors import TrainflowError
from tasks.lib.source_files import check_class_name, numbered
from tasks.lib.sources import Loaded, label, load_source

log = logging.getLogger(__name__)


def _stratified(
    part: Split, fraction: float, seed: int, what: str, source: str, classes: tuple[str, ...]
) -> tuple[Split, Split]:
    from sklearn.model_selection import train_test_split

    x, y = part.x, part.y
    try:
        keep, out = train_test_split(np.arange(len(y)), test_size=fraction, stratify=y, random_state=seed)
    except ValueError as exc:
        items = "texts" if x.dtype.kind == "U" else "images"
        raise TrainflowError(
            f"{source}: cannot split {len(y)} {items} into a stratified {what} split of {fraction:.0%} "
            f"(ingest.{what}_fraction): {_too_few(y, classes, items) or f'too few {items} per class ({exc})'}"
        ) from None
    return part.subset(keep), part.subset(out)


def _too_few(y: np.ndarray, classes: tuple[str, ...], items: str) -> str | None:
    """Which classes have a single item (a stratified split needs two of each), named, or None."""
    values, counts = np.unique(y, return_counts=True)
    names = [repr(classes[v]) if 0 <= v < len(classes) else str(v) for v in values[counts < 2].tolist()]
    if not names:
        return None
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return f"only one {items[:-1]} of class {', '.join(names[:5])}{more}: a stratified split needs two per class"


def _ordered(part: Split, fraction: float) -> tuple[Split, Split]:
    cut = len(part.y) - round(len(part.y) * fraction)
    return part.subset(slice(None, cut)), part.subset(slice(cut, None))


MAX_CLASSES = 1000  # with data.classes: null, labels are the classes 0..K-1: a larger K is a wrong label


def _numbered_classes(labels: np.ndarray, origin: str) -> tuple[str, ...]:
    """Class names "0".."K-1" for labels that are exactly 0..K-1, checked before anything of size K is made."""
    present = np.unique(labels)
    if present[-1] >= MAX_CLASSES:
        raise TrainflowError(
            f"{origin}: label {int(present[-1])} would make {int(present[-1]) + 1} classes (at most {MAX_CLASSES} "
            "with data.classes: null); fix the label, or name the classes in data.classes"
        )
    missing = sorted(set(range(int(present[-1]) + 1)) - {int(v) for v in present if v >= 0})
    if missing:
        raise TrainflowError(
            f"{origin}: with data.classes: null the labels must be 0..{int(present[-1])}, but {missing[:10]} never "
            f"occur{' (and more)' if len(missing) > 10 else ''}; relabel, or name the classes in data.classes"
        )
    return tuple(str(i) for i in range(int(present[-1]) + 1))


def _named_labels(loaded: Loaded, classes: tuple[str, ...], origin: str) -> Loaded:
    """Text labels are names: renumber them in the order of ``data.classes``, which must name every one."""
    assert loaded.classes is not None
    unknown = sorted(set(loaded.classes) - set(classes))
    if unknown:
        raise TrainflowError(f"{origin}: labels {unknown[:10]} are not in data.classes {list(classes)}")
    order = np.array([classes.index(name) for name in loaded.classes], dtype=np.int64)
    return Loaded(x=loaded.x, y=order[loaded.y], classes=classes, ids=loaded.ids)


def split(loaded: Loaded, data: DataParams, params: IngestParams, seed: int) -> Dataset:
    """Train/val/test split, stratified or in the source's order; a source's own test split is kept as test.

    ``ingest.split: ordered`` keeps the source's order: test is the last ``test_fraction`` of the images, val the
    last ``val_fraction`` (of all images) before it, train the rest (MNIST t10k: first 8,000 / last 2,000).

    Args:
        loaded: what the source yielded.
        data: the data section (explicit class names, source).
        params: split fractions (test_fraction applies only when the source has no test split).
        seed: seeds the split.

    Returns:
        The dataset with splits train/val/test and the class names.
    """
    if len(loaded.y) == 0:
        raise TrainflowError(f"{label(data)}: the dataset is empty")
    if np.unique(loaded.y).size < 2:
        only = loaded.classes[loaded.y[0]] if loaded.classes else loaded.y[0]
        raise TrainflowError(f"{label(data)}: only one class ({only}); a classifier needs at least two")
    if loaded.x.dtype.kind == "U" and data.classes and loaded.classes:
        loaded = _named_labels(loaded, data.classes, label(data))
    for name in data.classes or ():
        check_class_name(name, "data.classes")
    classes = data.classes or loaded.classes
    if classes is None:
        labels = loaded.y if loaded.y_test is None else np.concatenate([loaded.y, loaded.y_test])
        classes = _numbered_classes(labels, label(data))

    def cut(part: Split, fraction: float, what: str) -> tuple[Split, Split]:
        if params.split == "ordered":
            return _ordered(part, fraction)
        return _stratified(part, fraction, seed, what, label(data), classes)

    ids = numbered("", len(loaded.y)) if loaded.ids is None else loaded.ids
    if loaded.x_test is None or loaded.y_test is None:
        pool, test = cut(Split(loaded.x, loaded.y, ids), params.test_fraction, "test")
        val_share = params.val_fraction / (1.0 - params.test_fraction)
    else:
        ids_test = numbered("test:", len(loaded.y_test)) if loaded.ids_test is None else loaded.ids_test
        pool, test = Split(loaded.x, loaded.y, ids), Split(loaded.x_test, loaded.y_test, ids_test)
        val_share = params.val_fraction
    train, val = cut(pool, val_share, "val")
    if train.x.shape[1:] != test.x.shape[1:]:
        raise TrainflowError(f"{label(data)}: train images {train.x.shape[1:]} but test images {test.x.shape[1:]}")
    return Dataset(splits={"train": train, "val": val, "test": test}, classes=classes, info={"source": label(data)})


def run(params: Params) -> dict:
    """Load the source, split it, write data/raw and the data's statistics."""
    dataset = split(load_source(params.data), params.data, params.ingest, params.seed)
    validation.validate_dataset("raw", dataset, params)
    drift.record(dataset, Path(params.paths.statistics))  # deploy compares them with the champion's
    manifest = artifacts.write_dataset(params.paths.raw, dataset, params.data.shard_size)
    counts = {name: s["count"] for name, s in manifest["splits"].items()}
    log.info("ingest: %s → %s %s, shape %s", label(params.data), params.paths.raw, counts, manifest["shape"])
    return manifest


if __name__ == "__main__":
    from tasks.lib.cli import main

    main("ingest", run)
