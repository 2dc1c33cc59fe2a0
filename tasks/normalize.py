"""normalize: data/augmented → data/normalized (float32 in [0, 1] or standardised with train statistics)."""

from __future__ import annotations

import logging

import numpy as np

from tasks import artifacts, validation
from tasks.artifacts import Dataset, Split
from tasks.config import NormalizeParams, Params

log = logging.getLogger(__name__)

SCALE = 1.0 / 255.0


def statistics(x_train: np.ndarray, params: NormalizeParams) -> dict:
    """Per-channel statistics of the train split after scaling to [0, 1]; identity for ``scale``."""
    channels = x_train.shape[-1]
    if params.method == "scale":
        return {"method": "scale", "scale": SCALE, "mean": [0.0] * channels, "std": [1.0] * channels}
    flat = x_train.reshape(-1, channels).astype(np.float64) * SCALE
    std = flat.std(axis=0)
    return {
        "method": "standardize",
        "scale": SCALE,
        "mean": flat.mean(axis=0).tolist(),
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
    """Normalise every split with statistics computed on train only.

    Returns:
        The float32 dataset and the statistics (also stored in its manifest as ``normalize``).
    """
    stats = statistics(np.asarray(dataset.splits["train"].x), params)
    splits = {name: Split(apply(np.asarray(s.x), stats), np.asarray(s.y)) for name, s in dataset.splits.items()}
    return Dataset(splits=splits, classes=dataset.classes, info={**dataset.info, "normalize": stats}), stats


def run(params: Params) -> dict:
    """Read data/augmented, normalise, write data/normalized (statistics in its manifest)."""
    normalized, stats = normalize(artifacts.read_dataset(params.paths.augmented), params.normalize)
    validation.validate_dataset("normalized", normalized, params)
    artifacts.write_dataset(params.paths.normalized, normalized)
    log.info("normalize: %s, mean %s, std %s", stats["method"], stats["mean"], stats["std"])
    return stats


if __name__ == "__main__":
    from tasks.cli import main

    main("normalize", run)
