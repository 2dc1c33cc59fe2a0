"""Statistics of a stage's output, pure numpy: content hashes, per-shard summaries, the tables the suites check.

Images or texts (1-D unicode arrays, manifest dtype ``str``): :func:`summarize` and :func:`summary_table` handle both.

Computed in the same pass that produces each shard (TFX's StatisticsGen); tasks/lib/validation.py checks them with
Great Expectations (its ExampleValidator). No I/O, no GX.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tasks.lib import artifacts
from tasks.lib.artifacts import Dataset
from tasks.lib.errors import TrainflowError

if TYPE_CHECKING:  # pandas is imported where a table is built
    import pandas as pd

CHUNK = 1024  # images (or texts) summarised at once: temporaries that stay in cache (2–5× faster than 16,384)
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


def _text_hashes(texts: np.ndarray) -> np.ndarray:
    """128-bit BLAKE2b of each text's UTF-8 bytes: a function of the string alone, not of the array's fixed width
    (``<U5`` and ``<U900`` pad differently). ``surrogatepass`` so that a lone surrogate hashes instead of raising."""
    digests = b"".join(
        hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest() for text in texts.tolist()
    )
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64).reshape(len(texts), 2)


def content_hashes(x: np.ndarray) -> np.ndarray:
    """128-bit content key of each item (image or text) as (N, 2) uint64: equal items, equal keys.

    Images: :func:`row_hashes` of their pixels. Texts: a hash of their UTF-8 bytes, equal for equal strings
    whatever the array's width.
    """
    x = np.asarray(x)
    if x.dtype.kind == "U":
        return _text_hashes(x)
    flat = x.reshape(len(x), -1)
    hashes = np.empty((len(x), 2), dtype=np.uint64)
    for start in range(0, len(x), CHUNK):  # row_hashes' temporaries are 8 bytes per pixel: a chunk at a time
        hashes[start : start + CHUNK] = row_hashes(flat[start : start + CHUNK])
    return hashes


def keys(hashes: np.ndarray) -> np.ndarray:
    """:func:`content_hashes` as one opaque 128-bit key per item, comparable with ``np.unique`` and ``np.isin``."""
    return np.ascontiguousarray(hashes).view(np.dtype((np.void, 16))).ravel()


def _text_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """Per text: length in characters, whether it is empty or whitespace-only, whether it holds a lone surrogate."""
    x = np.ascontiguousarray(x)
    lengths = np.char.str_len(x).astype(np.int64)
    blank = (lengths == 0) | np.char.isspace(x)
    # A lone surrogate (U+D800–U+DFFF) is the one code point UTF-8 cannot encode; found on the UCS-4 code points
    # directly rather than by str.encode in a Python loop, a chunk at a time to keep the temporaries in cache.
    codes = x.view(np.uint32).reshape(len(x), x.dtype.itemsize // 4)
    non_utf8 = np.zeros(len(x), bool)
    for start in range(0, len(x), CHUNK):
        rows = codes[start : start + CHUNK]
        non_utf8[start : start + CHUNK] = ((rows - np.uint32(0xD800)) < np.uint32(0x800)).any(axis=1)
    return {"length": lengths, "empty": blank, "non_utf8": non_utf8}


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
    """What the suites need of one shard: per-label aggregates and each item's label and content hash.

    Small (24 bytes per item plus a row per label), so a stage's workers return these instead of pixels or texts.
    """

    split: str
    shard: int
    shape: tuple[int, ...]  # of one item: (H, W, C) for images, () for texts
    dtype: str  # the manifest's (artifacts.dtype_name): "str" for texts
    pixels: int  # per image (0 for texts)
    labels: np.ndarray  # (n,) int64
    hashes: np.ndarray  # (n, 2) uint64
    # per distinct label: label, items ("images" or "texts") and the kind's aggregates (see summarize), changed
    groups: dict[str, np.ndarray]

    @property
    def kind(self) -> str:
        return artifacts.kind_of(self.dtype)


def _per_label(inverse: np.ndarray, k: int, values: np.ndarray) -> np.ndarray:
    return np.bincount(inverse, weights=values, minlength=k)


def summarize(
    split: str,
    shard: int,
    x: np.ndarray,
    y: np.ndarray,
    reference: np.ndarray | None = None,
    hashes: np.ndarray | None = None,
    tokens: tuple[np.ndarray, np.ndarray] | None = None,
) -> ShardSummary:
    """Aggregate one shard's images or texts per label.

    Args:
        split, shard: where the items are.
        x, y: the shard's images (N, H, W, C) or texts (N,) unicode, and labels.
        reference: the same shard before the stage (augment's val/test); ``changed`` counts items that differ.
        hashes: the items' :func:`content_hashes` when the stage has them already.
        tokens: texts only (normalize's): per text, its token count and out-of-vocabulary token count.
    """
    y = np.asarray(y).astype(np.int64)
    labels, inverse = np.unique(y, return_inverse=True)
    k = len(labels)
    text = np.asarray(x).dtype.kind == "U"
    if text:
        stats = _text_stats(x)
        hashes = content_hashes(x) if hashes is None else hashes
        groups: dict[str, np.ndarray] = {"label": labels, "texts": np.bincount(inverse, minlength=k)}
        for key in ("length", "empty", "non_utf8"):
            groups[key] = _per_label(inverse, k, stats[key])
        groups["min_length"], groups["max_length"] = np.full(k, np.iinfo(np.int64).max), np.zeros(k, np.int64)
        np.minimum.at(groups["min_length"], inverse, stats["length"])
        np.maximum.at(groups["max_length"], inverse, stats["length"])
        if tokens is not None:
            groups["tokens"] = _per_label(inverse, k, np.asarray(tokens[0], dtype=np.float64))
            groups["oov_tokens"] = _per_label(inverse, k, np.asarray(tokens[1], dtype=np.float64))
    else:
        stats = _image_stats(x, hashes is None)
        hashes = stats.pop("hash") if hashes is None else hashes
        groups = {"label": labels, "images": np.bincount(inverse, minlength=k)}
        for key in ("sum", "squares", "nan_count", "inf_count"):
            groups[key] = _per_label(inverse, k, stats[key])
        groups["min"], groups["max"] = np.full(k, np.inf), np.full(k, -np.inf)
        with np.errstate(invalid="ignore"):  # a NaN pixel makes its group's min/max NaN: nan_count reports it
            np.minimum.at(groups["min"], inverse, stats["min"])
            np.maximum.at(groups["max"], inverse, stats["max"])
    if reference is not None:
        before = content_hashes(reference)
        changed = np.ones(len(y), bool) if len(before) != len(y) else (hashes != before).any(axis=1)
        groups["changed"] = _per_label(inverse, k, changed)
    shape = () if text else tuple(int(d) for d in x.shape[1:])
    pixels = int(np.prod(x.shape[1:])) if x.ndim > 1 else 0
    return ShardSummary(split, shard, shape, artifacts.dtype_name(x), pixels, y, hashes, groups)


def _image_columns(s: ShardSummary, g: int) -> dict[str, object]:
    images, values = int(s.groups["images"][g]), max(int(s.groups["images"][g]) * s.pixels, 1)
    height, width, channels = (*s.shape, 1, 1, 1)[:3]
    mean = s.groups["sum"][g] / values
    return {
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
    }


def _text_columns(s: ShardSummary, g: int, with_tokens: bool) -> dict[str, object]:
    texts = int(s.groups["texts"][g])
    row: dict[str, object] = {
        "texts": texts,
        "dtype": s.dtype,
        "min_length": int(s.groups["min_length"][g]),
        "max_length": int(s.groups["max_length"][g]),
        "mean_length": float(s.groups["length"][g] / max(texts, 1)),
        "empty": int(s.groups["empty"][g]),
        "non_utf8": int(s.groups["non_utf8"][g]),
    }
    if with_tokens:
        tokens, oov = (int(s.groups[key][g]) if key in s.groups else 0 for key in ("tokens", "oov_tokens"))
        row |= {"tokens": tokens, "oov_tokens": oov, "oov_rate": oov / tokens if tokens else 0.0}
    return row


def summary_table(summaries: list[ShardSummary]) -> pd.DataFrame:
    """One row per split × shard × label: what the suites check. All summaries hold images, or all texts.

    Columns, both kinds: split, shard, label, id (``split/shard/label``), dtype, split_rows (items in the row's
    split), class_fraction (share of the row's label in its split), split_label, leaked_into_train (val/test items
    whose content is also in train) and, when the summaries carry it, changed_by_augment (val/test items that differ
    from the stage's input).
    Images: images, height, width, channels, shape, min, max, mean, std (over the row's pixels), nan_count, inf_count.
    Texts: texts, min_length, max_length, mean_length (characters), empty (empty or whitespace-only texts), non_utf8
    (texts holding a lone surrogate) and, when the summaries carry tokens, tokens, oov_tokens, oov_rate.
    Its size grows with shards and classes, not items.
    """
    kinds = {s.kind for s in summaries}
    if len(kinds) > 1:
        raise TrainflowError(f"a dataset of both images and texts ({sorted({s.dtype for s in summaries})})")
    items = "texts" if kinds == {"text"} else "images"
    train = [s.hashes for s in summaries if s.split == "train"]
    # distinct hashes, sorted: 5 million copies of one text would otherwise be gathered again for every shard
    train_hashes = np.unique(np.concatenate(train), axis=0) if train else np.zeros((0, 2), np.uint64)
    train_first = train_hashes[:, 0]
    split_rows: dict[str, int] = {}
    label_rows: dict[tuple[str, int], int] = {}
    for s in summaries:
        split_rows[s.split] = split_rows.get(s.split, 0) + len(s.labels)
        for label, n in zip(s.groups["label"].tolist(), s.groups[items].tolist(), strict=True):
            label_rows[s.split, label] = label_rows.get((s.split, label), 0) + n
    with_changed = any("changed" in s.groups for s in summaries)
    with_tokens = any("tokens" in s.groups for s in summaries)
    rows = []
    for s in summaries:
        leaked = np.zeros(len(s.labels), bool) if s.split == "train" else _in_train(s.hashes, train_hashes, train_first)
        inverse = np.searchsorted(s.groups["label"], s.labels)
        leaked_per_label = np.bincount(inverse, weights=leaked, minlength=len(s.groups["label"]))
        for g, label in enumerate(s.groups["label"].tolist()):
            row = {"split": s.split, "shard": s.shard, "label": label, "id": f"{s.split}/{s.shard}/{label}"}
            row |= _text_columns(s, g, with_tokens) if items == "texts" else _image_columns(s, g)
            row |= {
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
