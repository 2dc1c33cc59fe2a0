"""Drift: newly ingested data against the training data of the model in production (the registry's champion).

train logs the statistics of its training data with its MLflow run; ingest compares new data with those of the
current ``@champion``. Labels are compared with a chi-square test, pixel intensity with the population stability
index (PSI) of the per-image mean; per-class mean intensity shifts are reported. Data of other classes or another
image shape is "not comparable": reported, and the run goes on unless ``validation.drift_action`` is ``fail``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from tasks.lib import artifacts
from tasks.lib.artifacts import Dataset
from tasks.lib.config import Params, ValidationParams
from tasks.lib.errors import TrainflowError, TransientError

log = logging.getLogger(__name__)

BINS = 20  # equal-width bins of per-image mean intensity over 0–255 for the PSI
EPSILON = 1e-4  # floor for empty bins/classes: PSI and chi-square are undefined on zeros


def statistics(parts: Iterable[tuple[np.ndarray, np.ndarray]], classes: tuple[str, ...]) -> dict[str, Any]:
    """Label counts, the histogram of per-image mean intensity, and per-class pixel mean/std (uint8 scale).

    Args:
        parts: (images, labels) pieces of the data, e.g. one per shard: accumulated, never concatenated.
        classes: the class names labels index into.
    """
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
        labels += np.bincount(y[known], minlength=k)
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
        "count": count,
        "image_shape": list(shape) if shape is not None else None,
        "label_counts": {name: int(n) for name, n in zip(classes, labels, strict=True)},
        "intensity_histogram": (histogram / max(count, 1)).tolist(),
        "per_class": per_class,
    }


def compare(reference: dict[str, Any], current: dict[str, Any], params: ValidationParams) -> dict[str, Any]:
    """Scores of ``current`` against ``reference`` and whether they count as drift under params."""
    from scipy.stats import chisquare

    names = list(reference["label_counts"])
    observed = np.array([current["label_counts"].get(n, 0) for n in names], dtype=float)
    expected_share = np.maximum(np.array([reference["label_counts"][n] for n in names], dtype=float), EPSILON)
    expected = expected_share / expected_share.sum() * observed.sum()
    chi2, p_value = chisquare(observed, expected)
    ref_hist = np.maximum(np.asarray(reference["intensity_histogram"]), EPSILON)
    cur_hist = np.maximum(np.asarray(current["intensity_histogram"]), EPSILON)
    psi = float(np.sum((cur_hist - ref_hist) * np.log(cur_hist / ref_hist)))
    shifts = {
        name: round(current["per_class"][name]["mean"] - ref["mean"], 3)
        for name, ref in reference["per_class"].items()
        if ref["mean"] is not None and current["per_class"].get(name, {}).get("mean") is not None
    }
    reasons = []
    if p_value < params.drift_label_p_value:
        reasons.append(f"label distribution (chi-square p={p_value:.2g} < {params.drift_label_p_value})")
    if psi > params.drift_psi:
        reasons.append(f"intensity (PSI {psi:.3f} > {params.drift_psi})")
    return {
        "label_chi2": float(chi2),
        "label_p_value": float(p_value),
        "intensity_psi": psi,
        "per_class_mean_shift": shifts,
        "drifted": bool(reasons),
        "reasons": reasons,
    }


def write_reference(stored: artifacts.Stored, params: Params) -> None:
    """Save the statistics of the train split the model is being trained on: the next ingest compares to it."""
    parts = ((shard.x, shard.y) for shard in stored.shards("train", mmap=True))
    artifacts.write_json(Path(params.paths.reference_stats), statistics(parts, stored.classes))


def comparable(reference: dict[str, Any], dataset: Dataset) -> str | None:
    """Why ``dataset`` cannot be compared with ``reference`` (other classes, image shape or channels), or None."""
    if list(reference.get("label_counts", {})) != list(dataset.classes):
        return f"reference classes {list(reference.get('label_counts', {}))}, ingested {list(dataset.classes)}"
    shape = reference.get("image_shape")
    if shape is not None and tuple(shape) != dataset.image_shape:
        return f"reference images {tuple(shape)} (H, W, C), ingested {dataset.image_shape}"
    return None


def check(dataset: Dataset, params: Params) -> dict[str, Any]:
    """Compare freshly ingested data (all splits) with the champion's training data; warn or fail as params say.

    Raises:
        TrainflowError: on drift, or data that cannot be compared, when ``validation.drift_action`` is ``fail``.
    """
    action = params.validation.drift_action
    report: dict[str, Any] = {"checked": False, "drifted": False, "action": action}
    if action == "ignore":
        report["why"] = "validation.drift_action=ignore"
    else:
        from tasks.lib import tracking

        name = params.deploy.model_name
        try:
            found = tracking.champion_json(params.tracking, name, f"train/{Path(params.paths.reference_stats).name}")
        except TransientError:
            raise  # the registry is unreachable: a retry may pass
        except TrainflowError as exc:  # a champion without reference statistics
            found = ({}, str(exc))
        if found is None:
            report["why"] = f"no reference yet: {name} has no champion"
        else:
            reference, where = found
            report["reference"] = where
            why = comparable(reference, dataset)
            if why is not None:
                report |= {"comparable": False, "why": f"not comparable with {where}: {why}"}
                if action == "fail":
                    raise TrainflowError(f"drift: {report['why']} (validation.drift_action=fail)")
                log.warning("drift: %s; not checked", report["why"])
            else:
                parts = ((s.x, s.y) for s in dataset.splits.values())
                scores = compare(reference, statistics(parts, dataset.classes), params.validation)
                report |= {"checked": True, "comparable": True, **scores}
                if report["drifted"] and action == "fail":
                    raise TrainflowError(f"data drift against {where}: {'; '.join(report['reasons'])}")
                if report["drifted"]:
                    log.warning("drift against %s: %s", where, "; ".join(report["reasons"]))
                else:
                    log.info(
                        "drift: none against %s (label p=%.3g, intensity PSI %.4f)",
                        where,
                        report["label_p_value"],
                        report["intensity_psi"],
                    )
    artifacts.write_json(Path(params.paths.drift_report), report)
    return report
