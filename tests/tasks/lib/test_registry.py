"""Only deploy touches the registry (DESIGN principle 1): every other stage is a pure function of its DVC deps; the
alias move is a compare-and-set."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from tasks.lib import registry
from tasks.lib.config import load_params
from tests.conftest import copy_run
from tests.helpers import REPO

REGISTRY = "tasks.lib.registry"
# deploy is the stage that reads the champion, registers and moves aliases; predict is no stage of the DAG: batch
# prediction with models:/<name>@champion, as a user would serve it, run by hand after the pipeline
ALLOWED = {"tasks/deploy.py", "tasks/lib/registry.py", "tasks/predict.py"}
# MLflow's registry API, and model URIs, outside the registry module
REGISTRY_CALLS = re.compile(
    r"get_model_version_by_alias|set_registered_model_alias|search_model_versions|get_registered_model|"
    r"register_model|create_model_version|set_model_version_tag|update_model_version|get_model_version\b|models:/"
)


def modules() -> list[Path]:
    return sorted([*(REPO / "tasks").glob("*.py"), *(REPO / "tasks/lib").glob("*.py")])


def imports_registry(source: str) -> bool:
    """Whether a module's code imports tasks.lib.registry, in any spelling (also inside functions)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import) and any(a.name == REGISTRY for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (
            node.module == REGISTRY or (node.module == "tasks.lib" and any(a.name == "registry" for a in node.names))
        ):
            return True
    return False


def test_the_import_check_sees_every_spelling() -> None:
    spellings = (
        "from tasks.lib import artifacts, registry",
        "import tasks.lib.registry",
        "from tasks.lib.registry import champion_version",
        "def f():\n    from tasks.lib import registry\n",
    )
    assert all(imports_registry(s) for s in spellings)
    assert not imports_registry("from tasks.lib import tracking\nregistry = 1")


def test_only_deploy_imports_the_registry_module() -> None:
    found = {str(p.relative_to(REPO)) for p in modules() if imports_registry(p.read_text())}
    assert found - ALLOWED == set(), f"{sorted(found - ALLOWED)} import {REGISTRY}: only deploy reads the registry"
    assert "tasks/deploy.py" in found  # the check sees the one that does


def test_no_other_module_calls_the_registry_api() -> None:
    calls = {
        str(p.relative_to(REPO)): sorted(set(REGISTRY_CALLS.findall(p.read_text())))
        for p in modules()
        if str(p.relative_to(REPO)) not in ALLOWED
    }
    assert {path: found for path, found in calls.items() if found} == {}
    assert REGISTRY_CALLS.search((REPO / "tasks/lib/registry.py").read_text())  # the pattern matches real calls


@pytest.mark.slow
def test_a_champion_moved_after_the_gate_is_never_overwritten(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The alias move is a compare-and-set: the gate compared with no champion, then another run made v1 champion.
    Catches dropping the check in ``promote`` (the new version would take the alias from v1)."""
    from mlflow import MlflowClient

    root = copy_run(tiny_run, tmp_path / "workspace")
    monkeypatch.chdir(root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(name, uri)  # this store, and the environment restored afterwards
    settings = load_params(root / "params.yaml").tracking
    store = MlflowClient(uri, registry_uri=uri)
    name = json.loads((root / "reports/deploy.json").read_text())["registry"]["model_name"]
    champion = store.get_model_version_by_alias(name, registry.CHAMPION)
    version = registry.register_version(settings, name, champion.source, tags={})
    assert registry.promote(settings, name, version, scored_champion=None) == int(champion.version)  # found v1
    assert sorted(int(v.version) for v in store.search_model_versions(f"name='{name}'")) == [1, 2]
    assert store.get_model_version_by_alias(name, registry.CHAMPION).version == 1  # nothing moved
    assert registry.promote(settings, name, version, scored_champion=1) is None  # compared with v1
    assert store.get_model_version_by_alias(name, registry.CHAMPION).version == 2
    assert store.get_model_version_by_alias(name, registry.PREVIOUS).version == 1
