"""Stages run out of order, by hand: each says in one line which input is missing and the command that makes it.

A fresh committed workspace, where nothing ran: ingest needs nothing; every other stage's input is another stage's
output, not there yet. The stages fail before they import anything heavy, so these runs take a second each.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import STAGES, make_workspace, sh

FIRST_MISSING = {  # what each stage names: the input made furthest down the DAG, so its command makes them all
    "clean": ("data/raw", "ingest"),
    "augment": ("data/clean", "clean"),
    "normalize": ("data/augmented", "augment"),
    "train": ("data/normalized", "normalize"),
    "evaluate": ("models/model.keras", "train"),
    "deploy": ("reports/evaluate/predictions.csv", "evaluate"),
    "audit": ("models/model.keras", "train"),
    "report": ("reports/audit", "audit"),
}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed files only: no data/raw, no model, no predictions (git keeps only the small reports)."""
    return make_workspace(tmp_path_factory.mktemp("fresh"), {})


@pytest.mark.parametrize("stage", [stage for stage in STAGES if stage != "ingest"])  # ingest needs nothing
def test_a_stage_run_before_its_input_exists_names_it_and_the_command_in_one_line(fresh: Path, stage: str) -> None:
    path, made_by = FIRST_MISSING[stage]
    done = sh(fresh, "python", "-m", f"tasks.{stage}", check=False)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.splitlines() == [f"error: {stage}: {path}: not found; run `dvc repro {made_by}` first"]
    assert not (fresh / path).exists()
