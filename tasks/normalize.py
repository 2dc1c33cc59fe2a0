"""normalize: data/augmented → data/normalized (float32 in [0, 1] or standardised with train statistics)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tasks.lib import artifacts, parallel, validation
from tasks.lib.artifacts import Split
from tasks.lib.config import NormalizeParams, Params
from tasks.lib.stats import row_hashes, summarize

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


def sums_shard(augmented: str, index: int) -> np.ndarray:
    return channel_sums(artifacts.open_dataset(Path(augmented)).shard("train", index).x)


def normalize_shard(augmented: str, out: str, split: str, index: int, stats: dict) -> tuple:
    """Write one shard normalised; its manifest entry and validation summary."""
    shard = artifacts.open_dataset(Path(augmented)).shard(split, index)
    x = apply(shard.x, stats)
    # Content hashes of the uint8 input: normalising maps equal images to equal images and distinct to distinct,
    # so the leak check is the same, on a quarter of the bytes.
    hashes = row_hashes(np.asarray(shard.x).reshape(len(shard.x), -1))
    summary = summarize(split, index, x, shard.y, hashes=hashes)
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


def describe(report: dict) -> str:
    """One line for the flow-run summary: the method."""
    return str(report["method"])


if __name__ == "__main__":
    from tasks.lib.cli import main

    main("normalize", run)
