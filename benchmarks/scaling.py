"""The data stages on 1×, 10× and 60× the MNIST test set, through stage processes and warm in-process → RESULTS.md.

Usage: python benchmarks/scaling.py [--mnist DIR] [--factors 1 10 60] [--repeats 3] [--results]

For each factor the MNIST t10k images are tiled (one pixel changed per copy, so no copy is a duplicate that clean
would drop) and ingested once with ``ingest.split: ordered``. Then, ``--repeats`` times, alternating which comes
first:

- A, the stage processes: clean, augment and normalize each as its own `python -m tasks.<stage>` process, as
  `dvc repro` runs them; the process's wall time (its imports included: nothing survives it) and its peak resident
  memory (``wait4``'s ru_maxrss);
- B, warm, in one fresh process per stage (PROFILE below): the stage's ``run`` with validation switched off (the
  per-shard summaries and the Great Expectations suite: it pays the stage's own imports), then
  ``import great_expectations`` timed (what only validation imports), then a first run with validation (what is
  left is validation's first-call set-up: GX's context and checkpoint), then 3 runs with and 3 without, interleaved:
  the stage's warm own work (the median with) and validation's part of it (with − without).

Validation's share of a stage process is (validation's warm work + GX's import + its first-call set-up) over the
process's wall time, the repeat's A beside its B; its share of the warm work, (with − without) / with, leaves the
import and set-up out. The headline ratios pair A and B of the same repeat. Linear time means a flat cost per image
as the data grows; bounded memory means the peak stays flat. Params as in params.yaml (``data.shard_size`` images
per shard, ``augment.copies``), so the figures are those of the default pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from results import headline_row, headline_table, machine, paired, spread, today, write_section  # noqa: E402
from validation_speed import tiled  # noqa: E402

from tests.helpers import make_workspace, tool_env  # noqa: E402

DATA_STAGES = ("clean", "augment", "normalize")
SECTION = "Scaling: data stages at 1×, 10×, 60× MNIST"

PROFILE = """
import json, statistics, sys, time
from pathlib import Path
from tasks.lib import stats, validation
from tasks.lib.config import load_params
stage = __import__(f"tasks.{sys.argv[1]}", fromlist=["run"])
params = load_params(Path("params.yaml"))
# a stage calls stats.summarize, or its own imported name for it (normalize), and validation.validate_summaries
holders = [m for m in (stats, stage) if hasattr(m, "summarize")]
real = [(m, m.summarize) for m in holders], validation.validate_summaries
called = []
def without():  # no per-shard summaries, no suite: the stage's own work only
    for m in holders:
        m.summarize = lambda *args, **kwargs: None
    validation.validate_summaries = lambda *args, **kwargs: called.append(1)
def with_():
    for m, f in real[0]:
        m.summarize = f
    validation.validate_summaries = real[1]
def timed():
    start = time.perf_counter()
    stage.run(params)
    return time.perf_counter() - start
without()
timed()  # the stage's own imports and first-call set-up, without validation's
validates, gx_import = bool(called), 0.0  # normalize writes statistics only: no validation to import
if validates:
    start = time.perf_counter()
    import great_expectations, great_expectations.checkpoint  # what only validation imports
    gx_import = time.perf_counter() - start
with_()
first = timed()  # validation's first call: GX's context, suite and checkpoint set up
times = {with_: [], without: []}
for _ in range(3):
    for switch in times:
        switch()
        times[switch].append(timed())
full, bare = statistics.median(times[with_]), statistics.median(times[without])
print(json.dumps({"run_s": full, "without_s": bare, "validate_s": full - bare, "gx_import_s": gx_import,
                  "validation_setup_s": max(first - full, 0.0) if validates else 0.0, "validates": validates}))
"""


def profile(root: Path, name: str) -> dict[str, float]:
    """A data stage in ``root``, in-process (PROFILE): its own work with and without validation, in seconds."""
    done = subprocess.run(
        [sys.executable, "-c", PROFILE, name], cwd=root, env=tool_env(), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"profiling {name} failed in {root}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def stage(root: Path, name: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one `python -m tasks.<name>` process that must succeed."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", f"tasks.{name}"],
        cwd=root,
        env=tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output = process.stdout.read() if process.stdout else b""
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"python -m tasks.{name} exited {process.returncode} in {root}:\n{output.decode()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024


def prepare(mnist: Path, factor: int, root: Path) -> int:
    """MNIST t10k tiled ``factor`` times as an npz source, a workspace that reads it, and its ingest; the images."""
    from tasks.lib.sources import load_idx_dir

    loaded = load_idx_dir(mnist)
    x, y = (loaded.x_test, loaded.y_test) if loaded.x_test is not None else (loaded.x, loaded.y)
    big_x, big_y = tiled(x, y, factor)
    source = root.with_suffix(".npz")
    test = int(len(big_y) * 0.15)  # the source's own test split: the last 15 %; ingest takes val from the rest
    np.savez(source, x_train=big_x[:-test], y_train=big_y[:-test], x_test=big_x[-test:], y_test=big_y[-test:])
    root.mkdir()
    make_workspace(root, {"data": {"source": "npz", "path": str(source)}, "ingest": {"split": "ordered"}})
    stage(root, "ingest")
    return len(big_y)


def measure(mnist: Path, factor: int, repeats: int, tmp: Path) -> dict[str, Any]:
    """MNIST t10k ×``factor`` ingested in a workspace of its own, then :func:`paired_runs` on it."""
    # The data is made in a process of its own: a child's peak RSS counts its parent's pages from the moment it is
    # forked until it execs, so this process must stay small while it starts the stages it measures.
    root = tmp / f"x{factor}"
    code = (
        "import sys; from pathlib import Path; from scaling import prepare; "
        "print(prepare(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])))"
    )
    made = subprocess.run(
        [sys.executable, "-c", code, str(mnist), str(factor), str(root)],
        cwd=ROOT / "benchmarks",
        env=tool_env(PYTHONPATH=str(ROOT / "benchmarks")),
        capture_output=True,
        text=True,
        check=True,
    )
    images = int(made.stdout.strip().splitlines()[-1])
    found = {"images": images, **paired_runs(root, repeats)}
    print(f"x{factor}: {json.dumps(found)}", flush=True)
    return found


def paired_runs(root: Path, repeats: int) -> dict[str, Any]:
    """``repeats`` times: the stage processes (A) and the warm profiles (B), alternating which goes first."""
    cold: dict[str, list[tuple[float, float]]] = {name: [] for name in DATA_STAGES}
    warm: dict[str, list[dict[str, float]]] = {name: [] for name in DATA_STAGES}
    for i in range(repeats):
        for part in ("process", "warm") if i % 2 == 0 else ("warm", "process"):
            for name in DATA_STAGES:
                if part == "process":
                    cold[name].append(stage(root, name))
                else:
                    warm[name].append(profile(root, name))
    return {"cold": cold, "profile": warm}


def figures(found: dict[str, Any]) -> dict[str, Any]:
    """Per repeat: images/s through stage processes and warm, their ratio, and validation's shares per stage."""
    images, cold, warm = found["images"], found["cold"], found["profile"]
    repeats = range(len(cold[DATA_STAGES[0]]))
    walls = [sum(cold[name][i][0] for name in DATA_STAGES) for i in repeats]
    work = [sum(warm[name][i]["run_s"] for name in DATA_STAGES) for i in repeats]
    process_rate, warm_rate = [images / s for s in walls], [images / s for s in work]

    def validation_s(p: dict[str, float]) -> float:
        return p["validate_s"] + p["gx_import_s"] + p["validation_setup_s"]

    return {
        "walls": walls,
        "work": work,
        "process_rate": process_rate,
        "warm_rate": warm_rate,
        "ratio": paired(process_rate, warm_rate),
        # only the stages that validate (normalize writes statistics and runs no suite)
        "share_process": {
            name: [validation_s(warm[name][i]) / cold[name][i][0] for i in repeats] for name in validating(found)
        },
        "share_warm": {
            name: [warm[name][i]["validate_s"] / warm[name][i]["run_s"] for i in repeats] for name in validating(found)
        },
    }


def validating(found: dict[str, Any]) -> list[str]:
    """The data stages that called validation in their profiles."""
    return [name for name in DATA_STAGES if all(p["validates"] for p in found["profile"][name])]


def data_headlines(
    found: dict[str, Any], label: str, work_target: int | None = None, share_target: float | None = None
) -> list[str]:
    """Headline rows: images/s through stage processes beside the warm figure, and validation's share of a process.

    ``work_target``: images/s the warm figure should reach; ``share_target``: the largest share (a fraction).
    """
    got = figures(found)
    shares = [v for values in got["share_process"].values() for v in values]
    warm = statistics.median(got["warm_rate"])
    return [
        headline_row(
            f"clean + augment + normalize, {label}: stage processes, as `dvc repro` runs them (images/s)",
            got["process_rate"],
            -1,
        ),
        headline_row(
            "… the same stages' `run()` in a warm process (images/s)",
            got["warm_rate"],
            -1,
            target="—" if work_target is None else f"≥ {work_target:,}",
            met=None if work_target is None else warm >= work_target,
        ),
        headline_row(
            "… validation's share of a stage process, GX's import and set-up included "
            f"({', '.join(got['share_process'])} × repeats)",
            [100 * v for v in shares],
            0,
            " %",
            "—" if share_target is None else f"≤ {100 * share_target:.0f} %",
            None if share_target is None else statistics.median(shares) <= share_target,
        ),
    ]


def report(results: dict[int, dict[str, Any]], mnist: Path, repeats: int, shard_size: int) -> str:
    lines = [
        f"`python benchmarks/scaling.py --factors {' '.join(map(str, results))} --repeats {repeats}` on "
        f"`{mnist.name}/` (MNIST t10k, tiled). "
        f"Date: {today()}. Machine: {machine()}, CPU only. `data.shard_size` {shard_size:,}; `augment.copies` as in "
        "params.yaml. Stage process: `python -m tasks.<stage>`, as `dvc repro` runs it; warm: the stage's `run` in a "
        "process that has run it before (see the script's docstring). Median (min–max) of the repeats, the stage "
        "processes and the warm runs alternated in each. Validation's share of the process counts its warm work, "
        "`import great_expectations` and its first-call set-up (GX's context and checkpoint), over the process's "
        "wall time; of the warm work, only its warm work.",
        "",
        "| data | images | stage | stage process wall (s) | warm own work (s) | peak memory (MiB) | "
        "`import great_expectations` (s) | validation's share of the process | of the warm work |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for factor, found in results.items():
        got = figures(found)
        for name in DATA_STAGES:
            wall = spread([t for t, _ in found["cold"][name]], 2)
            memory = spread([m for _, m in found["cold"][name]], 0)
            work = spread([p["run_s"] for p in found["profile"][name]], 2)
            gx = spread([p["gx_import_s"] for p in found["profile"][name]], 2)
            shares = "— | — (no validation)"
            if name in got["share_process"]:
                process_share = spread([100 * v for v in got["share_process"][name]], 0)
                warm_share = spread([100 * v for v in got["share_warm"][name]], 0)
                shares = f"{process_share[0]} % ({process_share[1]}) | {warm_share[0]} % ({warm_share[1]})"
            lines.append(
                f"| MNIST ×{factor} | {found['images']:,} | {name} | {wall[0]} ({wall[1]}) | {work[0]} ({work[1]}) "
                f"| {memory[0]} ({memory[1]}) | {gx[0]} ({gx[1]}) | {shares} |"
            )
    lines += [
        "",
        "| data | images | clean + augment + normalize, stage processes (s) | images/s | warm own work (s) | images/s "
        "| processes ÷ warm (images/s) | µs per image (warm) | peak memory, largest stage (MiB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    headlines = []
    for factor, found in results.items():
        got = figures(found)
        images = found["images"]
        peak = max(statistics.median([m for _, m in found["cold"][name]]) for name in DATA_STAGES)
        walls, work = spread(got["walls"], 2), spread(got["work"], 2)
        rate, warm_rate, ratio = spread(got["process_rate"], -1), spread(got["warm_rate"], -1), spread(got["ratio"], 2)
        lines.append(
            f"| MNIST ×{factor} | {images:,} | {walls[0]} ({walls[1]}) | {rate[0]} ({rate[1]}) | {work[0]} ({work[1]}) "
            f"| {warm_rate[0]} ({warm_rate[1]}) | {ratio[0]} ({ratio[1]}) "
            f"| {1e6 * statistics.median(got['work']) / images:.1f} | {peak:.0f} |"
        )
        headlines += data_headlines(
            found, f"{images:,} images (MNIST ×{factor})", share_target=0.15 if factor == 60 else None
        )
    return "\n".join([*lines, "", headline_table(headlines)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=ROOT.parent / "shared/data/mnist")
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 10, 60])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", action="store_true", help="write the table to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    # the workspaces copy params.yaml: its shard size is theirs (read as plain YAML, before minutes of measuring)
    shard_size = int(yaml.safe_load((ROOT / "params.yaml").read_text())["data"]["shard_size"])
    with tempfile.TemporaryDirectory(prefix="trainflow-scaling-") as tmp:
        results = {factor: measure(args.mnist, factor, args.repeats, Path(tmp)) for factor in args.factors}
    body = report(results, args.mnist, args.repeats, shard_size)
    print(body)
    if args.results:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
