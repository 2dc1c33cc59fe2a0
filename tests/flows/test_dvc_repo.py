"""flows/dvc_repo.py, the one adapter on DVC's Python internals, checked against DVC's command line: an upgrade that
changes an internal fails here, by name."""

from __future__ import annotations

from pathlib import Path

import yaml

from flows import dvc_repo
from tests.helpers import REPO, STAGES, sh


def test_the_stage_graph_is_dvc_dag() -> None:
    dot = sh(REPO, "dvc", "dag", "--dot").stdout
    edges = {(a, b) for a in STAGES for b in STAGES if f'"{a}" -> "{b}"' in dot}
    assert ("ingest", "clean") in edges  # the parse found edges
    graph = dvc_repo.stage_graph(REPO)
    assert list(graph) == list(STAGES)
    assert {(upstream, stage) for stage, ups in graph.items() for upstream in ups} == edges


def tiny_repo(root: Path) -> Path:
    """A git + DVC repo with one stage: copy a.txt to b.txt, with param x."""
    sh(root, "git", "init", "-q")
    sh(root, "dvc", "init", "-q")
    (root / "a.txt").write_text("one\n")
    (root / "params.yaml").write_text("# a comment that must survive\nstage:\n  x: 1  # and this one\n")
    stage = {"cmd": "cp a.txt b.txt", "deps": ["a.txt"], "params": ["stage.x"], "outs": ["b.txt"]}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"copy": stage}}))
    sh(root, "dvc", "repro", "-q")
    return root


def test_hashes_are_those_dvc_records_and_follow_changes(tmp_path: Path) -> None:
    root = tiny_repo(tmp_path)
    (locked,) = yaml.safe_load((root / "dvc.lock").read_text())["stages"].values()
    deps = dvc_repo.stage_hashes(root, "copy", "deps")
    assert deps["a.txt"] == next(d["md5"] for d in locked["deps"] if d["path"] == "a.txt")
    assert dvc_repo.stage_hashes(root, "copy", "outs") == {"b.txt": locked["outs"][0]["md5"]}
    (root / "a.txt").write_text("two\n")
    assert dvc_repo.stage_hashes(root, "copy", "deps")["a.txt"] != deps["a.txt"]
    (root / "b.txt").unlink()
    assert dvc_repo.stage_hashes(root, "copy", "outs") == {"b.txt": None}


def test_commit_records_the_workspace_as_dvc_commit_does(tmp_path: Path) -> None:
    root = tiny_repo(tmp_path)
    (root / "a.txt").write_text("two\n")
    (root / "b.txt").write_text("two\n")  # what the stage would write: a driver other than dvc repro ran it
    assert "changed" in sh(root, "dvc", "status").stdout
    dvc_repo.commit(root)
    assert "up to date" in sh(root, "dvc", "status").stdout


def test_write_params_sets_keys_and_keeps_comments(tmp_path: Path) -> None:
    root = tiny_repo(tmp_path)
    dvc_repo.write_params(root / "params.yaml", {"stage.x": 2})
    text = (root / "params.yaml").read_text()
    assert "# a comment that must survive" in text and "# and this one" in text
    assert yaml.safe_load(text) == {"stage": {"x": 2}}
    assert "copy" in sh(root, "dvc", "status").stdout  # DVC sees the new value: the stage is out of date
