"""The pipeline against the seed's plain Keras script, same data, model, epochs and machine, in one run.

    python benchmarks/pipeline.py [--mnist ../shared/data/mnist] [--repeats 3]

Writes the "Pipeline vs the seed script" section of benchmarks/RESULTS.md: each figure with its target, the median
of ``--repeats`` runs and their min–max. Every pipeline measurement runs the real tools (`dvc repro`, `dvc exp run`,
`python -m flows.training`, `python -m tasks <stage>`) in a throw-away workspace: a copy of this repo's tracked files
in a fresh git repository under a temporary folder. Nothing else should run on the machine meanwhile.

- baseline: benchmarks/baseline.py (the seed's CNN, Adam, batch 64, 10 epochs, first 8,000 MNIST t10k images to
  train, last 2,000 to test), whole process timed from outside;
- the pipeline on the same split (``ingest.split: ordered``; val = 200 images from the end of the first 8,000, so
  it trains on 7,800), the same network (no dropout, no augmentation copies) and 10 epochs (early stopping and
  learning-rate decay out of reach). Full `dvc repro` with no warm server running (as on a fresh machine); then
  a no-op `dvc repro`; then `dvc exp run -S train.epochs=10` from a 1-epoch state (DVC's run cache cleared first,
  so train really runs) — which reruns exactly train, evaluate and deploy;
- a Prefect re-run with every task cached (`python -m flows.training`, its own ephemeral API server);
- clean + augment + normalize on MNIST ×6 (60,000 distinct images, augment's default copy), as stage processes,
  and validation's share of each stage's time: in-process, the stage with validation (per-shard summaries and the
  Great Expectations suite) against the stage without, median of 3 interleaved runs each;
- each stage's import cost in a cold process (`python -X importtime`) and whether it imports TensorFlow;
- the quality preset (benchmarks/quality_preset.yaml) on the same split, one run per seed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from results import machine, spread, today, write_section  # noqa: E402
from scaling import DATA_STAGES, prepare, validation_share, wait_ready  # noqa: E402

from tests.helpers import STAGES, make_workspace, ran, tool_env  # noqa: E402

EPOCHS = 10
PRESET = ROOT / "benchmarks/quality_preset.yaml"  # its ingest.* keys are the seed script's split
SEED_SPLIT = {k.split(".", 1)[1]: v for k, v in yaml.safe_load(PRESET.read_text()).items() if k.startswith("ingest.")}
SAME_AS_BASELINE = {
    "ingest": SEED_SPLIT,
    "augment": {"copies": 0},
    "train": {"epochs": EPOCHS, "dropout": 0.0, "early_stopping_patience": EPOCHS, "lr_plateau_patience": EPOCHS},
}


class Failed(RuntimeError):
    pass


def run(cwd: Path, *args: str, **env: str) -> tuple[float, str]:
    """Wall seconds and output (stdout, then stderr) of a command that must succeed."""
    start = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=tool_env(**env), capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise Failed(
            f"{' '.join(args)} exited {done.returncode} in {cwd}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    return seconds, done.stdout + done.stderr


def stop_warm_servers(cwd: Path) -> None:
    run(cwd, sys.executable, "-m", "tasks.warm", "stop")
    time.sleep(1.0)


def nested(dotted: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, value in dotted.items():
        section, _, name = key.partition(".")
        out.setdefault(section, {})[name] = value
    return out


def new_workspace(tmp: Path, name: str, source: str, overrides: dict[str, dict[str, Any]]) -> Path:
    sections = {"data": {"source": source}}
    for section, values in overrides.items():
        sections.setdefault(section, {}).update(values)
    root = tmp / name
    root.mkdir()
    return make_workspace(root, sections)


def set_params(root: Path, **dotted: Any) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in nested(dotted).items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def fit_stats(root: Path) -> dict[str, float]:
    """Training images/s inside the pipeline: train images × epochs over model.fit's seconds (the MLflow run's tag)."""
    from mlflow import MlflowClient

    run_id = json.loads((root / "models/mlflow_run.json").read_text())["run_id"]
    tags = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}").get_run(run_id).data.tags
    seconds, epochs = float(tags["train.fit_seconds"]), int(tags["train.epochs_run"])
    train = json.loads((root / "data/normalized/manifest.json").read_text())["splits"]["train"]["count"]
    return {"fit_s": seconds, "images_per_s": train * epochs / seconds, "epochs": epochs}


def test_accuracy(root: Path) -> float:
    return float(json.loads((root / "reports/metrics.json").read_text())["test"]["accuracy"])


# --- the measurements ---------------------------------------------------------------------------------------------


def baseline(mnist: Path) -> dict[str, float]:
    seconds, output = run(ROOT, sys.executable, "benchmarks/baseline.py", str(mnist), str(EPOCHS))
    result = {**json.loads(_last_json(output)), "process_s": seconds}
    print(f"baseline: {result}", flush=True)
    return result


def _last_json(output: str) -> str:
    return [line for line in output.splitlines() if line.startswith("{")][-1]


def side_by_side(mnist: Path, repeats: int, tmp: Path) -> tuple[list[dict[str, float]], list[dict[str, float]], Path]:
    """Baseline, then pipeline, ``repeats`` times: each pipeline figure has a baseline measured just before it."""
    baselines, results, root = [], [], tmp
    for i in range(repeats):
        base = baseline(mnist)
        baselines.append(base)
        root = new_workspace(tmp, f"pipeline{i}", f"idx:{mnist}", SAME_AS_BASELINE)
        stop_warm_servers(root)
        full, output = run(root, "dvc", "repro")
        if ran(output) != list(STAGES):
            raise Failed(f"dvc repro ran {ran(output)}, expected all stages")
        accuracy, fit = test_accuracy(root), fit_stats(root)
        noop, output = run(root, "dvc", "repro")
        if ran(output):
            raise Failed(f"a second dvc repro ran {ran(output)}")
        set_params(root, **{"train.epochs": 1})
        run(root, "dvc", "repro")
        shutil.rmtree(root / ".dvc/cache/runs", ignore_errors=True)  # else DVC restores train's 10-epoch outputs
        exp, output = run(root, "dvc", "exp", "run", "-S", f"train.epochs={EPOCHS}")
        if ran(output) != ["train", "evaluate", "deploy"]:
            raise Failed(f"dvc exp run ran {ran(output)}, expected train, evaluate, deploy")
        warm_full, output = run(root, "dvc", "repro", "--force")
        results.append(
            {"full_s": full, "noop_s": noop, "exp_s": exp, "warm_full_s": warm_full, "accuracy": accuracy, **fit}
        )
        results[-1] |= {
            "full_ratio": full / base["process_s"],
            "exp_ratio": exp / base["process_s"],
            "warm_full_ratio": warm_full / base["process_s"],
            "fit_ratio": fit["images_per_s"] / base["images_per_s"],
        }
        print(f"pipeline: {results[-1]}", flush=True)
    return baselines, results, root


def prefect_cached(root: Path, repeats: int) -> list[float]:
    run(root, sys.executable, "-m", "flows.training")  # fills Prefect's cache for this state
    times = []
    for _ in range(repeats):
        seconds, output = run(root, sys.executable, "-m", "flows.training")
        text = "\n" + output
        summary = json.loads(text[text.index("\n{") : text.rindex("\n}") + 2])
        states = {stage: s["state"] for stage, s in summary["stages"].items()}
        if set(states.values()) != {"Cached"}:
            raise Failed(f"the Prefect re-run was not all cached: {states}")
        times.append(seconds)
        print(f"prefect cached re-run: {seconds:.1f} s", flush=True)
    return times


def data_stages(mnist: Path, repeats: int, tmp: Path) -> dict[str, Any]:
    root = tmp / "data_stages"
    images = prepare(mnist, 6, root)  # MNIST ×6, every copy distinct: 60,000 images
    run(root, sys.executable, "-m", "tasks", "clean")  # starts the warm servers: measure once they are all ready
    wait_ready(root)
    walls: dict[str, list[float]] = {stage: [] for stage in DATA_STAGES}
    for _ in range(repeats):
        for stage in DATA_STAGES:
            walls[stage].append(run(root, sys.executable, "-m", "tasks", stage)[0])
    shares = {stage: validation_share(root, stage) for stage in DATA_STAGES}
    totals = [sum(walls[stage][i] for stage in DATA_STAGES) for i in range(repeats)]
    result = {"images": images, "images_per_s": [images / t for t in totals], "walls": walls, "shares": shares}
    print(f"data stages: {result}", flush=True)
    return result


def startup(root: Path) -> dict[str, dict[str, Any]]:
    """Each stage in a cold process: seconds spent importing (python -X importtime) and whether TF is among them."""
    found = {}
    for stage in STAGES:
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "tasks", stage],
            cwd=root,
            env=tool_env(TRAINFLOW_WARM="0"),
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise Failed(f"{stage} failed under -X importtime:\n{done.stderr[-2000:]}")
        lines = re.findall(r"^import time:\s+\d+ \|\s+(\d+) \| ( *)(\S+)$", done.stderr, re.M)
        seconds = sum(int(cumulative) for cumulative, indent, _ in lines if not indent) / 1e6
        modules = {name for _, _, name in lines}
        found[stage] = {"import_s": seconds, "tensorflow": "tensorflow" in modules}
    warm_walls = {stage: run(root, sys.executable, "-m", "tasks", stage)[0] for stage in STAGES}
    cold_walls = {stage: run(root, sys.executable, "-m", "tasks", stage, TRAINFLOW_WARM="0")[0] for stage in STAGES}
    for stage in STAGES:
        found[stage] |= {"warm_s": warm_walls[stage], "cold_s": cold_walls[stage]}
    print(f"start-up: {found}", flush=True)
    return found


def quality(mnist: Path, repeats: int, tmp: Path) -> list[dict[str, float]]:
    preset = yaml.safe_load(PRESET.read_text())
    root = new_workspace(tmp, "quality", f"idx:{mnist}", {})
    results = []
    for seed in range(1, repeats + 1):
        chosen = {**preset, "data.source": f"idx:{mnist}", "seed": seed}  # the preset's path is relative to the repo
        settings = [f"{key}={json.dumps(value)}" for key, value in chosen.items()]
        run(root, "dvc", "exp", "run", *(arg for s in settings for arg in ("-S", s)))
        results.append({"seed": seed, "accuracy": test_accuracy(root), **fit_stats(root)})
        print(f"quality preset: {results[-1]}", flush=True)
    return results


# --- the report ---------------------------------------------------------------------------------------------------


def row(figure: str, target: str, values: list[float], digits: int = 1, unit: str = "", met: bool | None = None) -> str:
    median, low_high = spread(values, digits)
    verdict = "" if met is None else ("✅" if met else "❌")
    return f"| {figure} | {target} | {median}{unit} | {low_high}{unit} | {len(values)} | {verdict} |"


def report(found: dict[str, Any], mnist: Path, repeats: int) -> str:
    base, pipe = found["baseline"], found["pipeline"]

    def ratio(key: str) -> list[float]:  # each pipeline run against the baseline run just before it
        return [p[key.replace("_s", "_ratio")] for p in pipe]

    def median(values: list[float]) -> float:
        return statistics.median(values)

    data = found["data"]
    quality_runs = found["quality"]
    base_train = statistics.median(b["train_s"] for b in base)
    noops = [p["noop_s"] for p in pipe]
    rows = [
        row("baseline: whole process (s)", "—", [b["process_s"] for b in base]),
        row("baseline: model.fit (s)", "—", [b["train_s"] for b in base]),
        row("baseline: training images/s", "—", [b["images_per_s"] for b in base], 0),
        row("baseline: test accuracy", "—", [100 * b["test_accuracy"] for b in base], 2, " %"),
        row("full `dvc repro`, 7 stages, no warm server (s)", "—", [p["full_s"] for p in pipe]),
        row("… as a ratio to the baseline", "≤ 1.5", ratio("full_s"), 2, met=median(ratio("full_s")) <= 1.5),
        row("full `dvc repro --force`, warm servers (s)", "—", [p["warm_full_s"] for p in pipe]),
        row("… as a ratio to the baseline", "—", ratio("warm_full_s"), 2),
        row("pipeline: test accuracy", "—", [100 * p["accuracy"] for p in pipe], 2, " %"),
        row(f"`dvc exp run -S train.epochs={EPOCHS}`: train, evaluate, deploy (s)", "—", [p["exp_s"] for p in pipe]),
        row("… as a ratio to the baseline", "≤ 1.25", ratio("exp_s"), 2, met=median(ratio("exp_s")) <= 1.25),
        row("no-op `dvc repro` (s)", "≤ 2", noops, 2, met=median(noops) <= 2),
        row(
            "Prefect re-run, every task cached (s)",
            "≤ 15",
            found["prefect"],
            met=median(found["prefect"]) <= 15,
        ),
        row(
            f"clean + augment + normalize, {data['images']:,} images 28×28 (images/s)",
            "≥ 20,000",
            data["images_per_s"],
            0,
            met=median(data["images_per_s"]) >= 20_000,
        ),
        *(row(f"… {stage} stage process (s)", "—", data["walls"][stage], 2) for stage in DATA_STAGES),
        *(
            row(
                f"… validation's share of {stage} (in-process: with − without, over with)",
                "≤ 10 %",
                [100 * data["shares"][stage]],
                1,
                " %",
                met=data["shares"][stage] <= 0.10,
            )
            for stage in DATA_STAGES
        ),
        row("training images/s inside the pipeline", "—", [p["images_per_s"] for p in pipe], 0),
        row(
            "… as a ratio to the baseline's fit",
            "≥ 0.95",
            [p["fit_ratio"] for p in pipe],
            2,
            met=median([p["fit_ratio"] for p in pipe]) >= 0.95,
        ),
        row(
            "quality preset: test accuracy",
            "≥ 99.0 %",
            [100 * q["accuracy"] for q in quality_runs],
            2,
            " %",
            met=median([q["accuracy"] for q in quality_runs]) >= 0.99,
        ),
        row(
            "quality preset: training time (s)",
            f"≤ baseline's fit = {base_train:.1f}",
            [q["fit_s"] for q in quality_runs],
            met=median([q["fit_s"] for q in quality_runs]) <= base_train,
        ),
    ]
    stages = found["startup"]
    stage_rows = [
        f"| {stage} | {s['import_s']:.2f} | {'yes' if s['tensorflow'] else 'no'} | {s['cold_s']:.2f} | "
        f"{s['warm_s']:.2f} |"
        for stage, s in stages.items()
    ]
    return "\n".join(
        [
            f"`python benchmarks/pipeline.py --repeats {repeats}` on `{mnist.name}/` (MNIST t10k). "
            f"Date: {today()}. Machine: {machine()}, CPU only.",
            "",
            "| figure | target | median | min–max | runs | met |",
            "| --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
            "Each stage's start-up, in the full pipeline's workspace: seconds spent importing in a cold process "
            "(`python -X importtime`, top-level modules), whether TensorFlow is among them, and the stage process's "
            "wall time cold (`TRAINFLOW_WARM=0`) and handed to a warm server (one run each).",
            "",
            "| stage | imports, cold (s) | imports TensorFlow | wall, cold (s) | wall, warm (s) |",
            "| --- | --- | --- | --- | --- |",
            *stage_rows,
            "",
            "Quality preset runs (seed: accuracy, fit seconds): "
            + ", ".join(f"{q['seed']}: {100 * q['accuracy']:.2f} %, {q['fit_s']:.1f} s" for q in quality_runs)
            + ".",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=ROOT.parent / "shared/data/mnist")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the workspaces (printed) for inspection")
    parser.add_argument("--resume", action="store_true", help="keep the steps benchmarks/pipeline.json already has")
    args = parser.parse_args(argv)
    mnist = args.mnist.resolve()
    tmp = Path(tempfile.mkdtemp(prefix="trainflow-bench-"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        saved = ROOT / "benchmarks/pipeline.json"  # every step's raw results, saved as soon as it has them
        found: dict[str, Any] = json.loads(saved.read_text()) if args.resume and saved.exists() else {}
        steps = {
            "pipeline": lambda: side_by_side(mnist, args.repeats, tmp),
            "startup": lambda: startup(last),
            "prefect": lambda: prefect_cached(last, args.repeats),
            "data": lambda: data_stages(mnist, args.repeats, tmp),
            "quality": lambda: quality(mnist, args.repeats, tmp),
        }
        last = tmp
        for name, step in steps.items():
            if name in found:
                continue
            if name in ("startup", "prefect") and last == tmp:
                raise Failed(f"--resume: {name} needs the pipeline step's workspace; rerun without --resume")
            result = step()
            if name == "pipeline":
                found["baseline"], found["pipeline"], last = result
            else:
                found[name] = result
            saved.write_text(json.dumps(found, indent=1))
        write_section("Pipeline vs the seed script", report(found, mnist, args.repeats))
        print((ROOT / "benchmarks/RESULTS.md").read_text())
    finally:
        stop_warm_servers(ROOT)
        if args.keep:
            print(f"workspaces kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
