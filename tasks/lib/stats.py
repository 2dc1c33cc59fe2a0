"""Statistics of a stage's output, pure numpy: content hashes, per-shard summaries, the tables the suites check.

Computed in the same pass that produces each shard (TFX's StatisticsGen); tasks/lib/validation.py checks them with
Great Expectations (its ExampleValidator). No I/O, no GX.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tasks.lib import artifacts
from tasks.lib.artifacts import Dataset

if TYPE_CHECKING:  # pandas is imported where a table is built
    import pandas as pd

CHUNK = 1024  # images summarised at once: temporaries that stay in cache (2–5× faster than 16,384)
_HASH_SEED = 0x7472_6169_6E66  # fixed: the same image always gets the same content hash


def _mixers(words: int) -> np.ndarray:
    """Two fixed odd 64-bit multipliers per word position (two independent 64-bit hashes → 128 bits)."""
    rng = np.random.default_rng(_HASH_SEED)
    return rng.integers(1, 2**63, size=(words, 2), dtype=np.uint64) | np.uint64(1)


def row_hashes(flat: np.ndarray) -> np.ndarray:
    """128-bit content hash of each row of a 2-D array, as (N, 2) uint64, numpy-vectorised.

    Each 64-bit word of a row is mixed (xor-shift, multiply), then combined with position-dependent
    odd multipliers (wrapping arithmetic), so equal rows hash equal and a changed pixel changes the hash.
    """
    if not flat.size:
        return np.zeros((len(flat), 2), dtype=np.uint64)
    data = np.ascontiguousarray(flat).view(np.uint8).reshape(len(flat), -1)
    pad = (-data.shape[1]) % 8
    if pad:
        data = np.concatenate([data, np.zeros((len(data), pad), dtype=np.uint8)], axis=1)
    words = data.view(np.uint64)
    mixed = words ^ (words >> np.uint64(29))
    mixed *= np.uint64(0xBF58476D1CE4E5B9)
    mixed ^= mixed >> np.uint64(32)
    out = mixed @ _mixers(words.shape[1])
    out ^= out >> np.uint64(31)
    return out


def _image_stats(x: np.ndarray, with_hashes: bool = True) -> dict[str, np.ndarray]:
    """Per image: min, max, pixel sum and sum of squares, NaN and inf counts and content hash, CHUNK at a time."""
    n = len(x)
    flat = np.asarray(x).reshape(n, -1)
    stats = {k: np.zeros(n, dtype=np.float64) for k in ("min", "max", "sum", "squares")}
    stats |= {k: np.zeros(n, dtype=np.int64) for k in ("nan_count", "inf_count")}
    hashes = np.empty((n, 2), dtype=np.uint64)
    is_float, pixels = flat.dtype.kind == "f", flat.shape[1]
    for start in range(0, n, CHUNK):
        part = slice(start, start + CHUNK)
        rows = flat[part]
        if is_float and not np.isfinite(rows).all():  # the counts are zero otherwise
            stats["nan_count"][part] = np.isnan(rows).sum(axis=1)
            stats["inf_count"][part] = np.isinf(rows).sum(axis=1)
        if pixels:
            stats["min"][part] = rows.min(axis=1)
            stats["max"][part] = rows.max(axis=1)
            if rows.dtype == np.uint8:  # exact integer sums (squares fit 16 bits)
                stats["sum"][part] = rows.sum(axis=1, dtype=np.int64)
                stats["squares"][part] = (rows.astype(np.uint16) ** 2).sum(axis=1, dtype=np.uint64)
            else:  # float32: ample for statistics that no expectation bounds tightly
                values = rows.astype(np.float32, copy=False)
                # einsum, as fast as BLAS on one core: BLAS starts threads of its own in each of the stage's
                # workers, and on 2 cores that made these sums 6× slower
                stats["sum"][part] = np.einsum("ij->i", values)
                stats["squares"][part] = np.einsum("ij,ij->i", values, values)
        if with_hashes:
            hashes[part] = row_hashes(rows)
    return {**stats, "hash": hashes} if with_hashes else stats


def _in_train(hashes: np.ndarray, train: np.ndarray, train_first: np.ndarray) -> np.ndarray:
    """Which rows' 128-bit hashes also occur in ``train``: candidates on the first word (``train_first``: train's
    first words, sorted once for every split), confirmed on both."""
    if not len(train_first):
        return np.zeros(len(hashes), bool)
    at = np.minimum(np.searchsorted(train_first, hashes[:, 0]), len(train_first) - 1)
    found = train_first[at] == hashes[:, 0]
    if found.any():
        known = set(map(tuple, train[np.isin(train[:, 0], hashes[found, 0])].tolist()))
        found[found] = [tuple(h) in known for h in hashes[found].tolist()]
    return found


@dataclass(frozen=True)
class ShardSummary:
    """What the suites need of one shard: per-label aggregates and each image's label and content hash.

    Small (24 bytes per image plus a row per label), so a stage's workers return these instead of pixels.
    """

    split: str
    shard: int
    shape: tuple[int, ...]
    dtype: str
    pixels: int  # per image
    labels: np.ndarray  # (n,) int64
    hashes: np.ndarray  # (n, 2) uint64
    groups: dict[str, np.ndarray]  # per distinct label: label, images, min, max, sum, squares, nan/inf counts, changed


def summarize(
    split: str,
    shard: int,
    x: np.ndarray,
    y: np.ndarray,
    reference: np.ndarray | None = None,
    hashes: np.ndarray | None = None,
) -> ShardSummary:
    """Aggregate one shard's images per label.

    Args:
        split, shard: where the images are.
        x, y: the shard's images and labels.
        reference: the same shard before the stage (augment's val/test); ``changed`` counts images that differ.
        hashes: the images' :func:`row_hashes` when the stage has them already.
    """
    y = np.asarray(y).astype(np.int64)
    stats = _image_stats(x, hashes is None)
    hashes = stats.pop("hash") if hashes is None else hashes
    labels, inverse = np.unique(y, return_inverse=True)
    k = len(labels)
    groups: dict[str, np.ndarray] = {"label": labels, "images": np.bincount(inverse, minlength=k)}
    for key in ("sum", "squares", "nan_count", "inf_count"):
        groups[key] = np.bincount(inverse, weights=stats[key], minlength=k)
    groups["min"], groups["max"] = np.full(k, np.inf), np.full(k, -np.inf)
    with np.errstate(invalid="ignore"):  # a NaN pixel makes its group's min/max NaN: nan_count reports it
        np.minimum.at(groups["min"], inverse, stats["min"])
        np.maximum.at(groups["max"], inverse, stats["max"])
    if reference is not None:
        before = row_hashes(np.asarray(reference).reshape(len(reference), -1))
        changed = np.ones(len(y), bool) if len(before) != len(y) else (hashes != before).any(axis=1)
        groups["changed"] = np.bincount(inverse, weights=changed, minlength=k)
    pixels = int(np.prod(x.shape[1:])) if x.ndim > 1 else 0
    return ShardSummary(split, shard, tuple(int(d) for d in x.shape[1:]), str(x.dtype), pixels, y, hashes, groups)


def summary_table(summaries: list[ShardSummary]) -> pd.DataFrame:
    """One row per split × shard × label: what the suites check.

    Columns: split, shard, label, id (``split/shard/label``), images, height, width, channels, shape, dtype, min,
    max, mean, std (over the row's pixels), nan_count, inf_count, split_rows (images in the row's split),
    class_fraction (share of the row's label in its split), split_label, leaked_into_train (val/test images whose
    content is also in train) and, when the summaries carry it, changed_by_augment (val/test images that differ
    from the stage's input). Its size grows with shards and classes, not images.
    """
    train = [s.hashes for s in summaries if s.split == "train"]
    train_hashes = np.concatenate(train) if train else np.zeros((0, 2), np.uint64)
    train_first = np.sort(train_hashes[:, 0])
    split_rows: dict[str, int] = {}
    label_rows: dict[tuple[str, int], int] = {}
    for s in summaries:
        split_rows[s.split] = split_rows.get(s.split, 0) + len(s.labels)
        for label, n in zip(s.groups["label"].tolist(), s.groups["images"].tolist(), strict=True):
            label_rows[s.split, label] = label_rows.get((s.split, label), 0) + n
    with_changed = any("changed" in s.groups for s in summaries)
    rows = []
    for s in summaries:
        leaked = np.zeros(len(s.labels), bool) if s.split == "train" else _in_train(s.hashes, train_hashes, train_first)
        inverse = np.searchsorted(s.groups["label"], s.labels)
        leaked_per_label = np.bincount(inverse, weights=leaked, minlength=len(s.groups["label"]))
        height, width, channels = (*s.shape, 1, 1, 1)[:3]
        for g, label in enumerate(s.groups["label"].tolist()):
            images, values = int(s.groups["images"][g]), max(int(s.groups["images"][g]) * s.pixels, 1)
            mean = s.groups["sum"][g] / values
            row = {
                "split": s.split,
                "shard": s.shard,
                "label": label,
                "id": f"{s.split}/{s.shard}/{label}",
                "images": images,
                "height": height,
                "width": width,
                "channels": channels,
                "shape": "x".join(map(str, s.shape)),
                "dtype": s.dtype,
                "min": float(s.groups["min"][g]),
                "max": float(s.groups["max"][g]),
                "mean": float(mean),
                "std": float(np.sqrt(max(s.groups["squares"][g] / values - mean * mean, 0.0))),
                "nan_count": int(s.groups["nan_count"][g]),
                "inf_count": int(s.groups["inf_count"][g]),
                "split_rows": split_rows[s.split],
                "class_fraction": label_rows[s.split, label] / split_rows[s.split],
                "split_label": f"{s.split}:{label}",
                "leaked_into_train": int(leaked_per_label[g]),
            }
            if with_changed:
                row["changed_by_augment"] = int(s.groups.get("changed", np.zeros(len(s.groups["label"])))[g])
            rows.append(row)
    import pandas as pd

    return pd.DataFrame(rows, columns=None if rows else ["split", "split_rows", "split_label", "id"])


def summarize_dataset(dataset: Dataset, shard_size: int | None) -> list[ShardSummary]:
    """Summaries of an in-memory dataset cut into the shards :func:`artifacts.write_dataset` would write."""
    return [
        summarize(name, i, part.x, part.y)
        for name, split in dataset.splits.items()
        for i, part in enumerate(artifacts.chunks(split, shard_size))
    ]


def prediction_table(results: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """One row per evaluated image: split, index, id, label, predicted, prob_sum, prob_min, prob_max, nan_count."""
    import pandas as pd

    frames = []
    for name, (y, probabilities) in results.items():
        p = np.asarray(probabilities, dtype=np.float64)
        n = len(y)
        frame = pd.DataFrame(
            {
                "split": np.full(n, name, dtype=object),
                "index": np.arange(n),
                "label": np.asarray(y, dtype=np.int64),
                "predicted": np.nanargmax(np.nan_to_num(p, nan=-np.inf), axis=1) if p.size else np.zeros(n, int),
                "prob_sum": p.sum(axis=1),
                "prob_min": p.min(axis=1) if p.size else np.zeros(n),
                "prob_max": p.max(axis=1) if p.size else np.zeros(n),
                "nan_count": np.isnan(p).sum(axis=1),
            }
        )
        frame["id"] = name + "/" + frame["index"].astype(str)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
