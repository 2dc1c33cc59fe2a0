"""`mlflow models serve` of the champion: bad requests get a 4xx with a message, the server keeps answering,
and a bounded load from a second process sees no errors."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tasks.lib import artifacts
from tests.conftest import copy_run
from tests.helpers import REPO, mlflow_serve, post_json, sh
from tests.tasks.lib.test_serving_model import private_names

pytestmark = pytest.mark.slow

NAME = "trainflow-classifier"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_run: Path) -> Iterator[tuple[str, Path]]:
    """The session's tiny run, its champion served on a free loopback port; yields (invocations URL, workspace)."""
    root = copy_run(tiny_run, tmp_path_factory.mktemp("serving") / "workspace")
    uri = f"sqlite:///{root}/mlflow.db"
    with mlflow_serve(root, f"models:/{NAME}@champion", uri) as url:
        yield url, root


def good_body(root: Path) -> bytes:
    test = artifacts.read_dataset(root / "data/clean").splits["test"]
    return json.dumps({"inputs": test.x[:1].tolist()}).encode()


def image(pixel: object) -> bytes:
    """A request of one 8x8x1 image whose every pixel is ``pixel``, as JSON sends it."""
    return json.dumps({"inputs": [[[[pixel]] * 8] * 8]}).encode()


BAD = {
    "malformed_json": (b'{"inputs": [[[', "valid JSON"),
    "not_a_dict": (b"[1, 2, 3]", "JSON dictionary"),
    "no_inputs_field": (b'{"pixels": [1]}', "input fields"),
    "wrong_shape": (b'{"inputs": [[1, 2, 3]]}', "does not match expected shape"),
    "strings": (image("a"), "pixel 'a' is not a whole number 0-255"),
    "over_255": (image(300), "pixel 300 is outside 0-255"),
    "negative": (image(-1), "pixel -1 is outside 0-255"),
    "nan": (image(float("nan")), "pixel nan is not a whole number"),
    "wrong_shape_nan": (b'{"inputs": [[[[NaN]]]]}', "does not match expected shape"),
    # refused, never cast to uint8 (0.9 and 1.5 used to become 0 and 1, true 1)
    "fraction": (image(0.9), "pixel 0.9 is not a whole number 0-255"),
    "one_and_a_half": (image(1.5), "pixel 1.5 is not a whole number 0-255"),
    "true": (image(True), "pixel True is not a whole number 0-255"),
    "false": (image(False), "pixel False is not a whole number 0-255"),
    "null": (image(None), "pixel None is not a whole number 0-255"),
    "one_fraction_among_integers": (
        json.dumps({"inputs": [[[[0]] * 8] * 7 + [[[0]] * 7 + [[254.5]]]]}).encode(),
        "pixel 254.5 is not a whole number",
    ),
    "list_for_a_pixel": (image([1]), "does not match expected shape"),
    # 20 MB of zeros in the wrong shape: parsed in full, then refused by the signature.
    "oversized_20mb": (b'{"inputs": [' + b",".join([b"0"] * 10_000_000) + b"]}", "does not match expected shape"),
    # well-formed but more images than deploy.max_request_images (4096) allows
    "too_many_images": (json.dumps({"inputs": np.zeros((4097, 8, 8, 1), int).tolist()}).encode(), "at most 4096"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_bad_request_gets_a_4xx_with_a_message_and_the_server_keeps_answering(
    case: str, served: tuple[str, Path]
) -> None:
    url, root = served
    body, expected = BAD[case]
    status, answer = post_json(url, body)
    assert 400 <= status < 500, (status, answer)
    assert expected in answer["message"], answer["message"][:500]
    status, answer = post_json(url, good_body(root))
    assert status == 200 and len(answer["predictions"]) == 1


def test_json_nested_100000_deep_is_an_error_and_the_server_keeps_answering(served: tuple[str, Path]) -> None:
    """Python's JSON parser gives up on it; MLflow's server answers 500 (mlflow/mlflow#4897: MLflow's to fix, as
    the served model patches nothing), and the next request is answered as usual."""
    url, root = served
    before = post_json(url, good_body(root))
    deep = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    request = urllib.request.Request(url, data=deep, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=60)
    assert 400 <= error.value.code < 600
    assert before[0] == 200 and len(before[1]["predictions"]) == 1
    assert post_json(url, good_body(root)) == before  # the same answer as before: the server is unharmed


def test_the_registered_model_ships_no_private_name_and_no_pickle(served: tuple[str, Path]) -> None:
    """What a registered model holds (MLmodel, the code MLflow copied) names no private API; nothing is pickled."""
    _, root = served
    local = root / "downloaded"
    uri = f"sqlite:///{root}/mlflow.db"
    sh(
        root,
        "mlflow",
        "artifacts",
        "download",
        "-u",
        f"models:/{NAME}@champion",
        "-d",
        str(local),
        MLFLOW_TRACKING_URI=uri,
    )
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    code = [local / f for f in files if f.endswith(".py")]
    assert code, files  # the model's code travels with it (models from code)
    for path in code:
        assert private_names(path.read_text(), str(path)) == [], path
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))], files
    mlmodel = (local / "MLmodel").read_text()
    assert [p.name for p in code].count("serving_model.py") == 1, files
    assert "_decode_json_input" not in mlmodel and "scoring_server" not in mlmodel


def test_whole_number_floats_are_pixels_and_fractions_are_refused(served: tuple[str, Path]) -> None:
    """3.0 is the pixel 3 (a client that sends a float array); 2.5 is a client's bug: a 400, not the pixel 2."""
    url, _ = served
    threes = np.full((1, 8, 8, 1), 3)
    status, as_floats = post_json(url, json.dumps({"inputs": threes.astype(float).tolist()}).encode())
    assert status == 200 and as_floats == post_json(url, json.dumps({"inputs": threes.tolist()}).encode())[1]
    status, answer = post_json(url, json.dumps({"inputs": (threes - 0.5).tolist()}).encode())
    assert status == 400 and "pixel 2.5 is not a whole number 0-255" in answer["message"], answer


def test_bounded_load_from_a_second_process_has_no_errors(served: tuple[str, Path]) -> None:
    url, _ = served
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks/serving_load.py"),
            *("--url", url, "--shape", "8", "8", "1", "--requests", "100", "--threads", "1", "--repeats", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert stats["requests"] == 100 and stats["errors"] == 0
    assert 0 < stats["p50_ms"] <= stats["p99_ms"]


@pytest.mark.xfail(
    strict=True,
    reason="MLflow's scoring server prefixes every error raised in predict with \"Failed to predict data '<the "
    "request>'. \\nError:\" (mlflow/pyfunc/scoring_server/__init__.py, invocations()), and pyfunc's schema check "
    "adds the request again; MLFLOW_DISABLE_SCHEMA_DETAILS (mlflow#16537) drops only the second, with the shapes",
)
def test_a_400_names_the_shapes_in_one_line_and_never_echoes_the_request(served: tuple[str, Path]) -> None:
    """28x28 images sent to the 8x8 champion (issue 28's journey): one short line naming both shapes, no pixel.

    Strict xfail: it records MLflow's echo (1,745 characters over 60 lines for this request, with MLflow 3.17) and
    fails once MLflow stops echoing, so the marker is removed then.
    """
    url, _ = served
    status, answer = post_json(url, json.dumps({"inputs": np.full((2, 28, 28, 1), 137).tolist()}).encode())
    message = answer["message"]
    assert status == 400, answer
    assert len(message) < 300 and "\n" not in message, message[:2000]
    assert "(2, 28, 28, 1)" in message and "(-1, 8, 8, 1)" in message, message
    assert "137" not in message, message
