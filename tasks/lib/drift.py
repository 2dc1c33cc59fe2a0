"""Drift: newly ingested data against the training data of the model in production (the registry's champion).

ingest records the statistics of its data (:func:`record`, ``paths.statistics``); train logs the statistics of its
training data with its MLflow run (:func:`write_reference`); deploy, the one stage that reads the registry, compares
the candidate's data with those of the current ``@champion`` (:func:`assess`).

Labels are compared with a chi-square test, pixel intensity with the population stability
index (PSI) of the per-image mean; per-class mean intensity shifts are reported. Texts: labels likewise, length with
the PSI of the word-count histogram, vocabulary with the share of new words outside the reference's most frequent
ones (out-of-vocabulary rate). Data of other classes, another image shape or another kind (texts against images) is
"not comparable": reported; with ``validation.drift_action: fail`` it blocks promotion, as drift does.
"""

from __future__ import annotations

import itertools
import logging
import string
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from tasks.lib import artifacts
from tasks.lib.artifacts import Dataset
from tasks.lib.config import Params, ValidationParams

log = logging.getLogger(__name__)

BINS = 20  # equal-width bins of per-image mean intensity over 0–255 for the PSI
EPSILON = 1e-4  # floor for empty bins/classes: PSI and chi-square are undefined on zeros
LENGTH_MAX = 200  # texts: BINS equal-width bins of word counts over 0–200, longer texts in the last bin
VOCABULARY = 5000  # texts: the reference's most frequent words kept (a JSON file logged with every train run)
# texts: the new data's most frequent words kept by ingest: its out-of-vocabulary rate is exact below this many
# distinct words (beyond, the rarest count as out of vocabulary), and the file stays small (not in DVC's cache)
NEW_VOCABULARY = 50_000
# Keras' TextVectorization default ("lower_and_strip_punctuation"), so drift sees the words normalize sees
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _words(text: str) -> list[str]:
    """A text's words: lower-cased, ASCII punctuation removed, split on whitespace."""
    return text.lower().translate(_PUNCTUATION).split()


def statistics(
    parts: Iterable[tuple[np.ndarray, np.ndarray]], classes: tuple[str, ...], vocabulary: int | None = VOCABULARY
) -> dict[str, Any]:
    """The statistics drift compares, of images or texts (the kind of the first part; no parts: images).

    Images: label counts, the histogram of per-image mean intensity, and per-class pixel mean/std (uint8 scale).
    Texts: label counts, the histogram of word counts, the VOCABULARY most frequent words with their counts and the
    number of words.

    Args:
        parts: (items, labels) pieces of the data, e.g. one per shard: accumulated, never concatenated.
        classes: the class names labels index into.
        vocabulary: texts: how many of the most frequent words to keep (None: all, for data compared right away).
    """
    parts = iter(parts)
    first = next(parts, None)
    if first is None:
        return _image_statistics([], classes)
    parts = itertools.chain([first], parts)
    text = np.asarray(first[0]).dtype.kind == "U"
    return _text_statistics(parts, classes, vocabulary) if text else _image_statistics(parts, classes)


def _label_counts(y: np.ndarray, k: int) -> np.ndarray:
    y = np.asarray(y)
    return np.bincount(y[(y >= 0) & (y < k)], minlength=k)


def _text_statistics(
    parts: Iterable[tuple[np.ndarray, np.ndarray]], classes: tuple[str, ...], top: int | None
) -> dict[str, Any]:
    k = len(classes)
    histogram = np.zeros(BINS, dtype=np.int64)
    labels, count, vocabulary = np.zeros(k, dtype=np.int64), 0, Counter[str]()
    for x, y in parts:
        lengths = np.zeros(len(x), dtype=np.int64)
        for i, text in enumerate(np.asarray(x).tolist()):
            found = _words(text)
            lengths[i] = len(found)
            vocabulary.update(found)
        # clipped to LENGTH_MAX, which np.histogram counts in the last bin
        histogram += np.histogram(np.minimum(lengths, LENGTH_MAX), bins=BINS, range=(0, LENGTH_MAX))[0]
        labels += _label_counts(y, k)
        count += len(y)
    return {
        "kind": "text",
        "count": count,
        "label_counts": {name: int(n) for name, n in zip(classes, labels, strict=True)},
        "length_histogram": (histogram / max(count, 1)).tolist(),
        "vocabulary": dict(vocabulary.most_common(top)),
        "tokens": int(sum(vocabulary.values())),
    }


def _image_statistics(parts: Iterable[tuple[np.ndarray, np.ndarray]], classes: tuple[str, ...]) -> dict[str, Any]:
    k = len(classes)
    histogram = np.zeros(BINS, dtype=np.int64)
    totals = np.zeros((3, k))  # pixels, sum, sum of squares per class
    labels, count, shape = np.zeros(k, dtype=np.int64), 0, None
    for x, y in parts:
        shape = tuple(int(d) for d in np.shape(x)[1:])
        y = np.asarray(y)
        flat = np.asarray(x).reshape(len(x), -1).astype(np.float64)
        means = flat.mean(axis=1) if flat.size else np.zeros(len(flat))
        histogram += np.histogram(means, bins=BINS, range=(0.0, 255.0))[0]
        known = (y >= 0) & (y < k)
        labels += _label_counts(y, k)
        np.add.at(totals[0], y[known], flat.shape[1])
        np.add.at(totals[1], y[known], flat[known].sum(axis=1))
        np.add.at(totals[2], y[known], (flat[known] ** 2).sum(axis=1))
        count += len(y)
    per_class = {}
    for label, name in enumerate(classes):
        pixels = totals[0, label]
        mean = totals[1, label] / pixels if pixels else None
        per_class[name] = {
            "mean": float(mean) if pixels else None,
            "std": float(np.sqrt(max(totals[2, label] / pixels - mean * mean, 0.0))) if pixels else None,
        }
    return {
        "kind": "images",
        "count": count,
        "image_shape": list(shape) if shape is not None else None,
        "label_counts": {name: int(n) for name, n in zip(classes, labels, strict=True)},
        "intensity_histogram": (histogram / max(count, 1)).tolist(),
        "per_class": per_class,
    }


def _psi(reference: list[float], current: list[float]) -> float:
    """Population stability index of two histograms (shares per bin)."""
    ref, cur = np.maximum(np.asarray(reference), EPSILON), np.maximum(np.asarray(current), EPSILON)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def compare(reference: dict[str, Any], current: dict[str, Any], params: ValidationParams) -> dict[str, Any]:
    """Scores of ``current`` against ``reference`` (statistics of one kind) and whether they count as drift.

    Returns:
        Both kinds: label_chi2, label_p_value, drifted, reasons. Images: intensity_psi, per_class_mean_shift.
        Texts: length_psi and oov_rate (share of current words outside the reference's vocabulary).
    """
    from scipy.stats import chisquare

    kind = reference.get("kind", "images")  # reference files written before texts existed hold images
    if current.get("kind", "images") != kind:
        raise ValueError(f"cannot compare {current.get('kind', 'images')} statistics with a {kind} reference")
    names = list(reference["label_counts"])
    observed = np.array([current["label_counts"].get(n, 0) for n in names], dtype=float)
    expected_share = np.maximum(np.array([reference["label_counts"][n] for n in names], dtype=float), EPSILON)
    expected = expected_share / expected_share.sum() * observed.sum()
    chi2, p_value = chisquare(observed, expected)
    reasons = []
    if p_value < params.drift_label_p_value:
        reasons.append(f"label distribution (chi-square p={p_value:.2g} < {params.drift_label_p_value})")
    scores: dict[str, Any] = {"label_chi2": float(chi2), "label_p_value": float(p_value)}
    if kind == "text":
        psi = _psi(reference["length_histogram"], current["length_histogram"])
        known = reference["vocabulary"]
        # exact when current keeps every word (check); with a cut vocabulary the words cut count as out of
        # vocabulary: rare words, mostly outside the reference's most frequent ones too
        in_reference = sum(n for word, n in current["vocabulary"].items() if word in known)
        oov_rate = 1 - in_reference / current["tokens"] if current["tokens"] else 0.0
        if psi > params.drift_psi:
            reasons.append(f"text length (PSI {psi:.3f} > {params.drift_psi})")
        if oov_rate > params.drift_oov_rate:
            reasons.append(f"vocabulary (out-of-vocabulary rate {oov_rate:.3f} > {params.drift_oov_rate})")
        scores |= {"length_psi": psi, "oov_rate": float(oov_rate)}
    else:
        psi = _psi(reference["intensity_histogram"], current["intensity_histogram"])
        shifts = {
            name: round(current["per_class"][name]["mean"] - ref["mean"], 3)
            for name, ref in reference["per_class"].items()
            if ref["mean"] is not None and current["per_class"].get(name, {}).get("mean") is not None
        }
        if psi > params.drift_psi:
            reasons.append(f"intensity (PSI {psi:.3f} > {params.drift_psi})")
        scores |= {"intensity_psi": psi, "per_class_mean_shift": shifts}
    return {**scores, "drifted": bool(reasons), "reasons": reasons}


def write_reference(stored: artifacts.Stored, params: Params) -> None:
    """Save the statistics of the train split (images or texts) the model is being trained on: the next ingest
    compares to it."""
    parts = ((shard.x, shard.y) for shard in stored.shards("train", mmap=True))
    artifacts.write_json(Path(params.paths.reference_stats), statistics(parts, stored.classes))


CHUNK = 4096  # items summarised at once: float64 copies of a chunk, never of the whole dataset


def record(dataset: Dataset, path: Path) -> dict[str, Any]:
    """Write the statistics of freshly ingested data (all splits), which deploy compares with the champion's."""
    parts = (
        (s.x[start : start + CHUNK], s.y[start : start + CHUNK])
        for s in dataset.splits.values()
        for start in range(0, len(s.y), CHUNK)
    )
    found = statistics(parts, dataset.classes, NEW_VOCABULARY)
    artifacts.write_json(Path(path), found)
    return found


def comparable(reference: dict[str, Any], current: dict[str, Any]) -> str | None:
    """Why ``current`` cannot be compared with ``reference`` (another kind, other classes, image shape or channels),
    or None."""
    kind = reference.get("kind", "images") if reference else None  # no statistics at all: the classes say so
    theirs = current.get("kind", "images")
    if kind is not None and kind != theirs:
        return f"reference holds {kind}, ingested {theirs}"
    if list(reference.get("label_counts", {})) != list(current["label_counts"]):
        return f"reference classes {list(reference.get('label_counts', {}))}, ingested {list(current['label_counts'])}"
    shape, new_shape = reference.get("image_shape"), current.get("image_shape")
    if kind == "images" and shape is not None and new_shape is not None and list(shape) != list(new_shape):
        return f"reference images {tuple(shape)} (H, W, C), ingested {tuple(new_shape)}"
    return None


def _scores_line(scores: dict[str, Any]) -> str:
    line = f"label p={scores['label_p_value']:.3g}"
    if "oov_rate" in scores:
        return f"{line}, length PSI {scores['length_psi']:.4f}, out-of-vocabulary rate {scores['oov_rate']:.3f}"
    return f"{line}, intensity PSI {scores['intensity_psi']:.4f}"


def assess(
    reference: dict[str, Any] | None, where: str, current: dict[str, Any], params: ValidationParams
) -> dict[str, Any]:
    """The drift report of the candidate's data (``current``) against the champion's training data.

    Args:
        reference: the statistics the champion's run logged (``{}``: it logged none); None: nothing to compare with.
        where: which statistics ``reference`` are (``name v1 (run …): path``), or why there are none.
        current: the statistics ingest recorded of the candidate's data.
        params: the thresholds and ``drift_action`` (ignore: nothing is compared).

    Returns:
        ``checked``, ``drifted``, ``action``, and ``why`` (not checked) or ``reference`` with :func:`compare`'s scores;
        ``comparable: False`` for data of another kind, classes or image shape. What ``fail`` blocks is deploy's gate.
    """
    report: dict[str, Any] = {"checked": False, "drifted": False, "action": params.drift_action}
    if params.drift_action == "ignore":
        return report | {"why": "validation.drift_action=ignore"}
    if reference is None:
        return report | {"why": where}
    report["reference"] = where
    why = comparable(reference, current)
    if why is not None:
        report |= {"comparable": False, "why": f"not comparable with {where}: {why}"}
        log.warning("drift: %s; not checked", report["why"])
        return report
    report |= {"checked": True, "comparable": True, **compare(reference, current, params)}
    if report["drifted"]:
        log.warning("drift against %s: %s", where, "; ".join(report["reasons"]))
    else:
        log.info("drift: none against %s (%s)", where, _scores_line(report))
    return report


def blocks(report: dict[str, Any]) -> str | None:
    """Why a drift report stops promotion (``drift_action: fail`` with drift or incomparable data), or None."""
    if report.get("action") != "fail":
        return None
    if report.get("comparable") is False:
        return f"data {report['why']} (validation.drift_action=fail)"
    if report.get("drifted"):
        reasons = "; ".join(report["reasons"])
        return f"data drift against {report['reference']}: {reasons} (validation.drift_action=fail)"
    return None
