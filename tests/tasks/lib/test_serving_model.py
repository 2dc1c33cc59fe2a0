"""tasks/lib/serving_model.py ships inside every registered model: it must use public names only, so that a model
keeps loading under later releases of MLflow and the libraries (the served model runs in test_serving.py)."""

from __future__ import annotations

import ast

import pytest
from mlflow.exceptions import MlflowException

from tests.helpers import REPO

SERVING_MODEL = REPO / "tasks" / "lib" / "serving_model.py"


def private_names(source: str, filename: str = "<source>") -> list[str]:
    """Every private name (``_x``, not ``__dunder__``) the code takes from another module: imported (``from m import
    _x``, ``import m._x``) or reached as an attribute of an imported module (``m._x``, ``m.sub._x``)."""

    def private(name: str) -> bool:
        return any(part.startswith("_") and not part.endswith("__") for part in name.split("."))

    tree = ast.parse(source, filename=filename)
    modules: set[str] = set()  # local names bound to imported modules (or objects of them)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                modules.add(alias.asname or alias.name.split(".")[0])
                if private(alias.name):
                    found.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                modules.add(alias.asname or alias.name)
                if node.level == 0 and private(f"{node.module}.{alias.name}"):
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in modules:
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_served_model_uses_no_private_name_of_mlflow_or_any_library() -> None:
    assert private_names(SERVING_MODEL.read_text(), str(SERVING_MODEL)) == []


@pytest.mark.parametrize(
    "code",
    [
        "from mlflow.pyfunc import scoring_server\nscoring_server._decode_json_input = None\n",
        "import mlflow.pyfunc.scoring_server\nx = mlflow.pyfunc.scoring_server._decode_json_input\n",
        "from mlflow.pyfunc.scoring_server import _decode_json_input\n",
        "import keras._tf_keras\n",
        "def f():\n    from mlflow.pyfunc import _x as y\n",
    ],
)
def test_the_check_finds_a_private_name(code: str) -> None:
    assert private_names(code) != []


def test_a_bad_request_is_a_400_through_mlflows_public_exception() -> None:
    from tasks.lib.serving_model import _bad_request

    error = _bad_request("at most 4 items")
    assert isinstance(error, MlflowException)
    assert error.get_http_status_code() == 400 and error.message == "at most 4 items"
