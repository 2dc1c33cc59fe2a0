"""Test workspaces and the default params come from the committed tree, never from the working copy's edits."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.helpers import committed_params, committed_params_file, make_workspace, sh


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
