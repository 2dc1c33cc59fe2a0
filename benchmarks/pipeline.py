"""The pipeline against the seed's plain Keras script, same data, model, epochs and machine, in one run.

    python benchmarks/pipeline.py [--mnist ../shared/data/mnist] [--repeats 3]

Writes the "Pipeline vs the seed script" and "Stage start-up and imports" sections of benchmarks/RESULTS.md: each
figure with its target, the median of ``--repeats`` runs and their min–max. Every pipeline measurement runs the real
tools (`dvc repro`, `dvc exp run`, `python -m flows.training`, `python -m tasks.<stage>`) in a throw-away workspace:
a copy of this repo's tracked files in a fresh git repository under a temporary folder. Nothing else should run on
the machine meanwhile; the load average is recorded with every measurement and reported.

- baseline: benchmarks/baseline.py (the seed's CNN, Adam, batch 64, 10 epochs, first 8,000 MNIST t10k images to
  train, last 2,000 to test), whole process timed from outside, before the pipeline in even repeats and after it in
  odd ones;
- the pipeline on the same split (``ingest.split: ordered``; val = 200 images from the end of the first 8,000, so
  it trains on 7,800), the same network (no dropout, no augmentation copies) and 10 epochs (early stopping and
  learning-rate decay out of reach), driven two ways on the same work, each in a fresh workspace:
  - cold `dvc repro`: one `python -m tasks.<stage>` process per stage, as dvc.yaml runs them; then a no-op
    `dvc repro`; then `dvc exp run -S train.epochs=10` from a 1-epoch state (DVC's run cache cleared first, so train
    really runs) — which reruns exactly train, evaluate, deploy and report;
  - the Prefect flow, `python -m flows.training`: each stage through `dvc repro --single-item` (its own temporary
    API server; a Prefect home whose database exists, as after a first use), every stage run; then `dvc status`
    (DVC recorded the flow's runs) and a re-run in which DVC skips every stage;
  after each driver, no process may be left whose working directory is the workspace (no daemons);
- clean + augment + normalize on MNIST ×6 (60,000 distinct images, augment's default copy): images/s through the
  stage processes beside their warm in-process work, paired in each repeat, and validation's share of each stage
  process, GX's import and first-call set-up included (benchmarks/scaling.py's ``paired_runs``);
- each stage's start-up (benchmarks/imports.py): ``import tasks.<stage>``, what ``python -m tasks.<stage>`` imports
  and its wall time against the stage's own work, and the floor set by the libraries' own import times;
- the quality preset (benchmarks/quality_preset.yaml) on the same split, one run per seed.
"""

from __future__ import annotations

import argparse
import json
import os
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

import imports  # noqa: E402
from results import headline_row, headline_table, machine, spread, today, write_section  # noqa: E402
from scaling import DATA_STAGES, data_headlines, figures, paired_runs, prepare  # noqa: E402

from tests.helpers import STAGES, make_workspace, ran, tool_env  # noqa: E402

EPOCHS = 10
PRESET = ROOT / "benchmarks/quality_preset.yaml"  # its ingest.* keys are the seed script's split
SEED_SPLIT = {k.split(".", 1)[1]: v for k, v in yaml.safe_load(PRESET.read_text()).items() if k.startswith("ingest.")}
SAME_AS_BASELINE = {
    "ingest": SEED_SPLIT,
    "augment": {"copies": 0},
    "train": {"epochs": EPOCHS, "dropout": 0.0, "early_stopping_patience": EPOCHS, "lr_plateau_patience": EPOCHS},
}
LOAD: list[float] = []  # the 1-minute load average at every measurement


class Failed(RuntimeError):
    pass


def run(cwd: Path, *args: str, **env: str) -> tuple[float, str]:
    """Wall seconds and output (stdout, then stderr) of a command that must succeed."""
    LOAD.append(os.getloadavg()[0])
    start = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=tool_env(**env), capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise Failed(
            f"{' '.join(args)} exited {done.returncode} in {cwd}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    return seconds, done.stdout + done.stderr


def survivors(root: Path) -> list[str]:
    """Processes (other than this one) still running in ``root`` or naming it on their command line."""
    time.sleep(1.0)  # what exits with the command has had time to go
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone, or not ours to read
            continue
        if cwd == str(root) or cwd.startswith(f"{root}/") or str(root) in command:
            found.append(f"{proc.name} {command[:200]}")
    return found


def nested(dotted: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, value in dotted.items():
        section, _, name = key.partition(".")
        out.setdefault(section, {})[name] = value
    return out


def new_workspace(tmp: Path, name: str, mnist: Path, overrides: dict[str, dict[str, Any]]) -> Path:
    """A fresh workspace reading the MNIST IDX folder ``mnist``, with params sections overridden."""
    sections: dict[str, dict[str, Any]] = {"data": {"source": "idx", "path": str(mnist)}}
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
    train = json.loads((root / "data/augmented/manifest.json").read_text())["splits"]["train"]["count"]
    return {"fit_s": seconds, "images_per_s": train * epochs / seconds, "epochs": epochs, "train_images": train}


def test_accuracy(root: Path) -> float:
    return float(json.loads((root / "reports/metrics.json").read_text())["test"]["accuracy"])


def flow_summary(output: str) -> dict[str, Any]:
    """The JSON summary `python -m flows.training` prints last (``json.dumps(summary, indent=2)``)."""
    text = "\n" + output
    return json.JSONDecoder().raw_decode(text, text.rindex('\n{\n  "stages"') + 1)[0]


# --- the measurements ---------------------------------------------------------------------------------------------


def baseline(data: Path, epochs: int = EPOCHS) -> dict[str, float]:
    """benchmarks/baseline.py on ``data`` (an IDX folder or an .npz), its whole process timed from outside."""
    seconds, output = run(ROOT, sys.executable, "benchmarks/baseline.py", str(data), str(epochs))
    result = {**json.loads(_last_json(output)), "process_s": seconds}
    print(f"baseline: {result}", flush=True)
    return result


def _last_json(output: str) -> str:
    return [line for line in output.splitlines() if line.startswith("{")][-1]


def dvc_driver(root: Path) -> dict[str, Any]:
    """Cold `dvc repro` (one process per stage), a no-op one, then `dvc exp run -S train.epochs=10` from 1 epoch."""
    full, output = run(root, "dvc", "repro")
    if ran(output) != list(STAGES):
        raise Failed(f"dvc repro ran {ran(output)}, expected all stages")
    left = survivors(root)
    accuracy, fit = test_accuracy(root), fit_stats(root)
    noop, output = run(root, "dvc", "repro")
    if ran(output):
        raise Failed(f"a second dvc repro ran {ran(output)}")
    set_params(root, **{"train.epochs": 1})
    run(root, "dvc", "repro")
    shutil.rmtree(root / ".dvc/cache/runs", ignore_errors=True)  # else DVC restores train's 10-epoch outputs
    exp, output = run(root, "dvc", "exp", "run", "-S", f"train.epochs={EPOCHS}")
    if ran(output) != ["train", "evaluate", "deploy", "audit", "report"]:
        raise Failed(f"dvc exp run ran {ran(output)}, expected train, evaluate, deploy, report")
    left += survivors(root)
    return {"full_s": full, "noop_s": noop, "exp_s": exp, "accuracy": accuracy, "dvc_left": left, **fit}


def prefect_driver(root: Path, home: Path) -> dict[str, Any]:
    """`python -m flows.training` in a fresh workspace (every stage runs), `dvc status`, then a re-run (runs none)."""
    flow, output = run(root, sys.executable, "-m", "flows.training", PREFECT_HOME=str(home))
    states = {stage: s["state"] for stage, s in flow_summary(output)["stages"].items()}
    if list(states) != list(STAGES) or set(states.values()) != {"ran"}:
        raise Failed(f"the cold Prefect run did not run every stage: {states}")
    left = survivors(root)
    status = run(root, "dvc", "status")[1]
    cached, output = run(root, sys.executable, "-m", "flows.training", PREFECT_HOME=str(home))
    states = {stage: s["state"] for stage, s in flow_summary(output)["stages"].items()}
    if set(states.values()) != {"skipped"}:
        raise Failed(f"the Prefect re-run ran stages: {states}")
    left += survivors(root)
    return {
        "flow_s": flow,
        "flow_cached_s": cached,
        "flow_accuracy": test_accuracy(root),
        "flow_dvc_clean": "up to date" in status,
        "flow_left": left,
    }


def side_by_side(mnist: Path, repeats: int, tmp: Path) -> tuple[list[dict[str, float]], list[dict[str, Any]], Path]:
    """Baseline, cold `dvc repro`, the Prefect flow, ``repeats`` times: each pipeline figure has its own baseline."""
    home = tmp / "prefect-home"  # a Prefect home of its own, its database made before any measurement
    run(tmp, str(Path(sys.executable).parent / "prefect"), "server", "database", "reset", "-y", PREFECT_HOME=str(home))
    baselines, results, root = [], [], tmp
    for i in range(repeats):
        if i % 2 == 0:  # the baseline and the pipeline alternate which runs first
            base = baseline(mnist)
        root = new_workspace(tmp, f"dvc{i}", mnist, SAME_AS_BASELINE)
        found = dvc_driver(root)
        found |= prefect_driver(new_workspace(tmp, f"prefect{i}", mnist, SAME_AS_BASELINE), home)
        if i % 2 == 1:
            base = baseline(mnist)
        baselines.append(base)
        found |= {
            "full_ratio": found["full_s"] / base["process_s"],
            "exp_ratio": found["exp_s"] / base["process_s"],
            "flow_ratio": found["flow_s"] / base["process_s"],
            "flow_vs_dvc": found["flow_s"] / found["full_s"],
            "fit_ratio": found["images_per_s"] / base["images_per_s"],
        }
        results.append(found)
        print(f"pipeline: {found}", flush=True)
    return baselines, results, root


def data_stages(mnist: Path, repeats: int, tmp: Path) -> dict[str, Any]:
    """MNIST ×6 (60,000 distinct images): stage processes and warm runs, paired (scaling.paired_runs)."""
    root = tmp / "data_stages"
    images = prepare(mnist, 6, root)
    LOAD.append(os.getloadavg()[0])
    result = {"images": images, **paired_runs(root, repeats)}
    LOAD.append(os.getloadavg()[0])
    print(f"data stages: {json.dumps(result)}", flush=True)
    return result


def quality(mnist: Path, repeats: int, tmp: Path) -> list[dict[str, float]]:
    preset = yaml.safe_load(PRESET.read_text())
    root = new_workspace(tmp, "quality", mnist, {})
    results = []
    for seed in range(1, repeats + 1):
        chosen = {**preset, "data.path": str(mnist), "seed": seed}  # the preset's path is relative to the repo
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


def note(figure: str, target: str, value: str, runs: str, met: bool) -> str:
    """A row whose figure is a count or a yes/no, not a spread of timings."""
    return f"| {figure} | {target} | {value} | — | {runs} | {'✅' if met else '❌'} |"


def report(found: dict[str, Any], mnist: Path, repeats: int) -> str:
    base, pipe = found["baseline"], found["pipeline"]

    def values(key: str) -> list[float]:
        return [p[key] for p in pipe]

    def median(key: str) -> float:
        return statistics.median(values(key))

    data = found["data"]
    got = figures(data)
    work = {stage: [p["run_s"] for p in data["profile"][stage]] for stage in DATA_STAGES}
    quality_runs = found["quality"]
    base_train = statistics.median(b["train_s"] for b in base)
    left = sum(len(p["dvc_left"]) + len(p["flow_left"]) for p in pipe)
    # issue 30, target 4: each stage's own work and its libraries' import floor, from the startup step (one set of
    # figures, in the last cold `dvc repro`'s workspace), against each repeat's cold `dvc repro`
    least = sum(s["work_s"] + found["floor"]["stage_floor"][stage] for stage, s in found["startup"].items())
    beyond = [p["full_s"] - least for p in pipe]
    rows = [
        row("baseline: whole process (s)", "—", [b["process_s"] for b in base]),
        row("baseline: model.fit (s)", "—", [b["train_s"] for b in base]),
        row("baseline: training images/s", "—", [b["images_per_s"] for b in base], 0),
        row("baseline: test accuracy", "—", [100 * b["test_accuracy"] for b in base], 2, " %"),
        row("cold `dvc repro`, one process per stage (s)", "—", values("full_s")),
        row("… as a ratio to the baseline", "—", values("full_ratio"), 2),
        row(
            "… beyond the stages' own work and import floors: cold `dvc repro` − Σ stages (own work + floor) (s)",
            "≤ 5",
            beyond,
            met=statistics.median(beyond) <= 5.0,
        ),
        row("Prefect flow `python -m flows.training`, every stage in one process, cold (s)", "—", values("flow_s")),
        row("… as a ratio to the baseline", "—", values("flow_ratio"), 2),
        row("… as a ratio to cold `dvc repro`", "—", values("flow_vs_dvc"), 2),
        row("pipeline: test accuracy (`dvc repro`)", "—", [100 * v for v in values("accuracy")], 2, " %"),
        row("pipeline: test accuracy (Prefect flow)", "—", [100 * v for v in values("flow_accuracy")], 2, " %"),
        note(
            "processes left in the workspace after `dvc repro`, `dvc exp run`, the flow, its re-run",
            "none",
            f"{left}",
            f"{4 * len(pipe)} commands",
            left == 0,
        ),
        note(
            "`dvc status` clean after the Prefect flow",
            "yes",
            f"{sum(p['flow_dvc_clean'] for p in pipe)} of {len(pipe)} runs",
            f"{len(pipe)} runs",
            all(p["flow_dvc_clean"] for p in pipe),
        ),
        row(f"`dvc exp run -S train.epochs={EPOCHS}`: train, evaluate, deploy, report (s)", "—", values("exp_s")),
        row("… as a ratio to the baseline", "≤ 2.0", values("exp_ratio"), 2, met=median("exp_ratio") <= 2.0),
        row("no-op `dvc repro` (s)", "≤ 1.0", values("noop_s"), 2, met=median("noop_s") <= 1.0),
        row(
            "Prefect re-run, DVC skips every stage (s)",
            "≤ 15",
            values("flow_cached_s"),
            met=median("flow_cached_s") <= 15,
        ),
        row(
            f"clean + augment + normalize, {data['images']:,} images 28×28, stage processes (images/s)",
            "—",
            got["process_rate"],
            0,
        ),
        row(
            "… the same stages' `run()` in a warm process (images/s)",
            "≥ 30,000",
            got["warm_rate"],
            0,
            met=statistics.median(got["warm_rate"]) >= 30_000,
        ),
        row("… stage processes ÷ warm (paired)", "—", got["ratio"], 2),
        *(
            row(
                f"… {stage}: stage process (s); warm own work {statistics.median(work[stage]):.2f} s",
                "—",
                [t for t, _ in data["cold"][stage]],
                2,
            )
            for stage in DATA_STAGES
        ),
        *(
            row(
                f"… validation's share of the {stage} process, GX's import and set-up included",
                "—",
                [100 * v for v in shares],
                1,
                " %",
            )
            for stage, shares in got["share_process"].items()
        ),
        *(
            row(
                f"… validation's share of {stage}'s warm work (with − without, over with)",
                "—",
                [100 * v for v in shares],
                1,
                " %",
            )
            for stage, shares in got["share_warm"].items()
        ),
        row("training images/s inside the pipeline", "—", values("images_per_s"), 0),
        row(
            "… as a ratio to the baseline's fit",
            "≥ 0.95",
            values("fit_ratio"),
            2,
            met=median("fit_ratio") >= 0.95,
        ),
        row(
            "quality preset: test accuracy",
            "≥ 99.4 %",
            [100 * q["accuracy"] for q in quality_runs],
            2,
            " %",
            met=statistics.median([q["accuracy"] for q in quality_runs]) >= 0.994,
        ),
        row(
            "quality preset: training time (s)",
            f"≤ baseline's fit = {base_train:.1f}",
            [q["fit_s"] for q in quality_runs],
            met=statistics.median([q["fit_s"] for q in quality_runs]) <= base_train,
        ),
    ]
    load = found.get("load", [])
    load_text = f"{min(load):.1f}–{max(load):.1f} (median {statistics.median(load):.1f})" if load else "not recorded"
    return "\n".join(
        [
            f"`python benchmarks/pipeline.py --repeats {repeats}` on `{mnist.name}/` (MNIST t10k). "
            f"Date: {today()}. Machine: {machine()}, CPU only. 1-minute load average at the measurements: "
            f"{load_text}.",
            "",
            "Each repeat runs the baseline and the pipeline (cold `dvc repro` in a fresh workspace, then the Prefect "
            "flow in another) on the same data, split, network and epochs, the baseline first in even repeats and "
            "last in odd ones; the ratios pair each pipeline run with its repeat's baseline. The data-stage rows run "
            "in a workspace of their own (MNIST ×6), the stage processes and the warm runs alternated in each repeat "
            "(benchmarks/scaling.py); \"warm\" is the stage's `run` in a process that has run it before; validation's "
            "share of a process counts `import great_expectations` and GX's first-call set-up.",
            "",
            "| figure | target | median | min–max | runs | met |",
            "| --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
            "Quality preset runs (seed: accuracy, fit seconds): "
            + ", ".join(f"{q['seed']}: {100 * q['accuracy']:.2f} %, {q['fit_s']:.1f} s" for q in quality_runs)
            + ".",
            "",
            headline_table(
                [
                    headline_row("cold `dvc repro` ÷ the seed script", values("full_ratio"), 2, "×"),
                    headline_row(
                        "cold `dvc repro` − Σ stages (own work + import floor) (s)",
                        beyond,
                        1,
                        "",
                        "≤ 5",
                        statistics.median(beyond) <= 5.0,
                    ),
                    headline_row("Prefect flow ÷ the seed script", values("flow_ratio"), 2, "×"),
                    headline_row(
                        f"`dvc exp run -S train.epochs={EPOCHS}` ÷ the seed script",
                        values("exp_ratio"),
                        2,
                        "×",
                        "≤ 2.0",
                        median("exp_ratio") <= 2.0,
                    ),
                    headline_row("no-op `dvc repro` (s)", values("noop_s"), 2, "", "≤ 1.0", median("noop_s") <= 1.0),
                    headline_row(
                        "training images/s in the pipeline ÷ the seed script's `fit`",
                        values("fit_ratio"),
                        2,
                        "×",
                        "≥ 0.95",
                        median("fit_ratio") >= 0.95,
                    ),
                    *data_headlines(data, f"{data['images']:,} images (MNIST ×6)", work_target=30_000),
                ]
            ),
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
        LOAD.extend(found.get("load", []))
        if "data" in found and "profile" not in found["data"]:
            del found["data"]  # saved by the old, unpaired data step: measure it again
        steps = {
            "pipeline": lambda: side_by_side(mnist, args.repeats, tmp),
            # each stage process runs once (train trains three times: under -X importtime, then twice in-process)
            "startup": lambda: imports.stages(last, args.repeats, runs=1, load=LOAD),
            "floor": lambda: imports.library_floor(args.repeats, load=LOAD, params=last / "params.yaml"),
            "data": lambda: data_stages(mnist, args.repeats, tmp),
            "quality": lambda: quality(mnist, args.repeats, tmp),
        }
        last = tmp
        for name, step in steps.items():
            if name in found:
                continue
            if name in ("startup", "floor") and last == tmp:
                raise Failed(f"--resume: {name} needs the pipeline step's workspace; rerun without --resume")
            result = step()
            if name == "pipeline":
                found["baseline"], found["pipeline"], last = result
            else:
                found[name] = result
            found["load"] = LOAD
            saved.write_text(json.dumps(found, indent=1))
        write_section("Pipeline vs the seed script", report(found, mnist, args.repeats))
        how = (
            f"`python benchmarks/pipeline.py --repeats {args.repeats}`, in the workspace of its last cold "
            f"`dvc repro` (MNIST t10k, the seed script's split, {EPOCHS} epochs)."
        )
        write_section(imports.SECTION, imports.report(found["startup"], found["floor"], args.repeats, how))
        print((ROOT / "benchmarks/RESULTS.md").read_text())
    finally:
        if args.keep:
            print(f"workspaces kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
