"""Artifact I/O shared by the stages: sharded datasets (.npy shards + manifest), JSON, atomic writes.

A dataset folder holds ``<split>/x-00000.npy`` and ``<split>/y-00000.npy`` shards of at most ``data.shard_size``
images (with ``<split>/ids-00000.npy``, each item's source identity, from ingest on) and a ``manifest.json`` listing
each split's shards (count, SHA-256). Stages read and write one shard at a time, so their memory is bounded by the
shard size, not the dataset size.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tasks.lib import dag
from tasks.lib.errors import TrainflowError

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
TEXT = "str"  # the manifest dtype of a text dataset: shards hold 1-D NumPy unicode arrays ("<U…", any width)
STATISTICS = "statistics.json"  # normalize's output: the train statistics the model applies, not a copy of the data


def dtype_name(x: np.ndarray) -> str:
    """The manifest's dtype of items like ``x``: ``str`` for text (whatever its width), else NumPy's name."""
    return TEXT if np.asarray(x).dtype.kind == "U" else str(np.asarray(x).dtype)


def kind_of(dtype: str) -> str:
    """``text`` or ``images``: what a dataset of this manifest dtype holds (the stages pick their work by it)."""
    return "text" if dtype == TEXT else "images"


@dataclass(frozen=True)
class Split:
    """Items (images (N, H, W, C) or texts (N,)) and integer labels (N,) of one split, and where each came from
    (``ids``: its source identity, a unicode array; None where nothing recorded it)."""

    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise TrainflowError(f"{len(self.x)} images but {len(self.y)} labels")
        if self.ids is not None and len(self.ids) != len(self.y):
            raise TrainflowError(f"{len(self.y)} items but {len(self.ids)} source ids")

    def subset(self, keep: np.ndarray) -> Split:
        """The items where ``keep`` (a mask or indices) says, with their source ids."""
        return Split(self.x[keep], self.y[keep], None if self.ids is None else self.ids[keep])


@dataclass(frozen=True)
class Dataset:
    """The train/val/test splits of a stage's output and the class names labels index into."""

    splits: Mapping[str, Split]
    classes: tuple[str, ...]
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.splits["train"].x.shape[1:])

    @property
    def kind(self) -> str:
        return kind_of(dtype_name(self.splits["train"].x))


def content_hash(split: Split) -> str:
    """SHA-256 of a split's pixels and labels (dtype and shape included)."""
    digest = hashlib.sha256()
    for array in (split.x, split.y):
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty sibling folder; on success it replaces ``target``, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    if target.exists() or target.is_symlink():
        os.replace(target, old)
    os.replace(tmp, target)
    if old.exists() or old.is_symlink():
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()


def remove_leftovers(target: Path) -> None:
    """Remove what a killed writer of ``target`` left beside it (``.<name>.*.tmp[.suffix]``, ``.<name>.old-*``).

    Safe because every stage holds the workspace lock: no other writer of ``target`` is running.
    """
    for leftover in [*target.parent.glob(f".{target.name}.*.tmp*"), *target.parent.glob(f".{target.name}.old-*")]:
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    """Write a file atomically: a temporary sibling renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(f.name, 0o644)
    os.replace(f.name, path)


def write_json(path: Path, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise TrainflowError(f"{path}: not found; {dag.hint(path)}") from None
    except json.JSONDecodeError as exc:
        raise TrainflowError(f"{path}: not valid JSON ({exc})") from None


def shard_files(root: Path, split: str, index: int) -> tuple[Path, Path]:
    """The image and label files of shard ``index`` of ``split`` under a dataset folder."""
    return Path(root) / split / f"x-{index:05d}.npy", Path(root) / split / f"y-{index:05d}.npy"


def ids_file(root: Path, split: str, index: int) -> Path:
    """The source-id file of shard ``index`` of ``split`` (absent in datasets written without ids)."""
    return Path(root) / split / f"ids-{index:05d}.npy"


def write_shard(root: Path, split: str, index: int, shard: Split) -> dict[str, Any]:
    """Save one shard into a dataset folder being built (a temporary folder of :func:`atomic_dir`).

    Returns:
        The shard's manifest entry: ``{"count", "sha256", "label_counts"}`` (labels as given, counted per value).
    """
    x_path, y_path = shard_files(root, split, index)
    x_path.parent.mkdir(exist_ok=True)
    np.save(x_path, shard.x, allow_pickle=False)
    np.save(y_path, shard.y, allow_pickle=False)
    if shard.ids is not None:
        np.save(ids_file(root, split, index), np.asarray(shard.ids, dtype=str), allow_pickle=False)
    values, counts = np.unique(np.asarray(shard.y), return_counts=True)
    return {
        "count": len(shard.y),
        "sha256": content_hash(shard),
        "label_counts": {int(v): int(n) for v, n in zip(values, counts, strict=True)},
    }


def chunks(split: Split, size: int | None) -> Iterator[Split]:
    """``split`` cut into consecutive pieces of at most ``size`` images (one piece, possibly empty, for None)."""
    n = len(split.y)
    step = size or max(n, 1)
    for start in range(0, max(n, 1), step):
        yield split.subset(slice(start, start + step))


def by_split(ids: list[tuple[str, int]], results: list[Any]) -> dict[str, list[Any]]:
    """Per-shard results grouped per split (in order of first appearance) and sorted by shard index."""
    grouped: dict[str, dict[int, Any]] = {}
    for (split, index), result in zip(ids, results, strict=True):
        grouped.setdefault(split, {})[index] = result
    return {split: [found[i] for i in sorted(found)] for split, found in grouped.items()}


def write_manifest(
    root: Path,
    shards: Mapping[str, list[dict[str, Any]]],
    classes: tuple[str, ...],
    shape: tuple[int, ...],
    dtype: str,
    info: Mapping[str, Any],
) -> dict[str, Any]:
    """Write a dataset folder's manifest from its shards' entries (:func:`write_shard`, per split in order):
    counts, hashes, class counts, shards, plus the stages' info. Returns it."""
    splits = {}
    for name, entries in shards.items():
        counts = np.zeros(len(classes), dtype=np.int64)
        for entry in entries:
            for label, n in entry["label_counts"].items():
                if 0 <= int(label) < len(classes):
                    counts[int(label)] += n
        digest = hashlib.sha256("".join(e["sha256"] for e in entries).encode()).hexdigest()
        splits[name] = {
            "count": sum(e["count"] for e in entries),
            "sha256": digest,
            "class_counts": {c: int(n) for c, n in zip(classes, counts, strict=True)},
            "shards": [{"count": e["count"], "sha256": e["sha256"]} for e in entries],
        }
    content = {"classes": list(classes), "shape": list(shape), "dtype": dtype, "splits": splits, **info}
    (Path(root) / MANIFEST).write_text(json.dumps(content, indent=2) + "\n")
    return content


def write_dataset(path: Path, dataset: Dataset, shard_size: int | None = None) -> dict[str, Any]:
    """Write an in-memory dataset in shards of at most ``shard_size`` images (None: one per split), atomically."""
    entries: dict[str, list[dict[str, Any]]] = {}
    with atomic_dir(Path(path)) as tmp:
        for name, split in dataset.splits.items():
            entries[name] = [write_shard(tmp, name, i, part) for i, part in enumerate(chunks(split, shard_size))]
        dtype = dtype_name(dataset.splits["train"].x)
        content = write_manifest(tmp, entries, dataset.classes, dataset.image_shape, dtype, dataset.info)
    return content


@dataclass(frozen=True)
class Stored:
    """A dataset on disk, read one shard at a time."""

    path: Path
    manifest: Mapping[str, Any]

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.manifest["classes"])

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["shape"])

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.manifest["splits"])

    @property
    def kind(self) -> str:
        return kind_of(self.manifest["dtype"])

    @property
    def info(self) -> dict[str, Any]:
        return {k: v for k, v in self.manifest.items() if k not in {"classes", "shape", "dtype", "splits"}}

    def count(self, split: str) -> int:
        return int(self.manifest["splits"][split]["count"])

    def shard_counts(self, split: str) -> list[int]:
        return [int(s["count"]) for s in self.manifest["splits"][split]["shards"]]

    def shard_ids(self) -> list[tuple[str, int]]:
        """(split, index) of every shard, splits in manifest order."""
        return [(split, i) for split in self.splits for i in range(len(self.shard_counts(split)))]

    def shard(self, split: str, index: int, mmap: bool = False) -> Split:
        """Shard ``index`` of ``split`` (never unpickled; memory-mapped images with ``mmap``)."""
        x_path, y_path = shard_files(self.path, split, index)
        try:
            x = np.load(x_path, allow_pickle=False, mmap_mode="r" if mmap else None)
            y = np.load(y_path, allow_pickle=False)
            where = ids_file(self.path, split, index)
            ids = np.load(where, allow_pickle=False) if where.exists() else None
        except (OSError, ValueError) as exc:
            raise TrainflowError(f"{x_path.parent}: cannot read shard {index} ({exc})") from None
        if len(x) != self.shard_counts(split)[index] or len(y) != len(x) or (ids is not None and len(ids) != len(x)):
            raise TrainflowError(
                f"{x_path.parent}: shard {index} has {len(x)} images and {len(y)} labels"
                f"{'' if ids is None else f' and {len(ids)} source ids'}, "
                f"the manifest says {self.shard_counts(split)[index]}"
            )
        return Split(x, y, ids)

    def shards(self, split: str, mmap: bool = False) -> Iterator[Split]:
        for index in range(len(self.shard_counts(split))):
            yield self.shard(split, index, mmap)

    def load(self, split: str, mmap: bool = False) -> Split:
        """A whole split in memory (a single shard stays memory-mapped with ``mmap``)."""
        parts = list(self.shards(split, mmap))
        if len(parts) == 1:
            return parts[0]
        ids = None if any(p.ids is None for p in parts) else np.concatenate([p.ids for p in parts])
        return Split(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]), ids)


def open_dataset(path: Path) -> Stored:
    """A dataset written by :func:`write_dataset` or a stage's shard writers (its manifest read, no shard yet)."""
    path = Path(path)
    content = read_json(path / MANIFEST)
    if not isinstance(content, dict) or not all("shards" in s for s in content.get("splits", {}).values()):
        raise TrainflowError(f"{path / MANIFEST}: not a sharded dataset manifest (rerun the stage that writes it)")
    return Stored(path, content)


def fitted_on(data: Stored) -> dict[str, str]:
    """Each split's SHA-256: what normalize's statistics record of the data they were fitted on."""
    return {split: str(data.manifest["splits"][split]["sha256"]) for split in data.splits}


def read_statistics(folder: Path, data: Stored) -> dict[str, Any]:
    """normalize's statistics (``folder/statistics.json``), refused unless they were fitted on ``data`` as it is now.

    Train reads the data (augment's output) and the statistics (normalize's) from two folders: under ``dvc repro``
    they always match, but a hand-run stage could pair new data with stale statistics.
    """
    path = Path(folder) / STATISTICS
    stats = read_json(path)
    if not isinstance(stats, dict) or stats.get("fitted_on") != fitted_on(data):
        raise TrainflowError(f"{path}: not fitted on {data.path} as it is now (split hashes differ): rerun normalize")
    return stats


def read_dataset(path: Path, mmap: bool = False) -> Dataset:
    """A whole dataset in memory (tests, small splits); stages stream shards with :func:`open_dataset` instead."""
    stored = open_dataset(path)
    splits = {name: stored.load(name, mmap) for name in stored.splits}
    return Dataset(splits=splits, classes=stored.classes, info=stored.info)
