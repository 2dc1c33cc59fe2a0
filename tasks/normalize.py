"""normalize: data/augmented → data/normalized: the same items, validated, with what the model's first layers apply,
fitted on train (the TensorFlow Transform pattern: images are scaled to [0, 1], or standardised with train's
per-channel mean and std; texts are split into words and numbered by train's vocabulary, cut or padded to a sequence
length fitted on train; inside the model in training as in serving, so the two can never disagree)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from tasks.lib import artifacts, parallel, validation, vectorize
from tasks.lib.config import NormalizeParams, Params
from tasks.lib.errors import TrainflowError
from tasks.lib.stats import summarize

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


def normalize_text(augmented: artifacts.Stored, out: Path, params: Params) -> tuple[dict, list]:
    """Fit the vocabulary and sequence length on train, count every split's words outside it, copy the shards.

    Returns:
        The statistics for the manifest (``vocabulary_size``, ``sequence_length``, OOV rate per split) and the shards'
        manifest entries and summaries. The vocabulary itself goes to ``out/vocabulary.json``.
    """
    cfg = params.normalize
    vocabulary = vectorize.fit_vocabulary((s.x for s in augmented.shards("train", mmap=True)), cfg.vocabulary_size)
    vectorizer = vectorize.text_vectorizer(vocabulary=vocabulary)
    written, tokens, unknown = [], {}, {}
    for split, index in augmented.shard_ids():
        shard = augmented.shard(split, index)
        counts = vectorize.token_counts(vectorizer, shard.x)
        tokens.setdefault(split, []).append(counts[0])
        unknown.setdefault(split, []).append(counts[1])
        summary = summarize(split, index, shard.x, shard.y, tokens=counts)
        written.append((artifacts.write_shard(out, split, index, shard), summary))
    artifacts.write_json(out / vectorize.VOCABULARY, vocabulary)
    totals = {
        split: (int(np.sum(np.concatenate(t))), int(np.sum(np.concatenate(unknown[split]))))
        for split, t in tokens.items()
    }
    stats = {
        "method": "vocabulary",
        "vocabulary": vectorize.VOCABULARY,
        "vocabulary_size": len(vocabulary),
        "sequence_length": sequence_length(np.concatenate(tokens["train"]), cfg.sequence_quantile),
        "oov_rate": {split: round(u / max(t, 1), 4) for split, (t, u) in totals.items()},
    }
    return stats, written


def sums_shard(augmented: str, index: int) -> np.ndarray:
    return channel_sums(artifacts.open_dataset(Path(augmented)).shard("train", index).x)


def normalize_shard(augmented: str, out: str, split: str, index: int) -> tuple:
    """Write one shard (its uint8 pixels unchanged); its manifest entry and validation summary, in the same pass."""
    shard = artifacts.open_dataset(Path(augmented)).shard(split, index)
    summary = summarize(split, index, shard.x, shard.y)
    return artifacts.write_shard(Path(out), split, index, shard), summary


def run(params: Params) -> dict:
    """Train statistics, then data/augmented shard by shard → validated data/normalized (statistics in its manifest)."""
    augmented = artifacts.open_dataset(Path(params.paths.augmented).resolve())
    mapper = parallel.mapper(params.parallel)
    if augmented.kind == "text":  # one vectorizer in this process: text data is small, TensorFlow is not
        ids = augmented.shard_ids()
        with artifacts.atomic_dir(Path(params.paths.normalized)) as tmp:
            stats, written = normalize_text(augmented, tmp, params)
            validation.validate_summaries("normalized", [summary for _, summary in written], augmented.classes, params)
            entries = artifacts.by_split(ids, [entry for entry, _ in written])
            info = {**augmented.info, "normalize": stats}
            artifacts.write_manifest(tmp, entries, augmented.classes, (), artifacts.TEXT, info)
        log.info(
            "normalize: %d words, sequences of %d, OOV %s",
            stats["vocabulary_size"],
            stats["sequence_length"],
            stats["oov_rate"],
        )
        return stats
    channels = augmented.image_shape[-1]
    sums = []
    if params.normalize.method != "scale":
        calls = [(str(augmented.path), i) for i in range(len(augmented.shard_counts("train")))]
        sums = mapper("normalize-statistics", sums_shard, calls)
    stats = statistics(sums, channels, params.normalize)
    check(stats, params)
    ids = augmented.shard_ids()
    with artifacts.atomic_dir(Path(params.paths.normalized).resolve()) as tmp:
        written = mapper("normalize", normalize_shard, [(str(augmented.path), str(tmp), *i) for i in ids])
        validation.validate_summaries("normalized", [summary for _, summary in written], augmented.classes, params)
        entries = artifacts.by_split(ids, [entry for entry, _ in written])
        info = {**augmented.info, "normalize": stats}
        artifacts.write_manifest(tmp, entries, augmented.classes, augmented.image_shape, "uint8", info)
    log.info("normalize: %s, mean %s, std %s", stats["method"], stats["mean"], stats["std"])
    return stats


def describe(report: dict) -> str:
    """One line for the flow-run summary: the method (text: vocabulary and sequence length)."""
    if report["method"] == "vocabulary":
        return f"{report['vocabulary_size']} words, sequences of {report['sequence_length']}"
    return str(report["method"])


if __name__ == "__main__":
    from tasks.lib.cli import main

    main("normalize", run)
