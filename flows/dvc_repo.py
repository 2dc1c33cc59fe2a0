"""The one adapter that knows DVC: the stage graph (its Python internals), stages run through `dvc repro` (its
command line) and params.yaml edits as `dvc exp run -S` makes them.

DVC documents its command line, not its ``Repo`` object; the internal call here is checked against `dvc dag` by
tests/flows/test_dvc_repo.py, so an upgrade that changes it fails there first.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tasks.lib.errors import EXIT_TRANSIENT, TrainflowError, TransientError
from tasks.lib.lifetime import dies_with_this_process

# DVC's own words (dvc/repo/reproduce.py, dvc/stage/run.py): a stage it runs, and the exit status of a failed command
_RUNNING = re.compile(r"^Running stage '([^']+)'")
_EXITED = re.compile(r"failed to run: .*, exited with (-?\d+)")


def stage_graph(root: Path = Path()) -> dict[str, list[str]]:
    """Every stage of dvc.yaml, in its order, with the stages whose outputs it reads: the edges of `dvc dag`."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # networkx: an edge runs from a stage to a stage it depends on
        order = [stage.name for stage in repo.index.stages]
        upstream: dict[str, set[str]] = {name: set() for name in order}
        for stage, dependency in graph.edges():
            upstream[stage.name].add(dependency.name)
        return {name: [u for u in order if u in upstream[name]] for name in order}


def repro(
    root: Path,
    target: str,
    *,
    single_item: bool = False,
    line: Callable[[str], Any] = print,
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """`dvc repro [--single-item] <target>` in ``root``: DVC runs a stage only if its deps, params or outs changed.

    Args:
        root: the DVC repo.
        target: a stage of dvc.yaml.
        single_item: that stage alone (the flow's tasks), not the stages before it too.
        line: called with every line DVC and the stages print (the flow forwards them to its run log).
        env: the environment of the command (default: this process's).

    Returns:
        The stages DVC ran, in order (none: everything was up to date).

    Raises:
        TransientError: a stage exited with EXIT_TRANSIENT (a retry may pass).
        TrainflowError: any other failure, with the stage's own ``error:`` line (else DVC's last line).
    """
    command = [sys.executable, "-m", "dvc", "repro", *(["--single-item"] if single_item else []), target]
    ran, lines = [], []
    with subprocess.Popen(
        command,
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        preexec_fn=dies_with_this_process(),  # a killed flow takes `dvc repro` down, and DVC its stage
    ) as process:
        assert process.stdout is not None
        for text in process.stdout:
            text = text.rstrip("\n")
            lines.append(text)
            if m := _RUNNING.match(text):
                ran.append(m.group(1))
            line(text)
    if process.returncode == 0:
        return ran
    own = [t for t in lines if t.startswith("error: ")]
    message = own[-1].removeprefix("error: ") if own else next((t for t in reversed(lines) if t.strip()), "")
    status = next((int(m.group(1)) for t in lines if (m := _EXITED.search(t))), None)
    if status == EXIT_TRANSIENT:
        raise TransientError(message)
    raise TrainflowError(message or f"{' '.join(command[2:])} exited with {process.returncode}")


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


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["train.epochs=3"]`` → ``{"train.epochs": 3}`` (values parsed as YAML, like `dvc exp run -S`)."""
    import yaml

    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise TrainflowError(f"--set {pair}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    return overrides
