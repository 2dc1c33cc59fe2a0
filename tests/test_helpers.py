"""Test workspaces and the default params come from the committed tree, never from the working copy's edits; a test
that lacks what it needs skips locally and fails under CI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helpers import committed_params, committed_params_file, make_workspace, needs, sh


def test_workspaces_and_default_params_ignore_uncommitted_edits(tmp_path: Path) -> None:
    clone = make_workspace(tmp_path / "clone", {})  # a repo whose HEAD holds this repo's files
    committed = yaml.safe_load((clone / "params.yaml").read_text())
    edited = yaml.safe_load((clone / "params.yaml").read_text())
    edited["data"]["path"], edited["train"]["epochs"] = "elsewhere/data.tsv", committed["train"]["epochs"] + 7
    (clone / "params.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))  # as `dvc exp run -S` leaves it
    (clone / "untracked.py").write_text("x = 1\n")

    workspace = make_workspace(tmp_path / "workspace", {"augment": {"copies": 0}}, repo=clone)
    seen = yaml.safe_load((workspace / "params.yaml").read_text())
    assert (seen["data"]["path"], seen["train"]["epochs"]) == (committed["data"]["path"], committed["train"]["epochs"])
    assert seen["augment"]["copies"] == 0  # the test's own overrides still apply
    assert not (workspace / "untracked.py").exists()
    assert sh(workspace, "git", "status", "--porcelain").stdout == ""

    params = committed_params(clone)
    assert (params.data.path, params.train.epochs) == (committed["data"]["path"], committed["train"]["epochs"])
    assert committed_params_file(clone).read_text() == sh(clone, "git", "show", "HEAD:params.yaml").stdout


def test_a_missing_requirement_skips_locally_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation caught: `needs` skipping under CI=true too (CI would never check the report in Chromium)."""
    needs(True, "nothing")  # present: the test goes on
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true and this test needs Chromium"):
        needs(False, "Chromium")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="needs Chromium"):
        needs(False, "Chromium")
