"""The Prefect flow against `dvc repro` on the default data: what running every stage through DVC costs.

    python benchmarks/flow.py [--repeats 3]

Writes the "Prefect flow vs dvc repro" section of benchmarks/RESULTS.md. Each repeat is paired, in fresh throw-away
workspaces of this repo's committed tree with its default params (the digits, as `make run` trains them):

- cold: `dvc repro` in one workspace, `python -m flows.training` in another (every stage runs in both);
- nothing to do: in the first workspace, a second `dvc repro`, then `python -m flows.training` (DVC skips every stage:
  the flow's fixed cost: its temporary API server, Prefect's import and one `dvc repro --single-item` per stage).

The order of the two drivers alternates between repeats. Medians, with min–max.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pipeline import Failed, flow_summary, run, survivors  # noqa: E402
from results import headline_row, headline_table, machine, paired, spread, today, write_section  # noqa: E402

from tests.helpers import STAGES, make_workspace, ran  # noqa: E402


def flow(root: Path, home: Path) -> tuple[float, dict[str, str]]:
    seconds, output = run(root, sys.executable, "-m", "flows.training", PREFECT_HOME=str(home))
    return seconds, {stage: s["state"] for stage, s in flow_summary(output)["stages"].items()}


def one_repeat(tmp: Path, i: int, home: Path) -> dict[str, float]:
    dvc_root = make_workspace((tmp / f"dvc{i}").resolve(), {})
    flow_root = make_workspace((tmp / f"flow{i}").resolve(), {})
    found: dict[str, float] = {}
    for driver in ("dvc", "flow") if i % 2 == 0 else ("flow", "dvc"):
        if driver == "dvc":
            found["dvc_cold_s"], output = run(dvc_root, "dvc", "repro")
            if ran(output) != list(STAGES):
                raise Failed(f"dvc repro ran {ran(output)}")
        else:
            found["flow_cold_s"], states = flow(flow_root, home)
            if set(states.values()) != {"ran"}:
                raise Failed(f"the cold flow did not run every stage: {states}")
    found["dvc_noop_s"], output = run(dvc_root, "dvc", "repro")
    found["flow_noop_s"], states = flow(dvc_root, home)
    if ran(output) or set(states.values()) != {"skipped"}:
        raise Failed(f"after dvc repro, dvc repro ran {ran(output)} and the flow {states}")
    accuracy = [json.loads((r / "reports/metrics.json").read_text())["test"]["accuracy"] for r in (dvc_root, flow_root)]
    found |= {"dvc_accuracy": accuracy[0], "flow_accuracy": accuracy[1]}
    left = survivors(dvc_root) + survivors(flow_root)
    if left:
        raise Failed(f"processes left behind: {left}")
    print(f"repeat {i}: {found}", flush=True)
    return found


def section(results: list[dict[str, float]]) -> str:
    def row(label: str, key: str) -> str:
        median, span = spread([r[key] for r in results])
        return f"| {label} | {median} | {span} |"

    ratios = paired([r["flow_cold_s"] for r in results], [r["dvc_cold_s"] for r in results])
    extra = [r["flow_cold_s"] - r["dvc_cold_s"] for r in results]
    return "\n".join(
        [
            f"{today()}, {machine()}; {len(results)} paired repeats on the default params (digits), fresh workspaces.",
            "",
            "| what | median (s) | min–max (s) |",
            "| --- | --- | --- |",
            row("cold `dvc repro`", "dvc_cold_s"),
            row("cold `python -m flows.training` (every stage through `dvc repro --single-item`)", "flow_cold_s"),
            row("no-op `dvc repro`", "dvc_noop_s"),
            row("the flow right after `dvc repro` (DVC skips every stage)", "flow_noop_s"),
            "",
            f"The flow costs {statistics.median(ratios):.2f}× cold `dvc repro` ({min(ratios):.2f}–{max(ratios):.2f}), "
            f"{statistics.median(extra):+.1f} s: its temporary API server, Prefect's import and one DVC start-up per "
            "stage; it no longer runs the stages in its own process. Test accuracy: `dvc repro` "
            f"{results[0]['dvc_accuracy']:.4f}, the flow {results[0]['flow_accuracy']:.4f} (the same stages).",
            "",
            headline_table(
                [
                    headline_row("cold Prefect flow ÷ cold `dvc repro` (paired)", ratios, 2, "×"),
                    headline_row("no-op `dvc repro` (s)", [r["dvc_noop_s"] for r in results], 1),
                    headline_row("the flow when DVC skips every stage (s)", [r["flow_noop_s"] for r in results], 1),
                ]
            ),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trainflow-flow-") as tmp:
        home = Path(tmp) / "prefect-home"  # its database made before any measurement, as after a first use
        run(
            Path(tmp),
            str(Path(sys.executable).parent / "prefect"),
            "server",
            "database",
            "reset",
            "-y",
            PREFECT_HOME=str(home),
        )
        results = [one_repeat(Path(tmp), i, home) for i in range(args.repeats)]
    write_section("Prefect flow vs dvc repro", section(results))


if __name__ == "__main__":
    main()
