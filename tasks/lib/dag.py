"""What dvc.yaml says about the stages' files: which stage writes a path, and which of a stage's inputs are missing.

A stage run by hand before the stage that makes its input (``python -m tasks.evaluate`` with no model) fails in one
line naming the missing file and the command that makes it. dvc.yaml is read from the working folder (where DVC runs
the stages), its ``${key}`` values filled in from the params as DVC fills them from params.yaml.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tasks.lib.errors import TrainflowError

DVC_YAML = Path("dvc.yaml")
_VAR = re.compile(r"\$\{\s*([^}\s]+)\s*\}")
UNKNOWN = "run the stage that writes it first"  # where dvc.yaml names no stage that writes the path


def _fill(text: str, params: Mapping[str, Any]) -> str | None:
    """``text`` with every ``${a.b}`` replaced by the params' value at a.b; None if one is not a params key."""

    def value(match: re.Match[str]) -> str:
        found: Any = params
        for key in match.group(1).split("."):
            if not isinstance(found, Mapping) or key not in found:
                raise KeyError(match.group(1))
            found = found[key]
        return str(found)

    try:
        return _VAR.sub(value, text)
    except KeyError:
        return None


def _paths(entries: Any, params: Mapping[str, Any]) -> list[Path]:
    """The paths of a dvc.yaml list (``- path`` or ``- path: {options}``), their ``${…}`` filled in."""
    names = [next(iter(e)) if isinstance(e, Mapping) else e for e in entries or []]
    filled = [_fill(str(name), params) for name in names]
    return [Path(name) for name in filled if name]


def stages(params: Mapping[str, Any], dvc_yaml: Path = DVC_YAML) -> dict[str, dict[str, list[Path]]]:
    """Each stage's ``deps`` and ``outs`` (outs, metrics and plots) in dvc.yaml's order; empty without a dvc.yaml.

    Args:
        params: the params as a plain mapping (``Params.model_dump()`` or params.yaml read).
        dvc_yaml: the pipeline file.
    """
    try:
        content = yaml.safe_load(Path(dvc_yaml).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    found = {}
    for name, stage in ((content or {}).get("stages") or {}).items():
        outs = [p for key in ("outs", "metrics", "plots") for p in _paths(stage.get(key), params)]
        found[str(name)] = {"deps": _paths(stage.get("deps"), params), "outs": outs}
    return found


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def producer(path: Path, graph: Mapping[str, Mapping[str, list[Path]]]) -> str | None:
    """The stage of ``graph`` (:func:`stages`) whose output is ``path`` or holds it, or None (a source file, or a
    path dvc.yaml does not name)."""
    here = Path.cwd().resolve()
    target = Path(path).resolve()
    for name, stage in graph.items():
        if any(_within(target, (here / out).resolve()) for out in stage["outs"]):
            return name
    return None


def make_it(stage: str | None) -> str:
    """What to run for the output of ``stage``: ``dvc repro`` runs it after every stage it needs."""
    return UNKNOWN if stage is None else f"run `dvc repro {stage}` first"


def hint(path: Path, params: Mapping[str, Any] | None = None) -> str:
    """How to make the missing file ``path``: the command of the stage that writes it (params.yaml read if not
    given), else the general advice."""
    if params is None:
        from tasks.lib.config import DEFAULT_PARAMS, read_params_file

        try:
            params = read_params_file(DEFAULT_PARAMS)
        except TrainflowError:
            return UNKNOWN
    return make_it(producer(path, stages(params)))


def missing_input(stage: str, params: Mapping[str, Any], dvc_yaml: Path = DVC_YAML) -> str | None:
    """The one-line problem of running ``stage`` now, or None: an input another stage writes is not there.

    Of several missing inputs it names the one written furthest down the DAG (dvc.yaml lists the stages in order),
    so the command it gives makes them all.
    """
    graph = stages(params, dvc_yaml)
    if stage not in graph:
        return None
    missing: list[tuple[int, Path, str]] = []
    order = list(graph)
    for dep in graph[stage]["deps"]:
        # a dep that is another stage's output (or inside one), or a folder holding several stages' outputs
        wanted = [(dep, producer(dep, graph))]
        wanted += [(out, name) for name, s in graph.items() for out in s["outs"] if dep in out.parents]
        for path, made_by in wanted:
            if made_by is not None and made_by != stage and not path.exists():
                missing.append((order.index(made_by), path, made_by))
    if not missing:
        return None
    _, path, made_by = max(missing, key=lambda m: m[0])
    return f"{path}: not found; {make_it(made_by)}"
