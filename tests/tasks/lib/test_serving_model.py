"""tasks/lib/serving_model.py ships inside every registered model: it must use public names only, so that a model
keeps loading under later releases of MLflow and the libraries (the served model runs in test_serving.py)."""

from __future__ import annotations

import ast

import numpy as np
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


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        ([0.9], "pixel 0.9 is not a whole number 0-255"),
        ([1.5], "pixel 1.5 is not a whole number 0-255"),
        ([0, True], "pixel True is not a whole number 0-255"),
        ([False], "pixel False is not a whole number 0-255"),
        ([float("nan")], "pixel nan is not a whole number 0-255"),
        ([float("inf")], "pixel inf is not a whole number 0-255"),
        (["7"], "pixel '7' is not a whole number 0-255"),
        ([None], "pixel None is not a whole number 0-255"),
        ([256], "pixel 256 is outside 0-255"),
        ([3, -1], "pixel -1 is outside 0-255"),
        ([10**30], "pixel 1000000000000000000000000000000 is outside 0-255"),
    ],
)
def test_pixels_that_are_not_whole_numbers_0_to_255_are_refused_not_cast(pixels: list, message: str) -> None:
    """The served image model gets the JSON values as sent (an object signature): it refuses, MLflow's cast to uint8
    would have turned 0.9 into 0 and true into 1."""
    from tasks.lib.serving_model import _pixels

    with pytest.raises(MlflowException) as refused:
        _pixels(np.array(pixels, dtype=object))
    assert refused.value.get_http_status_code() == 400 and refused.value.message.startswith(message)


def test_whole_numbers_are_pixels_whatever_their_json_type() -> None:
    from tasks.lib.serving_model import _pixels

    pixels = _pixels(np.array([[0, 255.0], [3, 7]], dtype=object))
    assert pixels.dtype == np.uint8 and pixels.tolist() == [[0, 255], [3, 7]]
    assert _pixels(np.array([[1, 2]], dtype=np.int64)).dtype == np.uint8  # a Python caller's integer array


def test_a_text_over_the_limit_is_refused_before_it_is_vectorised() -> None:
    from tasks.lib.serving_model import _texts

    assert _texts(["ok", "a" * 10], max_chars=10).tolist() == ["ok", "a" * 10]
    with pytest.raises(MlflowException) as refused:
        _texts(["ok", "a" * 11], max_chars=10)
    assert refused.value.message == "a text of 11 characters; at most 10 (clean.max_chars)"
