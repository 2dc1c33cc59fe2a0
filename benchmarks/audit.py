"""The audit on real data: MNIST's t10k files and the SMS Spam Collection, each in a throw-away workspace.

    python benchmarks/audit.py [--mnist ../shared/data/mnist] [--sms ../shared/data/sms-spam/sms.tsv]

Per dataset: `dvc repro audit` (ingest, clean, augment, normalize, train, audit) with ``data.source``/``data.path``
set and every other param at its default (audit: 3 folds of 3 epochs); then the audit's summary (items flagged per
issue type and split, seconds of cross-validation, prediction and cleanlab) and its top 20 label issues (source id,
given and suggested label, score; the text, or the picture's file in benchmarks/audit/). No list of known label
errors is used anywhere: the ranking is the pipeline's own. Writes the "Audit: label issues, outliers,
near-duplicates" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pipeline import run  # noqa: E402
from results import headline_row, headline_table, machine, today, write_section  # noqa: E402

from tests.helpers import make_workspace  # noqa: E402

SECTION = "Audit: label issues, outliers, near-duplicates"
PICTURES = ROOT / "benchmarks" / "audit"
TOP = 20


def audit(name: str, source: str, path: Path) -> dict[str, Any]:
    """`dvc repro audit` on one dataset in a fresh workspace: its seconds, summary and top label issues."""
    with tempfile.TemporaryDirectory(prefix=f"audit-{name}-") as tmp:
        root = make_workspace(Path(tmp) / "w", {"data": {"source": source, "path": str(path)}})
        seconds, _ = run(root, "dvc", "repro", "audit")
        summary = json.loads((root / "reports/audit/summary.json").read_text())
        with (root / "reports/audit/issues.csv").open() as f:
            labels = [row for row in csv.DictReader(f) if row["issue"] == "label"][:TOP]
        top = np.load(root / "reports/audit/top.npy")
        if top.dtype.kind == "U":
            for row, text in zip(labels, top.tolist(), strict=False):
                row["item"] = text
        else:
            from tasks.report import image_grid

            PICTURES.mkdir(exist_ok=True)
            picture = PICTURES / f"{name}-top{TOP}.png"
            titles = [f"{r['given_label']}→{r['suggested_label']}" for r in labels]
            picture.write_bytes(image_grid(top[: len(labels)], titles))
            for n, row in enumerate(labels, 1):
                row["item"] = f"[{picture.name}](audit/{picture.name}) #{n}"
        return {"repro_seconds": seconds, "summary": summary, "top": labels}


def section(results: dict[str, dict[str, Any]]) -> str:
    """RESULTS.md's section: headline costs, flagged counts per type, the top 20 label issues of each dataset."""
    rows = []
    for name, r in results.items():
        s = r["summary"]
        rows.append(headline_row(f"{name}: audit seconds (CV + predict + cleanlab)", [sum(s["seconds"].values())]))
        rows.append(headline_row(f"{name}: label issues flagged", [s["flagged"]["label"]], digits=0))
    lines = [
        f"Measured {today()} on {machine()}: `python benchmarks/audit.py`. Each dataset in a fresh workspace, "
        "`dvc repro audit` with every param at its default (audit: 3 folds × 3 epochs of train's own model; val and "
        "test scored by the trained model). No published list of known label errors is used: the ranking is the "
        "pipeline's own, for a person to review. Near-duplicates and outliers are found on the trained model's "
        "features (its last hidden layer), so a near-duplicate is a pair the model cannot tell apart, not necessarily "
        "a copy: candidates to look at. The machine's 2 cores were shared with other test runs while this ran.",
        "",
        headline_table(rows),
        "",
    ]
    for name, r in results.items():
        s = r["summary"]
        lines += [
            f"## {name}",
            "",
            f"Items: {s['items']}; `dvc repro audit` (ingest → train → audit) {r['repro_seconds']:.0f} s; the audit "
            f"itself: {s['seconds']} s.",
            "",
            "| issue | " + " | ".join(s["items"]) + " | total |",
            "| --- | " + " | ".join("---" for _ in s["items"]) + " | --- |",
        ]
        for kind, by_split in s["flagged_per_split"].items():
            lines.append(f"| {kind} | " + " | ".join(str(v) for v in by_split.values()) + f" | {s['flagged'][kind]} |")
        lines += ["", f"Top {TOP} label issues:", "", "| # | source id | split | given | suggested | score | item |"]
        lines.append("| --- | --- | --- | --- | --- | --- | --- |")
        for row in r["top"]:
            item = " ".join(str(row.get("item", "")).split()).replace("|", "\\|")[:160]
            lines.append(
                f"| {row['rank']} | `{row['id']}` | {row['split']} | {row['given_label']} | {row['suggested_label']} "
                f"| {float(row['score']):.4f} | {item} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", type=Path, default=ROOT.parent / "shared/data/mnist")
    parser.add_argument("--sms", type=Path, default=ROOT.parent / "shared/data/sms-spam/sms.tsv")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results = {
        "MNIST t10k": audit("mnist", "idx", args.mnist.resolve()),
        "SMS spam": audit("sms", "tsv", args.sms.resolve()),
    }
    (ROOT / "benchmarks" / "audit.json").write_text(json.dumps(results, indent=2) + "\n")
    write_section(SECTION, section(results))
    print(json.dumps({k: v["summary"] for k, v in results.items()}, indent=2))
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
