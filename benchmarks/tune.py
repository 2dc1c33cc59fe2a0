"""Benchmark of `python -m flows.tune` on the MNIST 8,000/2,000 split (benchmarks/RESULTS.md, "Tuning").

    python benchmarks/tune.py [--mnist ../shared/data/mnist] [--trials 20] [--speed-trials 4]
    python benchmarks/tune.py --skip-study --skip-speed --seeds 1 2 --out benchmarks/tune-seeds.json

1. A workspace on the quality preset (benchmarks/quality_preset.yaml); `dvc repro normalize` prepares the data.
2. One plain training run, `python -m tasks.train` (its wall time × 20 is the study's time budget), then
   `python -m tasks.evaluate`: the preset's test accuracy.
3. A study of ``--trials`` trials, two at once, started from the preset (trial 0 trains it), then `--apply`, train
   and evaluate again: the tuned params' test accuracy beside the preset's, same seed, same split.
4. The speed-up of `--workers 2` over `--workers 1`: two fresh studies of ``--speed-trials`` trials each, no pruning,
   over learning rate and dropout only (same cost per trial), the same seed so both draw the same values.
5. With ``--seeds``: the preset and the tuned params (this study's best, or benchmarks/tune.json's with
   ``--skip-study``) trained and evaluated again on those seeds.

Every command must leave no process behind. The figures go to stdout and ``--out`` (benchmarks/tune.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pipeline import PRESET, Failed, run, survivors, test_accuracy  # noqa: E402

from flows.dvc_repo import write_params  # noqa: E402
from tests.helpers import make_workspace  # noqa: E402

# Around the preset: its recipe (3 epochs, cosine schedule with warm-up, batch norm, two augmented copies) stays;
# the study searches the optimiser and the network's width and regularisation. Val is 200 images, so the study
# minimises val loss, which separates trials that val accuracy (a few errors each) would call equal.
STUDY = {
    "tune.metric": "loss",
    "tune.epochs": 3,
    "tune.sampler_startup_trials": 6,
    "tune.pruner": "median",
    "tune.pruner_startup_trials": 4,
    "tune.pruner_warmup_epochs": 1,
    "tune.space": {
        "train.learning_rate": {"low": 0.002, "high": 0.02, "log": True},
        "train.batch_size": {"choices": [64, 128, 256]},
        "train.dense_units": {"low": 64, "high": 256, "log": True},
        "train.dropout": {"low": 0.0, "high": 0.5},
        "train.l2": {"choices": [0.0, 0.0001, 0.001]},
    },
}
SPEED = {
    "tune.metric": "loss",
    "tune.epochs": 3,
    "tune.pruner": "none",
    "tune.space": {
        "train.learning_rate": {"low": 0.002, "high": 0.02, "log": True},
        "train.dropout": {"low": 0.0, "high": 0.5},
    },
}


def train_and_evaluate(root: Path) -> dict[str, float]:
    train_s, _ = run(root, sys.executable, "-m", "tasks.train")
    evaluate_s, _ = run(root, sys.executable, "-m", "tasks.evaluate")
    return {"train_s": round(train_s, 1), "evaluate_s": round(evaluate_s, 1), "test_accuracy": test_accuracy(root)}


def study(root: Path, name: str, trials: int, workers: int, *extra: str) -> dict[str, Any]:
    load = os.getloadavg()[0]
    seconds, _ = run(
        root,
        sys.executable,
        "-m",
        "flows.tune",
        "--trials",
        str(trials),
        "--workers",
        str(workers),
        "--study",
        name,
        *extra,
    )
    left = survivors(root)
    if left:
        raise Failed(f"processes left after the study {name}: {left}")
    summary = json.loads((root / "reports/tune/summary.json").read_text())
    return {
        "study": name,
        "workers": workers,
        "wall_s": round(seconds, 1),
        "flow_wall_s": summary["wall_seconds"],
        "trials": summary["trials"],
        "best": summary["best"],
        "load_1min_before": load,
        "all_trials": summary["all_trials"],
    }


def nested_get(mapping: dict[str, Any], dotted: str) -> Any:
    section, _, key = dotted.partition(".")
    return mapping[section][key]


def previous(args: argparse.Namespace) -> dict[str, Any] | None:
    """The study of the last full run (benchmarks/tune.json), when this one skips it."""
    path = ROOT / "benchmarks/tune.json"
    return json.loads(path.read_text()).get("study") if args.skip_study and path.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=ROOT.parent / "shared/data/mnist")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--speed-trials", type=int, default=4)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-study", action="store_true")
    parser.add_argument(
        "--seeds", type=int, nargs="*", default=[], help="also train the preset and the tuned params on these seeds"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/tune.json", help="default: %(default)s")
    args = parser.parse_args()
    preset = yaml.safe_load(PRESET.read_text())
    repo_params = yaml.safe_load((ROOT / "params.yaml").read_text())
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="tune-bench-") as tmp:
        root = make_workspace(Path(tmp), {})
        write_params(root / "params.yaml", {**preset, "data.path": str(args.mnist.resolve())})
        run(root, "git", "commit", "-qam", "quality preset")
        prepare_s, _ = run(root, "dvc", "repro", "normalize")
        results["prepare_s"] = round(prepare_s, 1)
        print(f"data stages: {prepare_s:.1f} s", flush=True)

        results["preset"] = train_and_evaluate(root)
        budget = 20 * results["preset"]["train_s"]
        print(f"preset: {results['preset']}; budget of 20 plain training runs: {budget:.0f} s", flush=True)

        if not args.skip_study:
            write_params(root / "params.yaml", STUDY)
            results["study"] = study(root, "mnist", args.trials, 2, "--apply")
            results["study"]["budget_s"] = round(budget, 1)
            print(f"study: {json.dumps({k: v for k, v in results['study'].items() if k != 'all_trials'})}", flush=True)
            results["tuned"] = train_and_evaluate(root)
            print(f"tuned: {results['tuned']}", flush=True)

        tuned = (results.get("study") or {}).get("best") or (previous(args) or {}).get("best")
        for seed in args.seeds:  # the same comparison on other seeds (the tuned params: this study's or the last's)
            # the preset: its own values, and the repo's defaults for the keys the study tuned that it leaves alone
            defaults = {k: nested_get(repo_params, k) for k in (tuned or {}).get("params", {})}
            write_params(
                root / "params.yaml", {**defaults, **preset, "data.path": str(args.mnist.resolve()), "seed": seed}
            )
            results.setdefault("seeds", {})[seed] = {"preset": train_and_evaluate(root)}
            if tuned:
                write_params(root / "params.yaml", tuned["params"])
                results["seeds"][seed]["tuned"] = train_and_evaluate(root)
            print(f"seed {seed}: {results['seeds'][seed]}", flush=True)

        if not args.skip_speed:
            write_params(root / "params.yaml", SPEED)
            for workers in (1, 2):
                results[f"speed_w{workers}"] = study(root, f"speed-w{workers}", args.speed_trials, workers)
                print(f"workers {workers}: {results[f'speed_w{workers}']['wall_s']} s", flush=True)
            results["speedup"] = round(results["speed_w1"]["flow_wall_s"] / results["speed_w2"]["flow_wall_s"], 2)
            print(f"speed-up of --workers 2 over 1 (the flows' own wall time): {results['speedup']}", flush=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
