"""normalize: data/augmented → data/normalized (float32 in [0, 1] or standardised with train statistics)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tasks import artifacts, parallel, validation
from tasks.artifacts import Dataset, Split
from tasks.config import NormalizeParams, Params

log = logging.getLogger(__name__)

SCALE = 1.0 / 255.0


def channel_sums(x: np.ndarray) -> np.ndarray:
    """(3, C) float64: pixel count, sum and sum of squares per channel of ``x`` scaled to [0, 1]."""
    channels = x.shape[-1]
    flat = np.asarray(x).reshape(-1, channels).astype(np.float64) * SCALE
    return np.stack([np.full(channels, len(flat), dtype=np.float64), flat.sum(axis=0), (flat * flat).sum(axis=0)])


def statistics(sums: list[np.ndarray], channels: int, params: NormalizeParams) -> dict:
    """Per-channel statistics of the train split from its shards' :func:`channel_sums`; identity for ``scale``."""
    if params.method == "scale":
        return {"method": "scale", "scale": SCALE, "mean": [0.0] * channels, "std": [1.0] * channels}
    count, total, squares = np.sum(sums, axis=0) if sums else np.zeros((3, channels))
    count = np.maximum(count, 1.0)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    return {
        "method": "standardize",
        "scale": SCALE,
        "mean": mean.tolist(),
        "std": np.where(std > 0, std, 1.0).tolist(),
    }


def apply(x: np.ndarray, stats: dict) -> np.ndarray:
    """float32 ``(x * scale - mean) / std``: what the saved model's preprocessing layers compute."""
    out = x.astype(np.float32)  # one copy, then in place
    out *= np.float32(stats["scale"])
    if stats["method"] == "standardize":
        out -= np.asarray(stats["mean"], dtype=np.float32)
        out /= np.asarray(stats["std"], dtype=np.float32)
    return out


def normalize(dataset: Dataset, params: NormalizeParams) -> tuple[Dataset, dict]:
    """Normalise every split of an in-memory dataset with statistics computed on train only.

    Returns:
        The float32 dataset and the statistics (also stored in its manifest as ``normalize``).
    """
    train = np.asarray(dataset.splits["train"].x)
    stats = statistics([channel_sums(train)], train.shape[-1], params)
    splits = {name: Split(apply(np.asarray(s.x), stats), np.asarray(s.y)) for name, s in dataset.splits.items()}
    return Dataset(splits=splits, classes=dataset.classes, info={**dataset.info, "normalize": stats}), stats


# ---------------------------------------------------------------------------------------------- per-shard work


def sums_shard(augmented: str, index: int) -> np.ndarray:
    return channel_sums(artifacts.open_dataset(Path(augmented)).shard("train", index).x)


def normalize_shard(augmented: str, out: str, split: str, index: int, stats: dict) -> tuple:
    """Write one shard normalised; its manifest entry and validation summary."""
    shard = artifacts.open_dataset(Path(augmented)).shard(split, index)
    x = apply(shard.x, stats)
    # Content hashes of the uint8 input: normalising maps equal images to equal images and distinct to distinct,
    # so the leak check is the same, on a quarter of the bytes.
    hashes = validation.row_hashes(np.asarray(shard.x).reshape(len(shard.x), -1))
    summary = validation.summarize(split, index, x, shard.y, hashes=hashes)
    return artifacts.write_shard(Path(out), split, index, Split(x, shard.y)), summary


def run(params: Params, mapper: parallel.Mapper = parallel.local_map) -> dict:
    """Read data/augmented shard by shard, normalise, validate, write data/normalized (statistics in its manifest)."""
    augmented = artifacts.open_dataset(Path(params.paths.augmented))
    channels = augmented.image_shape[-1]
    sums = []
    if params.normalize.method != "scale":
        calls = [(str(augmented.path), i) for i in range(len(augmented.shard_counts("train")))]
        sums = mapper("normalize-statistics", sums_shard, calls)
    stats = statistics(sums, channels, params.normalize)
    ids = augmented.shard_ids()
    with artifacts.atomic_dir(Path(params.paths.normalized)) as tmp:
        written = mapper("normalize", normalize_shard, [(str(augmented.path), str(tmp), *i, stats) for i in ids])
        validation.validate_summaries("normalized", [summary for _, summary in written], augmented.classes, params)
        entries = artifacts.by_split(ids, [entry for entry, _ in written])
        info = {**augmented.info, "normalize": stats}
        artifacts.write_manifest(tmp, entries, augmented.classes, augmented.image_shape, "float32", info)
    log.info("normalize: %s, mean %s, std %s", stats["method"], stats["mean"], stats["std"])
    return stats


if __name__ == "__main__":
    from tasks.cli import main

    main("normalize", run)
