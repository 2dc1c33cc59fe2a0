"""The data stages on 1×, 10× and 60× the MNIST test set: wall time and peak memory → benchmarks/RESULTS.md.

Usage: python benchmarks/scaling.py [--mnist DIR] [--factors 1 10 60] [--repeats 3] [--results]

For each factor the MNIST t10k images are tiled (one pixel changed per copy, so no copy is a duplicate that clean
would drop), ingested once with ``ingest.split: ordered``, then clean, augment and normalize each run as their own
`python -m tasks.<stage>` process, as dvc.yaml runs them:

- the process's wall time (it imports everything itself: one process per stage, nothing survives it) and its peak
  resident memory (``wait4``'s ru_maxrss), the stage's own;
- in-process (PROFILE below: median of 3 each, after a warm-up run that pays the imports and first-call set-up):
  the stage's own work, and validation's share of it, (with − without) / with, where "without" skips the
  per-shard summaries and the Great Expectations suite.

Linear time means a flat cost per image as the data grows; bounded memory means the peak stays flat. Params as in
params.yaml (``data.shard_size`` images per shard, ``augment.copies``), so the figures are those of the default
pipeline.
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

from results import machine, spread, today, write_section  # noqa: E402
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
def without():  # no per-shard summaries, no suite: the stage's own work only
    for m in holders:
        m.summarize = lambda *args, **kwargs: None
    validation.validate_summaries = lambda *args, **kwargs: None
def with_():
    for m, f in real[0]:
        m.summarize = f
    validation.validate_summaries = real[1]
stage.run(params)  # warm-up: imports, GX context
times = {with_: [], without: []}
for _ in range(3):
    for switch in times:
        switch()
        start = time.perf_counter()
        stage.run(params)
        times[switch].append(time.perf_counter() - start)
full, bare = statistics.median(times[with_]), statistics.median(times[without])
print(json.dumps({"run_s": full, "without_s": bare, "validate_s": full - bare}))
"""


def profile(root: Path, name: str) -> dict[str, float]:
    """A data stage in ``root``, in-process (PROFILE): its own work with and without validation, in seconds."""
    done = subprocess.run(
        [sys.executable, "-c", PROFILE, name], cwd=root, env=tool_env(), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"profiling {name} failed in {root}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def validation_share(root: Path, name: str) -> float:
    """Validation's share of a data stage's time in ``root``: (with − without) / with, in-process (PROFILE)."""
    measured = profile(root, name)
    return measured["validate_s"] / measured["run_s"]


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
    found: dict[str, Any] = {"images": images, "cold": {}}
    for _ in range(repeats):
        for name in DATA_STAGES:
            found["cold"].setdefault(name, []).append(stage(root, name))
    found["profile"] = {name: profile(root, name) for name in DATA_STAGES}
    print(f"x{factor}: {found}", flush=True)
    return found


def report(results: dict[int, dict[str, Any]], mnist: Path, repeats: int, shard_size: int) -> str:
    lines = [
        f"`python benchmarks/scaling.py --repeats {repeats}` on `{mnist.name}/` (MNIST t10k, tiled). "
        f"Date: {today()}. Machine: {machine()}, CPU only. `data.shard_size` {shard_size:,}; `augment.copies` as in "
        "params.yaml. Stage process: `python -m tasks.<stage>`, as `dvc repro` runs it, median (min–max) of the "
        "runs; own work: the stage's `run` in-process after a warm-up run, median of 3.",
        "",
        "| data | images | stage | stage process wall (s) | own work (s) | peak memory (MiB) | validation's share "
        "of the work |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for factor, found in results.items():
        for name in DATA_STAGES:
            wall = spread([t for t, _ in found["cold"][name]], 2)
            memory = spread([m for _, m in found["cold"][name]], 0)
            work = found["profile"][name]
            lines.append(
                f"| MNIST ×{factor} | {found['images']:,} | {name} | {wall[0]} ({wall[1]}) | {work['run_s']:.2f} "
                f"| {memory[0]} ({memory[1]}) | {100 * work['validate_s'] / work['run_s']:.0f} % |"
            )
    lines += [
        "",
        "| data | images | clean + augment + normalize, stage processes (s) | images/s | own work (s) | images/s "
        "| µs per image (own work) | peak memory, largest stage (MiB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for factor, found in results.items():
        runs = len(found["cold"]["clean"])
        total = statistics.median([sum(found["cold"][name][i][0] for name in DATA_STAGES) for i in range(runs)])
        work = sum(found["profile"][name]["run_s"] for name in DATA_STAGES)
        peak = max(statistics.median([m for _, m in found["cold"][name]]) for name in DATA_STAGES)
        images = found["images"]
        lines.append(
            f"| MNIST ×{factor} | {images:,} | {total:.2f} | {images / total:,.0f} | {work:.2f} | {images / work:,.0f} "
            f"| {1e6 * work / images:.1f} | {peak:.0f} |"
        )
    return "\n".join(lines)


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
