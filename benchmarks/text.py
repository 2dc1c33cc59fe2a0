"""The text path on SMS spam against TF-IDF + logistic regression, same split, same machine, in one run.

    python benchmarks/text.py [--sms ../shared/data/sms-spam/sms.tsv] [--repeats 1]

Each repeat, in a fresh throw-away workspace (a copy of this repo's tracked files in a new git repository):

- the pipeline: cold `dvc repro` with ``data.source: tsv`` and ``data.path`` the SMS file, every other param at its
  default (stratified 70/15/15 split, seed 42), timed whole; then its test accuracy (reports/metrics.json), spam
  recall (reports/evaluate/per_class.json), train's fit seconds and epochs (the MLflow run's tags) and data/clean's
  split counts; no process may be left in the workspace;
- the baseline: :func:`baseline` fitted on that workspace's data/clean train texts (before augmentation) and scored
  on its data/clean test texts, so both see exactly the same split.

Prints a JSON summary, saves every run's raw figures to benchmarks/text.json and writes the "Text classification:
SMS spam" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pipeline import LOAD, Failed, fit_stats, run, survivors, test_accuracy  # noqa: E402
from results import machine, spread, today, write_section  # noqa: E402

from tasks.lib import artifacts  # noqa: E402
from tests.helpers import STAGES, make_workspace, ran  # noqa: E402

SECTION = "Text classification: SMS spam"
POSITIVE = "spam"
TARGETS = {"accuracy": 0.98, "recall": 0.92}  # the pipeline's, on the test split
# TF-IDF rows are L2-normalised, so scikit-learn's C=1 over-regularises them: 5-fold cross-validation on a stratified
# 70 % train split of the SMS data (never its test split) scored 0.951 at C=1 and 0.985–0.987 from C=10 to 1000; 10 is
# the smallest C on that plateau.
BASELINE_C = 10.0
SEED = 42  # params.yaml's: the fixed seed; --seeds adds others (the split and the training change with it)


def baseline_model(c: float = BASELINE_C) -> Pipeline:
    """Word unigrams and bigrams, sublinear TF-IDF, L2 logistic regression (liblinear, no class weights)."""
    return make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
        LogisticRegression(C=c, solver="liblinear", max_iter=1000),
    )


def scores(y: np.ndarray, predicted: np.ndarray, positive: int) -> dict[str, float]:
    """Accuracy, and the ``positive`` class's recall and precision (0 where nothing was predicted positive)."""
    hits = predicted == positive
    return {
        "accuracy": float(np.mean(predicted == y)),
        "recall": float(np.mean(hits[y == positive])),
        "precision": float(np.mean(y[hits] == positive)) if hits.any() else 0.0,
    }


def baseline(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    positive: int,
    *,
    c: float = BASELINE_C,
    repeats: int = 5,
) -> dict[str, Any]:
    """TF-IDF + logistic regression fitted on the train texts, scored on the test texts.

    Args:
        train_x, test_x: 1-D arrays of texts.
        train_y, test_y: integer labels.
        positive: the label whose recall and precision are reported (spam).
        c: the logistic regression's inverse regularisation strength.
        repeats: fits timed (vectorizer and classifier together); the last one is scored.

    Returns:
        accuracy, recall and precision of ``positive`` on the test texts, the median fit seconds and every fit's,
        the vocabulary size, the counts and the settings.
    """
    if not np.any(test_y == positive):
        raise ValueError(f"no test text has the positive label {positive}: its recall is undefined")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats}")
    fits = []
    for _ in range(repeats):
        model = baseline_model(c)
        start = time.perf_counter()
        model.fit(train_x, train_y)
        fits.append(time.perf_counter() - start)
    return {
        **scores(np.asarray(test_y), model.predict(test_x), positive),
        "fit_s": statistics.median(fits),
        "fit_runs_s": fits,
        "vocabulary": len(model[0].vocabulary_),
        "train_count": len(train_y),
        "test_count": len(test_y),
        "c": c,
        "solver": "liblinear",
    }


def baseline_on(clean: Path, positive: str = POSITIVE) -> dict[str, Any]:
    """:func:`baseline` on a clean dataset folder's train and test splits."""
    stored = artifacts.open_dataset(clean)
    train, test = stored.load("train"), stored.load("test")
    return baseline(train.x, train.y, test.x, test.y, stored.classes.index(positive))


def pipeline_results(root: Path, positive: str = POSITIVE) -> dict[str, Any]:
    """A workspace's figures after `dvc repro`: test accuracy, ``positive``'s test recall, fit time, clean counts."""
    paths = yaml.safe_load((root / "params.yaml").read_text())["paths"]
    per_class = json.loads((root / paths["per_class"]).read_text())["test"]["per_class"][positive]
    clean = artifacts.open_dataset(root / paths["clean"])
    fit = fit_stats(root)
    return {
        "accuracy": test_accuracy(root),
        "recall": float(per_class["recall"]),
        "precision": float(per_class["precision"]) if "precision" in per_class else None,
        "fit_s": fit["fit_s"],
        "epochs": fit["epochs"],
        "texts_per_s": fit["images_per_s"],  # train texts × epochs over fit seconds
        "clean_counts": {split: clean.count(split) for split in clean.splits},
        "classes": list(clean.classes),
    }


def measure(sms: Path, tmp: Path, index: int, seed: int = SEED) -> dict[str, Any]:
    """Cold `dvc repro` on the SMS file in a fresh workspace (``seed``: the split's and training's), then the
    baseline on the split it made."""
    root = tmp / f"sms{index}"
    root.mkdir()
    make_workspace(root, {"data": {"source": "tsv", "path": str(sms)}})
    if seed != SEED:
        params = yaml.safe_load((root / "params.yaml").read_text())
        (root / "params.yaml").write_text(yaml.safe_dump({**params, "seed": seed}, sort_keys=False))
    seconds, output = run(root, "dvc", "repro")
    if ran(output) != list(STAGES):
        raise Failed(f"dvc repro ran {ran(output)}, expected all stages")
    paths = yaml.safe_load((root / "params.yaml").read_text())["paths"]
    found = {
        "seed": seed,
        "repro_s": seconds,
        "left": survivors(root),
        "pipeline": pipeline_results(root),
        "baseline": baseline_on(root / paths["clean"]),
    }
    print(f"run {index}: {json.dumps(found)}", flush=True)
    return found


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the runs of each figure, pipeline and baseline side by side."""

    def median(side: str, key: str) -> float:
        return statistics.median(r[side][key] for r in runs)

    pipe = {key: median("pipeline", key) for key in ("accuracy", "recall", "fit_s", "epochs")}
    base = {key: median("baseline", key) for key in ("accuracy", "recall", "fit_s")}
    return {
        "runs": len(runs),
        "repro_s": statistics.median(r["repro_s"] for r in runs),
        "pipeline": pipe,
        "baseline": base,
        "met": {key: pipe[key] >= target for key, target in TARGETS.items()},
        "clean_counts": runs[-1]["pipeline"]["clean_counts"],
        "processes_left": sum(len(r["left"]) for r in runs),
    }


def other_seeds(runs: list[dict[str, Any]]) -> list[str]:
    """A table of every run of another seed than params.yaml's: its split and training differ."""
    others = [r for r in runs if r.get("seed", SEED) != SEED]
    if not others:
        return []
    rows = [
        f"| {r['seed']} | {100 * r['pipeline']['accuracy']:.2f} % | {100 * r['pipeline']['recall']:.2f} % | "
        f"{100 * r['baseline']['accuracy']:.2f} % | {100 * r['baseline']['recall']:.2f} % | "
        f"{r['pipeline']['epochs']} | {r['pipeline']['fit_s']:.1f} |"
        for r in others
    ]
    return [
        "",
        "Other seeds (`--seeds`): `seed` sets the split and the training, so each row is another 70/15/15 split.",
        "",
        "| seed | test accuracy | spam recall | baseline accuracy | baseline spam recall | epochs | `model.fit` (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
    ]


def report(all_runs: list[dict[str, Any]], sms: Path, repeats: int) -> str:
    seeds = [str(r["seed"]) for r in all_runs if r.get("seed", SEED) != SEED]
    runs = [r for r in all_runs if r.get("seed", SEED) == SEED]

    def values(side: str, key: str, scale: float = 1.0) -> list[float]:
        return [scale * r[side][key] for r in runs]

    def cell(numbers: list[float], digits: int, unit: str = "") -> str:
        median, low_high = spread(numbers, digits)
        return f"{median}{unit}" + (f" ({low_high}{unit})" if len(numbers) > 1 else "")

    def score_row(figure: str, key: str) -> str:
        pipe, base = values("pipeline", key, 100), values("baseline", key, 100)
        met = "✅" if statistics.median(pipe) >= 100 * TARGETS[key] else "❌"
        return f"| {figure} | ≥ {100 * TARGETS[key]:.0f} % | {cell(pipe, 2, ' %')} | {cell(base, 2, ' %')} | {met} |"

    counts = runs[-1]["pipeline"]["clean_counts"]
    left = sum(len(r["left"]) for r in runs)
    base = runs[-1]["baseline"]
    rows = [
        score_row("test accuracy", "accuracy"),
        score_row("spam recall (test)", "recall"),
        f"| training time (s): train's `model.fit`; the baseline's TF-IDF + fit, median of {len(base['fit_runs_s'])} "
        f"| — | {cell(values('pipeline', 'fit_s'), 1)} | {cell(values('baseline', 'fit_s'), 3)} | |",
        f"| train: epochs run | — | {cell(values('pipeline', 'epochs'), 0)} | — | |",
        f"| cold `dvc repro`, every stage (s) | — | {cell([r['repro_s'] for r in runs], 1)} | — | |",
        f"| processes left in the workspace | none | {left} | — | {'✅' if left == 0 else '❌'} |",
    ]
    return "\n".join(
        [
            f"`python benchmarks/text.py --repeats {repeats}{' --seeds ' + ' '.join(seeds) if seeds else ''}` on "
            f"`{sms.name}` (SMS Spam Collection). Date: {today()}. "
            f"Machine: {machine()}. Training times are on this machine's cores, in the same run.",
            "",
            "The pipeline: cold `dvc repro` with `data.source: tsv`, every other param at its default (stratified "
            "70/15/15 split, seed 42; the text model of `train`). The baseline: scikit-learn `TfidfVectorizer` (word "
            f"unigrams and bigrams, sublinear TF) + `LogisticRegression` (liblinear, C={base['c']:g}, no class "
            "weights), fitted on the same workspace's data/clean train texts (before augmentation) and scored on its "
            f"data/clean test texts. data/clean: {', '.join(f'{s} {n:,}' for s, n in counts.items())} texts. The "
            "targets are the pipeline's.",
            "",
            "| figure | target | pipeline | baseline: TF-IDF + logistic regression | pipeline met |",
            "| --- | --- | --- | --- | --- |",
            *rows,
            *other_seeds(all_runs),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sms", type=Path, default=ROOT.parent / "shared/data/sms-spam/sms.tsv")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="*", default=[], help="other seeds to run once each, as well")
    parser.add_argument("--keep", action="store_true", help="keep the workspaces (printed) for inspection")
    args = parser.parse_args(argv)
    sms = args.sms.resolve()
    if not sms.is_file():
        parser.error(f"{sms}: no such file")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tmp = Path(tempfile.mkdtemp(prefix="trainflow-text-bench-"))
    try:
        runs = [measure(sms, tmp, i) for i in range(args.repeats)]
        runs += [measure(sms, tmp, args.repeats + i, seed) for i, seed in enumerate(args.seeds)]
        found = {"date": today(), "machine": machine(), "sms": str(sms), "load": LOAD, "runs": runs}
        (ROOT / "benchmarks/text.json").write_text(json.dumps(found, indent=1) + "\n")
        write_section(SECTION, report(runs, sms, args.repeats))
        print(json.dumps(summary([r for r in runs if r["seed"] == SEED]), indent=2))
    finally:
        if args.keep:
            print(f"workspaces kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
