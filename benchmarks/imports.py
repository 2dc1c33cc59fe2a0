"""Each stage's start-up: what it imports, what that costs, and the floor its libraries set → benchmarks/RESULTS.md.

    python benchmarks/imports.py [--workspace DIR] [--repeats 3]

Every figure comes from fresh interpreters (`python -X importtime`, so the imports are cold in the interpreter; the
files are in the OS page cache after the first run, as they are for any pipeline run but the first after boot):

- ``import tasks.<stage>``: the stage module alone (DESIGN.md principle 7: nothing heavy at import);
- ``python -m tasks.<stage>`` in a workspace where the pipeline has run: everything the stage imports while it
  runs, by library (each library's own import time, its sub-modules included), and the process's wall time;
- the stage's own work: ``tasks.<stage>.run(params)`` a second time in one process (imports and first-call
  set-up already paid), so wall − work is what a separate process per stage costs;
- the library floor: ``import <library>`` for each library the stages use, alone in a fresh interpreter, and per
  stage the libraries it needs imported together (their shared dependencies counted once): no stage process can
  start faster than that while it uses those libraries.

Without --workspace, a throw-away workspace on the bundled digits data is made and run with `dvc repro` first.
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
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from results import machine, today, write_section  # noqa: E402

from tests.helpers import STAGES, make_workspace, tool_env  # noqa: E402

SECTION = "Stage start-up and imports"
# The libraries the design chose, as the stages import them (a sub-module where that is all a stage uses).
LIBRARIES = (
    "numpy",
    "pydantic",
    "great_expectations",
    "pandas",
    "scipy.stats",
    "sklearn.metrics",
    "tensorflow",
    "keras",
    "mlflow",
    "prefect",
)
# What each stage needs to do its work: the floor of its start-up. Validation (GX) at every boundary; Keras
# (TensorFlow backend) wherever a model is built, loaded or exported; MLflow where the run, the registry or the
# champion is touched; the rest as params choose (see needs()).
NEEDS: dict[str, tuple[str, ...]] = {
    "ingest": ("great_expectations",),
    "clean": ("great_expectations",),
    "augment": ("great_expectations", "PIL.Image"),
    "normalize": (),  # statistics only: numpy (texts would add TensorFlow's vectorizer)
    "train": ("keras", "mlflow"),
    "evaluate": ("keras", "mlflow", "great_expectations", "sklearn.metrics", "matplotlib.pyplot"),
    "deploy": ("keras", "mlflow", "scipy.stats"),  # scipy: McNemar's test and drift's chi-square
    "audit": ("keras", "cleanlab.filter", "sklearn.neighbors"),  # the folds' models, confident learning, the kNN graph
    "report": ("mlflow", "jinja2", "matplotlib.pyplot"),  # the run, the page's template, the misclassified images
}
# Libraries named in the by-library breakdown (each one's own import time); the rest is summed as "other".
NAMED = (
    "tensorflow",
    "keras",
    "great_expectations",
    "mlflow",
    "prefect",
    "pandas",
    "scipy",
    "sklearn",
    "matplotlib",
    "PIL",
    "pydantic",
    "numpy",
    "sqlalchemy",
    "jax",
    "torch",
)
LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)$", re.M)

WORK = """
import json, sys, time
from pathlib import Path
started = time.perf_counter()
stage = __import__(f"tasks.{sys.argv[1]}", fromlist=["run"])
try:
    from tasks.lib.quiet import quiet_libraries
except ImportError:
    from tasks.lib.cli import quiet_libraries
from tasks.lib.config import load_params
quiet_libraries()
imported = time.perf_counter()
params = load_params(Path("params.yaml"))
stage.run(params)
first = time.perf_counter()
stage.run(params)
print(json.dumps({"import_s": imported - started, "first_s": first - imported, "work_s": time.perf_counter() - first}))
"""


class Failed(RuntimeError):
    pass


def parse(stderr: str) -> list[tuple[int, int, int, str]]:
    """``-X importtime`` lines: (self µs, cumulative µs, depth, module)."""
    return [(int(own), int(total), len(indent) // 2, name) for own, total, indent, name in LINE.findall(stderr)]


def interpreter_modules() -> set[str]:
    """What the interpreter imports before any user code (site, encodings, …): not counted as anyone's import."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True)
    return {name for *_, name in parse(done.stderr)}


def total_s(lines: list[tuple[int, int, int, str]], skip: set[str]) -> float:
    """Seconds spent importing: the top-level imports' cumulative times, the interpreter's own start-up left out."""
    return sum(total for _, total, depth, name in lines if depth == 0 and name not in skip) / 1e6


def by_library(lines: list[tuple[int, int, int, str]], skip: set[str]) -> dict[str, float]:
    """Seconds of each library's own modules (self times of ``lib`` and ``lib.*``), wherever they were imported."""
    found: dict[str, float] = defaultdict(float)
    for own, _, _, name in lines:
        if name in skip:
            continue
        root = name.split(".")[0]
        found[root if root in NAMED else "other"] += own / 1e6
    return dict(found)


def needs(params_path: Path | None = None) -> dict[str, tuple[str, ...]]:
    """NEEDS, plus what the params of ``params_path`` (default: this repo's) make a stage use."""
    from tasks.lib.config import load_params

    params = load_params(params_path or ROOT / "params.yaml")
    ingest = ["great_expectations"]
    if params.ingest.split == "stratified":
        ingest.append("sklearn.model_selection")  # train_test_split(stratify=...)
    if params.data.source == "digits":
        ingest.append("sklearn.datasets")  # load_digits
    return {**NEEDS, "ingest": tuple(ingest)}


def timed(cwd: Path, *args: str, load: list[float] | None = None) -> tuple[float, str]:
    """Wall seconds and output (stderr, then stdout) of a command that must succeed."""
    if load is not None:
        load.append(os.getloadavg()[0])
    start = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=tool_env(), capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise Failed(
            f"{' '.join(args)} exited {done.returncode} in {cwd}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    return seconds, done.stderr + "\n" + done.stdout


def import_cost(cwd: Path, code: str, skip: set[str], load: list[float] | None = None) -> tuple[float, float, dict]:
    """``python -X importtime -c code`` in a fresh interpreter: wall s, import s, import s by library."""
    wall, stderr = timed(cwd, sys.executable, "-X", "importtime", "-c", code, load=load)
    lines = parse(stderr)
    return wall, total_s(lines, skip), by_library(lines, skip)


def library_floor(repeats: int, load: list[float] | None = None, params: Path | None = None) -> dict[str, Any]:
    """Each library alone, and each stage's needed set together, ``repeats`` fresh interpreters each (interleaved)."""
    skip = interpreter_modules()
    needed = needs(params)
    alone: dict[str, list[float]] = {lib: [] for lib in LIBRARIES}
    wall: dict[str, list[float]] = {lib: [] for lib in LIBRARIES}
    together: dict[str, list[float]] = {stage: [] for stage in needed}
    for _ in range(repeats):
        for lib in LIBRARIES:
            seconds, imported, _ = import_cost(ROOT, f"import {lib}", skip, load)
            alone[lib].append(imported)
            wall[lib].append(seconds)
        for stage, libs in needed.items():
            together[stage].append(import_cost(ROOT, "; ".join(f"import {lib}" for lib in libs), skip, load)[1])
    found = {
        "alone": {lib: statistics.median(v) for lib, v in alone.items()},
        "alone_range": {lib: (min(v), max(v)) for lib, v in alone.items()},
        "alone_wall": {lib: statistics.median(v) for lib, v in wall.items()},
        "needs": needed,
        "stage_floor": {stage: statistics.median(v) for stage, v in together.items()},
        "python_s": statistics.median([timed(ROOT, sys.executable, "-c", "pass")[0] for _ in range(repeats)]),
    }
    print(f"library floor: {found}", flush=True)
    return found


def stages(root: Path, repeats: int, runs: int = 1, load: list[float] | None = None) -> dict[str, Any]:
    """Per stage in ``root`` (a workspace where the pipeline has run): see the module docstring.

    ``import tasks.<stage>`` ``repeats`` times; the stage process ``runs`` times (a stage run can take long).
    """
    skip = interpreter_modules()
    found: dict[str, Any] = {}
    for stage in STAGES:
        module = [import_cost(root, f"import tasks.{stage}", skip, load) for _ in range(repeats)]
        runs_found = []
        for _ in range(runs):
            wall, stderr = timed(root, sys.executable, "-X", "importtime", "-m", f"tasks.{stage}", load=load)
            lines = parse(stderr)
            runs_found.append((wall, total_s(lines, skip), by_library(lines, skip)))
        _, output = timed(root, sys.executable, "-c", WORK, stage, load=load)
        work = json.loads([line for line in output.splitlines() if line.startswith("{")][-1])
        libraries: dict[str, float] = defaultdict(float)
        for _, _, libs in runs_found:
            for lib, seconds in libs.items():
                libraries[lib] += seconds / len(runs_found)
        found[stage] = {
            "module_import_s": statistics.median([imported for _, imported, _ in module]),
            "module_libraries": sorted(
                {lib for *_, libs in module for lib, s in libs.items() if lib != "other" and s >= 0.005}
            ),
            "run_wall_s": statistics.median([wall for wall, _, _ in runs_found]),
            "run_import_s": statistics.median([imported for _, imported, _ in runs_found]),
            "run_libraries": dict(sorted(libraries.items(), key=lambda kv: -kv[1])),
            **work,
        }
        print(f"{stage}: {found[stage]}", flush=True)
    return found


# --- the report ---------------------------------------------------------------------------------------------------


def _libs(libraries: dict[str, float], threshold: float = 0.05) -> str:
    named = [f"{lib} {s:.2f}" for lib, s in libraries.items() if lib != "other" and s >= threshold]
    return ", ".join(named) or "—"


def report(found: dict[str, Any], floor: dict[str, Any], repeats: int, how: str) -> str:
    stage_rows = []
    for stage, s in found.items():
        at_import = ", ".join(lib for lib in s["module_libraries"] if lib != "other") or "stdlib"
        beyond = s["run_wall_s"] - s["work_s"] - floor["stage_floor"][stage]  # decision 2 of issue 30: ≤ 1 s
        stage_rows.append(
            f"| {stage} | {s['module_import_s']:.2f} ({at_import}) "
            f"| {s['run_import_s']:.2f} | {floor['stage_floor'][stage]:.2f} | {s['run_wall_s']:.2f} "
            f"| {s['work_s']:.2f} | {s['run_wall_s'] - s['work_s']:.2f} "
            f"| {beyond:+.2f} {'✅' if beyond <= 1.0 else '❌'} | {_libs(s['run_libraries'])} |"
        )
    lib_rows = [
        f"| `import {lib}` | {floor['alone'][lib]:.2f} | {floor['alone_range'][lib][0]:.2f}–"
        f"{floor['alone_range'][lib][1]:.2f} | {floor['alone_wall'][lib]:.2f} |"
        for lib in LIBRARIES
    ]
    needed = "; ".join(f"{stage}: {', '.join(libs)}" for stage, libs in floor["needs"].items())
    return "\n".join(
        [
            f"{how} Date: {today()}. Machine: {machine()}, CPU only. `import …` figures: median of {repeats} fresh "
            "interpreters (`python -X importtime`; import seconds leave out the interpreter's own start-up, "
            f"{floor['python_s']:.2f} s wall for `python -c pass`); each stage process ran once.",
            "",
            "Per stage: `import tasks.<stage>` alone (the libraries it loads at module level); everything "
            "`python -m tasks.<stage>` imports while it runs; the floor, the libraries the stage needs imported "
            "together in one fresh interpreter; the stage process's wall time; the stage's own work (its `run` a "
            "second time in the same process); wall − work, what a process of its own costs the stage (interpreter, "
            "imports, first-call set-up); wall − work − floor, what the process costs beyond its libraries' import "
            "floor (target ≤ 1 s); and the libraries that cost ≥ 0.05 s of the run's imports (each library's own "
            "modules, wherever imported from).",
            "",
            "| stage | `import tasks.<stage>` (s) | imports of `python -m tasks.<stage>` (s) | floor: needed "
            "libraries (s) | stage process wall (s) | own work (s) | wall − work (s) | wall − work − floor (s), ≤ 1 "
            "| imports by library (s) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            *stage_rows,
            "",
            f"Needed libraries (the floor): {needed}.",
            "",
            "Library floor: each library alone in a fresh interpreter, its dependencies included (`import keras` "
            "imports TensorFlow, and through it scikit-learn, matplotlib, pandas and JAX; `import great_expectations` "
            "imports pandas, SQLAlchemy and scipy.stats).",
            "",
            "| import | import time (s) | min–max | process wall (s) |",
            "| --- | --- | --- | --- |",
            *lib_rows,
        ]
    )


def digits_workspace(tmp: Path) -> Path:
    root = tmp / "workspace"
    root.mkdir()
    make_workspace(root, {})
    timed(root, "dvc", "repro")
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, help="a workspace where the pipeline has run (default: digits)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh interpreters per import measurement")
    parser.add_argument("--runs", type=int, default=1, help="stage processes per stage")
    parser.add_argument("--results", action="store_true", help=f"write the '{SECTION}' section of RESULTS.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="trainflow-imports-") as tmp:
        root = args.workspace.resolve() if args.workspace else digits_workspace(Path(tmp))
        found = stages(root, args.repeats, args.runs)
        floor = library_floor(args.repeats, params=root / "params.yaml")
    how = f"`python benchmarks/imports.py --repeats {args.repeats} --runs {args.runs}`" + (
        f" in {args.workspace}." if args.workspace else " in a workspace of the default params (digits)."
    )
    body = report(found, floor, args.repeats, how)
    print(body)
    if args.results:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
