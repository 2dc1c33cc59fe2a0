"""Artifact I/O shared by the stages: split datasets as .npy + manifest, JSON, atomic writes."""

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

from tasks.errors import TrainflowError

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Split:
    """Images (N, H, W, C) and integer labels (N,) of one split."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise TrainflowError(f"{len(self.x)} images but {len(self.y)} labels")


@dataclass(frozen=True)
class Dataset:
    """The train/val/test splits of a stage's output and the class names labels index into."""

    splits: Mapping[str, Split]
    classes: tuple[str, ...]
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.splits["train"].x.shape[1:])


def content_hash(split: Split) -> str:
    """SHA-256 of a split's pixels and labels (dtype and shape included)."""
    digest = hashlib.sha256()
    for array in (split.x, split.y):
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def class_counts(y: np.ndarray, classes: tuple[str, ...]) -> dict[str, int]:
    counts = np.bincount(y[(y >= 0) & (y < len(classes))], minlength=len(classes))
    return {name: int(n) for name, n in zip(classes, counts, strict=True)}


def describe(dataset: Dataset) -> dict[str, Any]:
    """The manifest of a dataset: counts, shape, classes, content hashes, plus the stage's info."""
    train = dataset.splits["train"]
    return {
        "classes": list(dataset.classes),
        "shape": list(dataset.image_shape),
        "dtype": str(train.x.dtype),
        "splits": {
            name: {
                "count": len(split.y),
                "sha256": content_hash(split),
                "class_counts": class_counts(split.y, dataset.classes),
            }
            for name, split in dataset.splits.items()
        },
        **dataset.info,
    }


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty sibling folder; on success it replaces ``target``, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
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


def write_bytes(path: Path, data: bytes) -> None:
    """Write a file atomically: a temporary sibling renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
        raise TrainflowError(f"{path}: not found (run the stage that writes it first)") from None
    except json.JSONDecodeError as exc:
        raise TrainflowError(f"{path}: not valid JSON ({exc})") from None


def write_dataset(path: Path, dataset: Dataset) -> dict[str, Any]:
    """Write every split as ``<split>/x.npy`` and ``<split>/y.npy`` plus ``manifest.json``, atomically."""
    manifest = describe(dataset)
    with atomic_dir(Path(path)) as tmp:
        for name, split in dataset.splits.items():
            (tmp / name).mkdir()
            np.save(tmp / name / "x.npy", split.x, allow_pickle=False)
            np.save(tmp / name / "y.npy", split.y, allow_pickle=False)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_dataset(path: Path, mmap: bool = False) -> Dataset:
    """Read a dataset written by :func:`write_dataset` (never with pickle)."""
    path = Path(path)
    manifest = read_json(path / MANIFEST)
    splits = {}
    for name in manifest["splits"]:
        try:
            x = np.load(path / name / "x.npy", allow_pickle=False, mmap_mode="r" if mmap else None)
            y = np.load(path / name / "y.npy", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise TrainflowError(f"{path / name}: cannot read split ({exc})") from None
        splits[name] = Split(x, y)
    info = {k: v for k, v in manifest.items() if k not in {"classes", "shape", "dtype", "splits"}}
    return Dataset(splits=splits, classes=tuple(manifest["classes"]), info=info)
