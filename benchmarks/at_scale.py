"""The pipeline against the seed script at the scale users train at: 60,000 distinct images (issue 30, targets 0, 3).

    python benchmarks/at_scale.py [--mnist ../shared/data/mnist] [--repeats 3] [--factor 6] [--results]

- the data: MNIST t10k ×``factor``, every copy shifted (benchmarks/training_path.images), so clean keeps them all;
  one .npz, the first 80 % train and the last 20 % test (48,000 / 12,000 at ×6);
- the seed script: benchmarks/baseline.py on that .npz (the seed's CNN, Adam, batch 64, 10 epochs, no validation),
  the whole process timed from outside;
- the pipeline: cold `dvc repro` in a fresh workspace reading the same .npz (``data.source: npz``), with
  benchmarks/pipeline.py's settings for the seed's work (ordered split, val 2 % of all images taken from the train
  part, augment off, no dropout, early stopping and learning-rate decay out of reach); every stage runs, the audit
  included. Per stage: the seconds between DVC's "Running stage" lines (the stage process and DVC's own work
  after it);
- training speed: each side's ``model.fit`` seconds (the seed's own timer; train's ``train.fit_seconds`` tag, which
  includes its validation of the 1,200 val images each epoch) over its training steps, ms a step, and images/s;
- repeats alternate which side runs first; the ratios pair the two runs of a repeat.

Targets (issue 30): the pipeline's training images/s ≥ 0.95× the seed's (target 0, at 60,000 images); cold
`dvc repro` ≤ 1.25× the seed script (target 3). With --results writes the "At 60,000 images" section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pipeline import (  # noqa: E402
    EPOCHS,
    LOAD,
    SAME_AS_BASELINE,
    Failed,
    baseline,
    fit_stats,
    row,
    survivors,
    test_accuracy,
)
from results import headline_row, headline_table, machine, paired, today, write_section  # noqa: E402
from training_path import images  # noqa: E402

from tests.helpers import STAGES, make_workspace, tool_env  # noqa: E402

SECTION = "At 60,000 images: the pipeline vs the seed script"
STEP = re.compile(r"Running stage '(\w+)'")


def prepare(mnist: Path, factor: int, out: Path) -> dict[str, Any]:
    """MNIST t10k ×``factor`` (shifted copies) as an .npz at ``out``: first 80 % train, last 20 % test."""
    x, y, what = images(mnist, 10_000 * factor)
    test = len(y) // 5
    np.savez(out, x_train=x[:-test], y_train=y[:-test], x_test=x[-test:], y_test=y[-test:])
    return {"images": len(y), "train": len(y) - test, "test": test, "what": what}


def repro(root: Path) -> dict[str, Any]:
    """Cold `dvc repro`, its output read as it comes: the whole wall time and each stage's share of it."""
    LOAD.append(os.getloadavg()[0])
    start = time.perf_counter()
    marks: list[tuple[str, float]] = []
    output: list[str] = []
    with subprocess.Popen(
        ["dvc", "repro"], cwd=root, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            found = STEP.search(line)
            if found:
                marks.append((found.group(1), time.perf_counter()))
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise Failed(f"dvc repro exited {proc.returncode} in {root}:\n{''.join(output)[-3000:]}")
    if [name for name, _ in marks] != list(STAGES):
        raise Failed(f"dvc repro ran {[name for name, _ in marks]}, expected every stage")
    ends = [t for _, t in marks[1:]] + [start + seconds]
    stages = {name: end - begun for (name, begun), end in zip(marks, ends, strict=True)}
    stages["dvc before the first stage"] = marks[0][1] - start
    found = {"full_s": seconds, "stages": stages, "accuracy": test_accuracy(root), "left": survivors(root)}
    fit = fit_stats(root)
    found |= fit | {"step_ms": 1000 * fit["fit_s"] / (fit["epochs"] * -(-fit["train_images"] // 64))}
    print(f"pipeline: {json.dumps(found)}", flush=True)
    return found


def side_by_side(mnist: Path, factor: int, repeats: int, epochs: int, tmp: Path) -> dict[str, Any]:
    npz = tmp / f"mnist-x{factor}.npz"
    data = prepare(mnist, factor, npz)
    seeds, pipes = [], []
    for i in range(repeats):
        if i % 2 == 0:  # the two alternate which runs first
            seeds.append(baseline(npz, epochs))
        sections = {**SAME_AS_BASELINE, "data": {"source": "npz", "path": str(npz)}}
        sections["train"] = {**sections["train"], "epochs": epochs}
        pipes.append(repro(make_workspace(tmp / f"repro{i}", sections)))
        if i % 2 == 1:
            seeds.append(baseline(npz, epochs))
    return {"data": data, "epochs": epochs, "seed": seeds, "pipeline": pipes, "load": LOAD}


def report(found: dict[str, Any], mnist: Path, factor: int, repeats: int) -> str:
    seed, pipe, data = found["seed"], found["pipeline"], found["data"]

    def of(runs: list[dict[str, Any]], key: str) -> list[float]:
        return [r[key] for r in runs]

    full_ratio = paired(of(pipe, "full_s"), of(seed, "process_s"))
    fit_ratio = paired(of(pipe, "images_per_s"), of(seed, "images_per_s"))
    step_ratio = paired(of(pipe, "step_ms"), of(seed, "step_ms"))
    load = found.get("load", [])

    stage_rows = [
        row(f"… {stage} (s)", "—", [p["stages"][stage] for p in pipe])
        for stage in [*STAGES, "dvc before the first stage"]
    ]
    left = sum(len(p["left"]) for p in pipe)
    return "\n".join(
        [
            f"`python benchmarks/at_scale.py --repeats {repeats} --factor {factor} --epochs {found['epochs']}` on "
            f"`{mnist.name}/`: {data['images']:,} images ({data['what']}), {data['train']:,} train and "
            f"{data['test']:,} test, {found['epochs']} epochs, batch 64. Date: {today()}. Machine: {machine()}, CPU "
            f"only. 1-minute load average at the measurements: {min(load):.1f}–{max(load):.1f}.",
            "",
            "The seed script (benchmarks/baseline.py) and cold `dvc repro` in a fresh workspace on the same arrays, "
            "alternating which runs first; ratios pair the two runs of a repeat. The pipeline trains on "
            f"{pipe[0]['train_images']:,} images (val: 2 % of all, from the train part) and validates them every "
            'epoch; the seed does not validate. Per stage: seconds between DVC\'s "Running stage" lines.',
            "",
            "| figure | target | median | min–max | runs | met |",
            "| --- | --- | --- | --- | --- | --- |",
            row("seed script: whole process (s)", "—", of(seed, "process_s")),
            row("seed script: `model.fit` (s)", "—", of(seed, "train_s")),
            row("seed script: ms a training step", "—", of(seed, "step_ms")),
            row("seed script: test accuracy", "—", [100 * a for a in of(seed, "test_accuracy")], 2, " %"),
            row("cold `dvc repro`, every stage (s)", "—", of(pipe, "full_s")),
            *stage_rows,
            row("pipeline: train's `model.fit` (s)", "—", of(pipe, "fit_s")),
            row("pipeline: ms a training step (validation included)", "—", of(pipe, "step_ms")),
            row("pipeline: test accuracy", "—", [100 * a for a in of(pipe, "accuracy")], 2, " %"),
            row("processes left in the workspace after `dvc repro`", "none", [float(left)], 0, met=left == 0),
            "",
            headline_table(
                [
                    headline_row(
                        f"{data['images']:,} images: training images/s, pipeline ÷ seed script",
                        fit_ratio,
                        2,
                        "×",
                        "≥ 0.95",
                        statistics.median(fit_ratio) >= 0.95,
                    ),
                    headline_row("… ms a training step, pipeline ÷ seed script", step_ratio, 2, "×"),
                    headline_row(
                        f"{data['images']:,} images: cold `dvc repro` ÷ the seed script",
                        full_ratio,
                        2,
                        "×",
                        "≤ 1.25",
                        statistics.median(full_ratio) <= 1.25,
                    ),
                ]
            ),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=ROOT.parent / "shared/data/mnist")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--factor", type=int, default=6, help="MNIST t10k copies: 6 gives 60,000 images")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="both sides (a quick check: 1)")
    parser.add_argument("--results", action="store_true", help=f"write the '{SECTION}' section of RESULTS.md")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with tempfile.TemporaryDirectory(prefix="trainflow-at-scale-") as tmp:
        found = side_by_side(args.mnist.resolve(), args.factor, args.repeats, args.epochs, Path(tmp))
    (ROOT / "benchmarks/at_scale.json").write_text(json.dumps(found, indent=1))
    text = report(found, args.mnist.resolve(), args.factor, args.repeats)
    print(text)
    if args.results:
        write_section(SECTION, text)


if __name__ == "__main__":
    main()
