"""normalize: data/augmented → data/normalized: the train statistics that the model's first layers apply, not a copy
of the data (the TensorFlow Transform pattern: images are scaled to [0, 1], or standardised with train's per-channel
mean and std; texts are split into words and numbered by train's vocabulary, cut or padded to a sequence length
fitted on train; inside the model in training as in serving, so the two can never disagree).

data/normalized holds ``statistics.json`` (texts: and ``vocabulary.json``). The pixels and texts stay where augment
wrote and validated them; train reads them from there.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from tasks.lib import artifacts, parallel, vectorize
from tasks.lib.config import NormalizeParams, Params
from tasks.lib.errors import TrainflowError

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


def check(stats: dict, params: Params) -> None:
    """Refuse statistics that would blow pixels up: standardised values beyond validation.max_abs_standardized."""
    scale, mean, std = stats["scale"], np.asarray(stats["mean"]), np.asarray(stats["std"])
    extreme = float(np.max(np.maximum(np.abs(0.0 - mean), np.abs(255 * scale - mean)) / std))
    if extreme > params.validation.max_abs_standardized:
        raise TrainflowError(
            f"{params.paths.augmented}: normalize.method={stats['method']} would map pixels as far as "
            f"{extreme:.1f} standard deviations (std {stats['std']}), beyond validation.max_abs_standardized="
            f"{params.validation.max_abs_standardized}; a near-constant channel: use normalize.method=scale"
        )


def sequence_length(train_tokens: np.ndarray, quantile: float) -> int:
    """The model's sequence length: the ``quantile`` of train texts' word counts (at least 1)."""
    return max(1, math.ceil(float(np.quantile(train_tokens, quantile)))) if len(train_tokens) else 1


def oov_rates(tokens: dict[str, int], unknown: dict[str, int]) -> dict[str, float]:
    """Per split: the share of its words outside the vocabulary (0 for a split without words)."""
    return {split: unknown[split] / total if total else 0.0 for split, total in tokens.items()}


def check_oov(rates: dict[str, float], params: Params) -> None:
    """Refuse a vocabulary that covers val or test poorly: more than validation.max_oov_rate of their words unknown.

    val/test only: the vocabulary is train's most frequent words, so train's own rate says nothing of how well it
    covers unseen text (and is not 0 either once normalize.vocabulary_size cuts the rare ones).
    """
    limit = params.validation.max_oov_rate
    for split, rate in rates.items():
        if split != "train" and rate > limit:
            raise TrainflowError(
                f"{params.paths.augmented}: {split} has {rate:.4f} of its words outside the train vocabulary, "
                f"beyond validation.max_oov_rate={limit} (normalize.vocabulary_size={params.normalize.vocabulary_size})"
            )


def text_statistics(augmented: artifacts.Stored, params: Params) -> tuple[dict, list[str]]:
    """Fit the vocabulary and sequence length on train; count every split's words outside it, shard by shard.

    Returns:
        The statistics (``vocabulary_size``, ``sequence_length``, OOV rate per split) and the vocabulary itself.

    Raises:
        TrainflowError: val's or test's OOV rate is beyond validation.max_oov_rate (:func:`check_oov`).
    """
    cfg = params.normalize
    vocabulary = vectorize.fit_vocabulary((s.x for s in augmented.shards("train", mmap=True)), cfg.vocabulary_size)
    vectorizer = vectorize.text_vectorizer(vocabulary=vocabulary)
    train_tokens, tokens, unknown = [], dict.fromkeys(augmented.splits, 0), dict.fromkeys(augmented.splits, 0)
    for split, index in augmented.shard_ids():
        counts = vectorize.token_counts(vectorizer, augmented.shard(split, index, mmap=True).x)
        tokens[split] += int(counts[0].sum())
        unknown[split] += int(counts[1].sum())
        if split == "train":
            train_tokens.append(counts[0])
    rates = oov_rates(tokens, unknown)
    check_oov(rates, params)
    stats = {
        "method": "vocabulary",
        "vocabulary": vectorize.VOCABULARY,
        "vocabulary_size": len(vocabulary),
        "sequence_length": sequence_length(np.concatenate(train_tokens), cfg.sequence_quantile),
        "oov_rate": {split: round(rate, 4) for split, rate in rates.items()},
    }
    return stats, vocabulary


def sums_shard(augmented: str, index: int) -> np.ndarray:
    """:func:`channel_sums` of train shard ``index`` of the dataset at ``augmented`` (one mapped call)."""
    return channel_sums(artifacts.open_dataset(Path(augmented)).shard("train", index, mmap=True).x)


def run(params: Params) -> dict:
    """Fit the train statistics of data/augmented, check them, write them to data/normalized (no data copy).

    Images: augment validated the pixels, so nothing here reads them again but the train shards' sums for
    ``standardize`` (``scale`` reads no pixel at all). Texts: the vocabulary, and every split's OOV rate.
    """
    augmented = artifacts.open_dataset(Path(params.paths.augmented).resolve())  # absolute: workers may run elsewhere
    vocabulary = None
    if augmented.kind == "text":  # one vectorizer in this process: text data is small, TensorFlow is not
        stats, vocabulary = text_statistics(augmented, params)
        log.info(
            "normalize: %d words, sequences of %d, OOV %s",
            stats["vocabulary_size"],
            stats["sequence_length"],
            stats["oov_rate"],
        )
    else:
        sums = []
        if params.normalize.method != "scale":
            calls = [(str(augmented.path), i) for i in range(len(augmented.shard_counts("train")))]
            sums = parallel.mapper(params.parallel)("normalize-statistics", sums_shard, calls)
        stats = statistics(sums, augmented.image_shape[-1], params.normalize)
        check(stats, params)
        log.info("normalize: %s, mean %s, std %s", stats["method"], stats["mean"], stats["std"])
    stats["fitted_on"] = artifacts.fitted_on(augmented)  # train refuses statistics of other data
    with artifacts.atomic_dir(Path(params.paths.normalized)) as tmp:
        if vocabulary is not None:
            artifacts.write_json(tmp / vectorize.VOCABULARY, vocabulary)
        artifacts.write_json(tmp / artifacts.STATISTICS, stats)
    return stats


if __name__ == "__main__":
    from tasks.lib.cli import main

    main("normalize", run)
