"""Bounded load test of a running `mlflow models serve`: N one-image requests from 1, then 50 client threads.

    python benchmarks/serving_load.py --url http://127.0.0.1:5001/invocations --requests 2000 --threads 1 50 --results

Prints one JSON line per thread count (requests, errors, p50/p99 latency in ms, throughput in requests/s); with
--results it also writes them as the "Serving load" section of benchmarks/RESULTS.md, keeping the other sections.
Targets (issue 17): one client p50 ≤ 20 ms and p99 ≤ 60 ms; 50 concurrent clients ≥ 200 requests/s. Exits 1 on any
error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import machine, today, write_section

SECTION = "Serving load"


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


def load(url: str, requests: int, threads: int, shape: tuple[int, ...], seed: int = 0) -> dict[str, float | int]:
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
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "throughput_rps": round(requests / elapsed, 1),
        "seconds": round(elapsed, 2),
    }


def write_results(runs: list[dict[str, float | int]], shape: tuple[int, ...], workers: str) -> None:
    """Replace (or append) the "Serving load" section of RESULTS.md."""
    rows = "".join(
        f"| {r['threads']} | {r['requests']} | {r['errors']} | {r['p50_ms']} | {r['p99_ms']} | "
        f"{r['throughput_rps']} |\n"
        for r in runs
    )
    write_section(
        SECTION,
        "`python benchmarks/serving_load.py --url http://127.0.0.1:PORT/invocations --threads 1 50 --results`"
        f" against `mlflow models serve --env-manager local{workers}` of the registered model (digits) on loopback:"
        f" one {'×'.join(map(str, shape))} uint8 image a request; the clients run on the same 2 cores.\n"
        f"Machine: {machine()}, CPU only; {today()}. Targets: one client p50 ≤ 20 ms, p99 ≤ 60 ms; 50 clients"
        " ≥ 200 requests/s.\n\n"
        "| client threads | requests | errors | p50 latency (ms) | p99 latency (ms) | throughput (requests/s) |\n"
        "| --- | --- | --- | --- | --- | --- |\n" + rows,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the server's /invocations URL")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--workers", default="", help="the server's -w, for the record (e.g. ' -w 2')")
    parser.add_argument("--shape", type=int, nargs="+", default=[8, 8, 1], help="one image's H W C")
    parser.add_argument("--results", action="store_true", help="update the 'Serving load' section of RESULTS.md")
    args = parser.parse_args(argv)
    runs = []
    for threads in args.threads:
        runs.append(load(args.url, args.requests, threads, tuple(args.shape)))
        print(json.dumps(runs[-1]))
    if args.results:
        write_results(runs, tuple(args.shape), args.workers)
    return 1 if any(r["errors"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
