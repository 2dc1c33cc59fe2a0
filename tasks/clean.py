"""clean: data/raw → data/clean (drops bad labels, blank images, duplicates and train images leaked into val/test)."""

from __future__ import annotations

import logging

import numpy as np

from tasks import artifacts, validation
from tasks.artifacts import Dataset, Split
from tasks.config import CleanParams, Params
from tasks.errors import TrainflowError

log = logging.getLogger(__name__)

REASONS = ("bad_label", "constant", "duplicate", "leak")


def image_keys(x: np.ndarray) -> np.ndarray:
    """One opaque key per image (its raw bytes), comparable with ``np.unique`` and ``np.isin``."""
    rows = np.ascontiguousarray(x).reshape(len(x), -1)
    return rows.view(np.dtype((np.void, rows.shape[1] * rows.itemsize))).ravel()


def _first_occurrences(keys: np.ndarray) -> np.ndarray:
    keep = np.zeros(len(keys), dtype=bool)
    keep[np.unique(keys, return_index=True)[1]] = True
    return keep


def clean(dataset: Dataset, params: CleanParams) -> tuple[Dataset, dict]:
    """Remove noise and outliers from every split.

    Per split: labels outside the class set, constant (blank) images and exact duplicates (the first
    copy stays). Then any train image that also appears in val or test is removed from train.

    Args:
        dataset: the raw dataset.
        params: the clean section (``max_removed_fraction``).

    Returns:
        The cleaned dataset and a report ``{"removed": {split: {reason: n}}, "removed_total", "input_total"}``.

    Raises:
        TrainflowError: when more than ``max_removed_fraction`` of all images would be removed.
    """
    removed: dict[str, dict[str, int]] = {}
    kept: dict[str, Split] = {}
    keys: dict[str, np.ndarray] = {}
    for name, split in dataset.splits.items():
        x, y = np.asarray(split.x), np.asarray(split.y)
        counts = dict.fromkeys(REASONS, 0)
        good_label = (y >= 0) & (y < len(dataset.classes))
        flat = x.reshape(len(x), -1)
        constant = good_label & (flat.min(axis=1) == flat.max(axis=1))
        counts["bad_label"] = int((~good_label).sum())
        counts["constant"] = int(constant.sum())
        valid = good_label & ~constant
        valid_keys = image_keys(x[valid])  # duplicates only among valid images: a bad copy never wins
        unique = _first_occurrences(valid_keys)
        counts["duplicate"] = int((~unique).sum())
        removed[name], keys[name] = counts, valid_keys[unique]
        kept[name] = Split(x[valid][unique], y[valid][unique])
    held_out = [keys[name] for name in kept if name != "train"]
    if "train" in kept and held_out:
        leak = np.isin(keys["train"], np.concatenate(held_out))
        removed["train"]["leak"] = int(leak.sum())
        kept["train"] = Split(kept["train"].x[~leak], kept["train"].y[~leak])
    input_total = sum(len(s.y) for s in dataset.splits.values())
    removed_total = sum(sum(c.values()) for c in removed.values())
    if input_total and removed_total / input_total > params.max_removed_fraction:
        raise TrainflowError(
            f"clean would remove {removed_total} of {input_total} images ({removed_total / input_total:.1%}), "
            f"more than clean.max_removed_fraction={params.max_removed_fraction} ({removed})"
        )
    report = {"removed": removed, "removed_total": removed_total, "input_total": input_total}
    return Dataset(splits=kept, classes=dataset.classes, info={**dataset.info, "clean": report}), report


def run(params: Params) -> dict:
    """Read data/raw, clean it, write data/clean."""
    cleaned, report = clean(artifacts.read_dataset(params.paths.raw), params.clean)
    validation.validate_dataset("clean", cleaned, params)
    artifacts.write_dataset(params.paths.clean, cleaned)
    log.info("clean: removed %d of %d images %s", report["removed_total"], report["input_total"], report["removed"])
    return report


if __name__ == "__main__":
    from tasks.cli import main

    main("clean", run)
