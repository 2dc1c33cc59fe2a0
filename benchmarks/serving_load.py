"""Bounded load test of `mlflow models serve`: one-image requests from 1, then 50 concurrent clients, repeated.

    python benchmarks/serving_load.py [--mnist ../shared/data/mnist] [--repeats 3] [--requests 2000] [--results]
    python benchmarks/serving_load.py --url http://127.0.0.1:5001/invocations --shape 28 28 1 [--results]

Without --url it makes the MNIST-shaped model itself: a throw-away workspace of this repo's committed tree reading
``--mnist`` (MNIST t10k, 28×28×1), `dvc repro` with ``train.epochs`` = ``--epochs`` (latency depends on the network,
not on how long it trained), then `mlflow models serve --env-manager local` of ``models:/<deploy.model_name>@champion``
on loopback (one uvicorn worker, as the README starts it). With --url it measures a server already running.

Each request is one random uint8 image of ``--shape``; the clients are threads on the same machine. For each of
``--repeats`` repeats, every thread count runs ``--requests`` requests (the order of the thread counts alternates
between repeats); a repeat gives p50 and p99 latency (ms) and throughput (requests/s); the figures are the median and
min–max over the repeats. Targets (issue 17): one client p50 ≤ 20 ms and p99 ≤ 60 ms; 50 clients ≥ 200 requests/s.
With --results writes the "Serving load" section of benchmarks/RESULTS.md. Exits 1 on any error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from results import headline_row, headline_table, machine, spread, today, write_section  # noqa: E402

SECTION = "Serving load"
Run = dict[str, float | int]


def one_request(url: str, body: bytes) -> tuple[float, bool]:
    """Latency in seconds and whether the answer was a 200 with one prediction."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            ok = response.status == 200 and len(json.loads(response.read())["predictions"]) == 1
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        ok = False
    return time.perf_counter() - start, ok


def load(url: str, requests: int, threads: int, shape: tuple[int, ...], seed: int = 0) -> Run:
    """Send ``requests`` single-image requests (random uint8 pixels of ``shape``) from ``threads`` threads."""
    rng = np.random.default_rng(seed)
    bodies = [json.dumps({"inputs": rng.integers(0, 256, (1, *shape)).tolist()}).encode() for _ in range(64)]
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(lambda i: one_request(url, bodies[i % len(bodies)]), range(requests)))
    elapsed = time.perf_counter() - start
    latencies = np.array([latency for latency, _ in results]) * 1000.0
    return {
        "requests": requests,
        "threads": threads,
        "errors": sum(not ok for _, ok in results),
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "throughput_rps": requests / elapsed,
    }


def repeated(url: str, requests: int, threads: list[int], shape: tuple[int, ...], repeats: int) -> dict[int, list[Run]]:
    """:func:`load` for every thread count, ``repeats`` times, the order of the thread counts alternating."""
    runs: dict[int, list[Run]] = {t: [] for t in threads}
    load(url, min(requests, 50), 1, shape)  # warm-up: the server's first calls, not measured
    for i in range(repeats):
        for t in threads if i % 2 == 0 else threads[::-1]:
            runs[t].append(load(url, requests, t, shape, seed=i))
            print(json.dumps(runs[t][-1]), flush=True)
    return runs


@contextlib.contextmanager
def mnist_server(mnist: Path, epochs: int) -> Iterator[str]:
    """`mlflow models serve` of the champion that `dvc repro` makes on ``mnist`` in a throw-away workspace."""
    from tests.helpers import make_workspace, mlflow_serve, sh

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    with tempfile.TemporaryDirectory(prefix="trainflow-serving-") as tmp:
        root = make_workspace(
            Path(tmp) / "ws", {"data": {"source": "idx", "path": str(mnist.resolve())}, "train": {"epochs": epochs}}
        )
        sh(root, "dvc", "repro")
        model_uri = f"models:/{params['deploy']['model_name']}@champion"
        with mlflow_serve(root, model_uri, str(params["tracking"]["uri"])) as url:
            yield url


def report(runs: dict[int, list[Run]], shape: tuple[int, ...], how: str, served: str) -> str:
    """The section: per thread count, median (min–max) p50, p99 and throughput; and its headline table."""

    def cell(values: list[float], digits: int) -> str:
        median, low_high = spread(values, digits)
        return f"{median} ({low_high})"

    lines = [
        f"`{how}`: {served}; one {'×'.join(map(str, shape))} uint8 image a request; the clients run on the same "
        f"machine. Machine: {machine()}, CPU only; {today()}. Median (min–max) of {len(next(iter(runs.values())))} "
        "repeats, the thread counts alternating in order. Targets (issue 17): one client p50 ≤ 20 ms, p99 ≤ 60 ms; "
        "50 clients ≥ 200 requests/s.",
        "",
        "| client threads | requests a repeat | errors | p50 latency (ms) | p99 latency (ms) "
        "| throughput (requests/s) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    rows = []
    for threads, found in runs.items():
        p50, p99 = [r["p50_ms"] for r in found], [r["p99_ms"] for r in found]
        rps = [r["throughput_rps"] for r in found]
        lines.append(
            f"| {threads} | {found[0]['requests']} | {sum(int(r['errors']) for r in found)} | {cell(p50, 1)} "
            f"| {cell(p99, 1)} | {cell(rps, 0)} |"
        )
        one = threads == 1
        rows += [
            headline_row(
                f"served model, {threads} client{'s' * (not one)}: p50 latency (ms)",
                p50,
                1,
                target="≤ 20" if one else "—",
                met=statistics.median(p50) <= 20 if one else None,
            ),
            headline_row(
                "… p99 latency (ms)",
                p99,
                1,
                target="≤ 60" if one else "—",
                met=statistics.median(p99) <= 60 if one else None,
            ),
        ]
        if threads == 50:
            rows.append(
                headline_row("… throughput (requests/s)", rps, 0, target="≥ 200", met=statistics.median(rps) >= 200)
            )
    return "\n".join([*lines, "", headline_table(rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server's /invocations URL (else the MNIST model is made and served)")
    parser.add_argument("--mnist", type=Path, default=ROOT.parent / "shared/data/mnist")
    parser.add_argument("--epochs", type=int, default=1, help="train.epochs of the model made from --mnist")
    parser.add_argument("--requests", type=int, default=2000, help="requests per thread count and repeat")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs="+", default=[28, 28, 1], help="one image's H W C")
    parser.add_argument("--results", action="store_true", help="update the 'Serving load' section of RESULTS.md")
    args = parser.parse_args(argv)
    shape = tuple(args.shape)
    how = f"python benchmarks/serving_load.py --repeats {args.repeats} --requests {args.requests}"
    if args.url:
        served = f"the server at `--url`, {args.url.split('/')[2]}"
        runs = repeated(args.url, args.requests, args.threads, shape, args.repeats)
        how += f" --url … --shape {' '.join(map(str, shape))}"
    else:
        served = (
            f"`mlflow models serve --env-manager local` of the champion that `dvc repro` made on `{args.mnist.name}/`"
            f" (MNIST t10k, {args.epochs} epoch{'s' * (args.epochs != 1)}) in a throw-away workspace, on loopback"
        )
        with mnist_server(args.mnist, args.epochs) as url:
            runs = repeated(url, args.requests, args.threads, shape, args.repeats)
    if args.results:
        write_section(SECTION, report(runs, shape, how, served))
    return 1 if any(r["errors"] for found in runs.values() for r in found) else 0


if __name__ == "__main__":
    sys.exit(main())
