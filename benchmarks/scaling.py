"""The data stages on 1×, 10× and 60× the MNIST test set: wall time and peak memory → benchmarks/RESULTS.md.

Usage: python benchmarks/scaling.py [--mnist DIR] [--factors 1 10 60] [--repeats 3]

For each factor the MNIST t10k images are tiled (one pixel changed per copy, so no copy is a duplicate that clean
would drop), ingested once with ``ingest.split: ordered``, then clean, augment and normalize each run as their own
`python -m tasks <stage>` process (as dvc.yaml runs it):

- cold (``TRAINFLOW_WARM=0``): the process imports everything itself, and its peak resident memory (``wait4``'s
  ru_maxrss) is the stage's own;
- warm (the default): handed to a warm server, as `dvc repro` runs it; its wall time gives the throughput;
- in-process, with and without validation (PROFILE below: median of 3 each): validation's share
  of the stage's time, (with − without) / with.

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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from results import machine, spread, today, write_section  # noqa: E402
from validation_speed import tiled  # noqa: E402

from tests.helpers import make_workspace, tool_env  # noqa: E402

DATA_STAGES = ("clean", "augment", "normalize")

PROFILE = """
import json, statistics, sys, time
from pathlib import Path
from tasks import validation
from tasks.config import load_params
stage = __import__(f"tasks.{sys.argv[1]}", fromlist=["run"])
params = load_params(Path("params.yaml"))
real = (validation.summarize, validation.validate_summaries)
def without():  # no per-shard summaries, no suite: the stage's own work only
    validation.summarize = lambda *args, **kwargs: None
    validation.validate_summaries = lambda *args, **kwargs: None
def with_():
    validation.summarize, validation.validate_summaries = real
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


def validation_share(root: Path, name: str) -> float:
    """Validation's share of a data stage's time in ``root``: (with − without) / with, in-process (PROFILE)."""
    done = subprocess.run(
        [sys.executable, "-c", PROFILE, name],
        cwd=root,
        env=tool_env(TRAINFLOW_WARM="0"),
        capture_output=True,
        text=True,
        check=True,
    )
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    return measured["validate_s"] / measured["run_s"]


def stage(root: Path, name: str, warm: bool) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one `python -m tasks.<name>` process that must succeed."""
    env = tool_env(**({} if warm else {"TRAINFLOW_WARM": "0"}))
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "tasks", name], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output = process.stdout.read() if process.stdout else b""
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"python -m tasks {name} exited {process.returncode} in {root}:\n{output.decode()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024


def wait_ready(root: Path, timeout: float = 180.0) -> None:
    """Until every warm server has finished importing, so none competes for the CPU with a measurement."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = subprocess.run(
            [sys.executable, "-m", "tasks.warm", "status"], cwd=root, env=tool_env(), capture_output=True, text=True
        ).stdout.splitlines()
        if status and all(line.endswith("ready") for line in status):
            return
        time.sleep(2)
    raise RuntimeError(f"warm servers not ready after {timeout:.0f} s")


def prepare(mnist: Path, factor: int, root: Path) -> int:
    """MNIST t10k tiled ``factor`` times as an npz source, a workspace that reads it, and its ingest; the images."""
    from tasks.sources import load_idx_dir

    loaded = load_idx_dir(mnist)
    x, y = (loaded.x_test, loaded.y_test) if loaded.x_test is not None else (loaded.x, loaded.y)
    big_x, big_y = tiled(x, y, factor)
    source = root.with_suffix(".npz")
    test = int(len(big_y) * 0.15)  # the source's own test split: the last 15 %; ingest takes val from the rest
    np.savez(source, x_train=big_x[:-test], y_train=big_y[:-test], x_test=big_x[-test:], y_test=big_y[-test:])
    root.mkdir()
    make_workspace(root, {"data": {"source": f"npz:{source}"}, "ingest": {"split": "ordered"}})
    stage(root, "ingest", warm=False)
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
    found: dict[str, Any] = {"images": images, "cold": {}, "warm": {}}
    stage(root, "clean", warm=True)  # starts the warm servers (data, then model and serving): let them finish
    wait_ready(root)
    for _ in range(repeats):
        for name in DATA_STAGES:
            found["cold"].setdefault(name, []).append(stage(root, name, warm=False))
        for name in DATA_STAGES:
            found["warm"].setdefault(name, []).append(stage(root, name, warm=True))
    subprocess.run([sys.executable, "-m", "tasks.warm", "stop"], cwd=root, env=tool_env(), check=False)
    found["validation_share"] = {name: validation_share(root, name) for name in DATA_STAGES}
    print(f"x{factor}: {found}", flush=True)
    return found


def report(results: dict[int, dict[str, Any]], mnist: Path, repeats: int, shard_size: int) -> str:
    lines = [
        f"`python benchmarks/scaling.py --repeats {repeats}` on `{mnist.name}/` (MNIST t10k, tiled). "
        f"Date: {today()}. Machine: {machine()}, CPU only. `data.shard_size` {shard_size:,}; `augment.copies` as in "
        "params.yaml. Median (min–max) of the runs.",
        "",
        "| data | images | stage | wall, warm (s) | wall, cold (s) | peak memory, cold (MiB) | validation's share |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for factor, found in results.items():
        for name in DATA_STAGES:
            warm = spread([t for t, _ in found["warm"][name]], 2)
            cold = spread([t for t, _ in found["cold"][name]], 2)
            memory = spread([m for _, m in found["cold"][name]], 0)
            lines.append(
                f"| MNIST ×{factor} | {found['images']:,} | {name} | {warm[0]} ({warm[1]}) | {cold[0]} ({cold[1]}) "
                f"| {memory[0]} ({memory[1]}) | {100 * found['validation_share'][name]:.0f} % |"
            )
    lines += [
        "",
        "| data | images | clean + augment + normalize, warm (s) | images/s | µs per image "
        "| peak memory, largest stage (MiB) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for factor, found in results.items():
        total = statistics.median(
            [sum(found["warm"][name][i][0] for name in DATA_STAGES) for i in range(len(found["warm"]["clean"]))]
        )
        peak = max(statistics.median([m for _, m in found["cold"][name]]) for name in DATA_STAGES)
        lines.append(
            f"| MNIST ×{factor} | {found['images']:,} | {total:.2f} | {found['images'] / total:,.0f} "
            f"| {1e6 * total / found['images']:.1f} | {peak:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from tasks.config import load_params

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=ROOT.parent / "shared/data/mnist")
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 10, 60])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", action="store_true", help="write the table to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="trainflow-scaling-") as tmp:
        results = {factor: measure(args.mnist, factor, args.repeats, Path(tmp)) for factor in args.factors}
    shard_size = load_params(ROOT / "params.yaml").data.shard_size
    body = report(results, args.mnist, args.repeats, shard_size)
    print(body)
    if args.results:
        write_section("Scaling: data stages at 1×, 10×, 60× MNIST", body)


if __name__ == "__main__":
    main()
