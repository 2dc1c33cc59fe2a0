"""Drift: the training data of the current model (reference statistics) against newly ingested data.

Labels are compared with a chi-square test, pixel intensity with the population stability index (PSI) of the
per-image mean; per-class mean intensity shifts are reported. TFDV has this; the other pipeline tools do not.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from tasks import artifacts
from tasks.artifacts import Dataset
from tasks.config import Params, ValidationParams
from tasks.errors import TrainflowError

log = logging.getLogger(__name__)

BINS = 20  # equal-width bins of per-image mean intensity over 0–255 for the PSI
EPSILON = 1e-4  # floor for empty bins/classes: PSI and chi-square are undefined on zeros


def statistics(x: np.ndarray, y: np.ndarray, classes: tuple[str, ...]) -> dict[str, Any]:
    """Label counts, the histogram of per-image mean intensity, and per-class pixel mean/std (uint8 scale)."""
    flat = np.asarray(x).reshape(len(x), -1).astype(np.float32)
    means = flat.mean(axis=1) if len(flat) else np.zeros(0)
    histogram = np.histogram(means, bins=BINS, range=(0.0, 255.0))[0]
    per_class = {}
    for label, name in enumerate(classes):
        pixels = flat[y == label]
        per_class[name] = {
            "mean": float(pixels.mean()) if pixels.size else None,
            "std": float(pixels.std()) if pixels.size else None,
        }
    return {
        "count": len(y),
        "label_counts": artifacts.class_counts(np.asarray(y), classes),
        "intensity_histogram": (histogram / max(len(means), 1)).tolist(),
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


def write_reference(dataset: Dataset, params: Params) -> None:
    """Save the statistics of the train split the model is being trained on: the next ingest compares to it."""
    train = dataset.splits["train"]
    artifacts.write_json(Path(params.paths.reference_stats), statistics(train.x, train.y, dataset.classes))


def check(dataset: Dataset, params: Params) -> dict[str, Any]:
    """Compare freshly ingested data (all splits) with the reference; warn or fail as params say.

    Raises:
        TrainflowError: on drift when ``validation.drift_action`` is ``fail``.
    """
    action = params.validation.drift_action
    reference_path = Path(params.paths.reference_stats)
    if action == "off" or not reference_path.is_file():
        why = "validation.drift_action=off" if action == "off" else f"no reference yet ({reference_path})"
        report: dict[str, Any] = {"checked": False, "drifted": False, "why": why}
    else:
        x = np.concatenate([s.x for s in dataset.splits.values()])
        y = np.concatenate([s.y for s in dataset.splits.values()])
        reference = artifacts.read_json(reference_path)
        if list(reference["label_counts"]) != list(dataset.classes):
            raise TrainflowError(
                f"{reference_path}: reference classes {list(reference['label_counts'])} differ from the "
                f"ingested classes {list(dataset.classes)}"
            )
        report = {
            "checked": True,
            "action": action,
            **compare(reference, statistics(x, y, dataset.classes), params.validation),
        }
        if report["drifted"] and action == "fail":
            raise TrainflowError(f"data drift against {reference_path}: {'; '.join(report['reasons'])}")
        if report["drifted"]:
            log.warning("drift against %s: %s", reference_path, "; ".join(report["reasons"]))
        else:
            log.info("drift: none (label p=%.3g, intensity PSI %.4f)", report["label_p_value"], report["intensity_psi"])
    artifacts.write_json(Path(params.paths.drift_report), report)
    return report
