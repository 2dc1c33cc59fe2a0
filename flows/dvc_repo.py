"""The one adapter that knows DVC: the stage graph and the hashes DVC keys stages on (its Python internals),
`dvc commit` (its command line) and params.yaml edits as `dvc exp run -S` makes them.

DVC documents its command line, not its ``Repo`` object; each internal call here is checked against the command line
by tests/flows/test_dvc_repo.py, so an upgrade that changes one fails there first.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tasks.lib.errors import TrainflowError


@contextmanager
def _repo(root: Path) -> Iterator[Any]:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        yield repo


def stage_graph(root: Path = Path()) -> dict[str, list[str]]:
    """Every stage of dvc.yaml, in its order, with the stages whose outputs it reads: the edges of `dvc dag`."""
    with _repo(root) as repo:
        graph = repo.index.graph  # networkx: an edge runs from a stage to a stage it depends on
        order = [stage.name for stage in repo.index.stages]
        upstream = {name: set() for name in order}
        for stage, dependency in graph.edges():
            upstream[stage.name].add(dependency.name)
        return {name: [u for u in order if u in upstream[name]] for name in order}


def stage_hashes(root: Path, stage: str, which: str) -> dict[str, Any]:
    """DVC's own hashes of a stage's ``deps`` (code, data, params values) or ``outs``, keyed by path (None: missing)."""
    with _repo(root) as repo:
        (spec,) = [s for s in repo.index.stages if s.name == stage]
        result: dict[str, Any] = {}
        for item in spec.deps if which == "deps" else spec.outs:
            if not item.exists:  # an output not written yet, or a data path that is missing (ingest says so)
                result[item.def_path] = None
                continue
            info = item.get_hash()
            result[item.def_path] = info.value if info else None
        return result


def commit(root: Path, stages: Sequence[str] = ()) -> None:
    """`dvc commit --force [stage ...]` (DVC's command line, in ``root``): the workspace's outputs of ``stages``
    (default: all) go into dvc.lock and the cache.

    Raises:
        TrainflowError: with DVC's own last error line.
    """
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "commit", "--force", *stages], cwd=root, capture_output=True, text=True
    )
    if done.returncode != 0:
        last = ((done.stderr + done.stdout).strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise TrainflowError(f"dvc commit in {root} failed: {last}")


def write_params(path: Path, overrides: Mapping[str, Any]) -> None:
    """Set dotted keys in params.yaml as `dvc exp run -S` does: ruamel.yaml's round trip, comments kept."""
    from ruamel.yaml import YAML

    yaml = YAML()  # round-trip mode, DVC's own YAML library
    data = yaml.load(path.read_text())
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[leaf] = value
    with path.open("w") as f:
        yaml.dump(data, f)


def repro(root: Path, stage: str) -> list[str]:
    """`dvc repro <stage>` in ``root``: the stage and those before it, each only if changed. Returns the stages DVC
    says it ran.

    Raises:
        TrainflowError: with DVC's own last error line.
    """
    done = subprocess.run([sys.executable, "-m", "dvc", "repro", stage], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        last = ((done.stderr + done.stdout).strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise TrainflowError(f"dvc repro {stage} in {root} failed: {last}")
    return [line.split("'")[1] for line in done.stdout.splitlines() if line.startswith("Running stage '")]
