"""tasks/lib/architecture.py: train.model's function resolved, called and checked; every bad hook is one line that
names it, raised before train opens an MLflow run or fits anything.

Mutations checked (each makes the named tests fail): resolve() without its model_args check (unknown keys pass);
build() without its isinstance/width checks (a non-Keras return or a wrong width reaches Keras); build() without its
try/except (the function's own exception escapes); train.run() with check_model() removed (a bad hook opens a run).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest

import architectures
from tasks import normalize, train
from tasks.lib import architecture, artifacts
from tasks.lib.artifacts import Dataset, Split
from tasks.lib.config import Params, TrainParams, load_params
from tasks.lib.errors import TrainflowError
from tests.helpers import committed_params_file

HOOKS = """
import keras
from keras import layers

def good(inputs, num_classes, *, width=4):
    return layers.Dense(num_classes)(layers.Flatten()(inputs))

def ends_in_softmax(inputs, num_classes):
    return layers.Dense(num_classes, activation="softmax")(layers.Flatten()(inputs))

def as_model(inputs, num_classes, kind):
    assert kind == "images"
    return keras.Sequential([layers.Flatten(), layers.Dense(num_classes)])

def raises(inputs, num_classes):
    raise RuntimeError("width must be even")

def not_keras(inputs, num_classes):
    return "a network"

def text_net(inputs, num_classes, vocabulary_size, kind):
    assert kind == "text"
    x = layers.Embedding(vocabulary_size, 4, name="words")(inputs)
    return layers.Dense(num_classes)(layers.GlobalAveragePooling1D()(x))

def too_narrow(inputs, num_classes):
    return layers.Dense(num_classes - 1)(layers.Flatten()(inputs))
"""

SCALE = {"method": "scale", "scale": 1 / 255, "mean": [0.0], "std": [1.0]}


@pytest.fixture
def user_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A second folder of the architectures package (a user's files, ``architectures.hooks``), gone afterwards."""
    (tmp_path / "hooks.py").write_text(HOOKS)
    monkeypatch.setattr(architectures, "__path__", [*architectures.__path__, str(tmp_path)])
    yield tmp_path
    sys.modules.pop("architectures.hooks", None)


def cfg(params: Params, model: str, **model_args: object) -> TrainParams:
    return params.train.model_copy(update={"model": model, "model_args": model_args})


def built(train_params: TrainParams) -> keras.Model:
    return train.build_classifier((8, 8, 1), 3, train_params, SCALE)


def test_a_function_of_yours_gets_the_head(params: Params, user_folder: Path) -> None:
    for name in ("good", "ends_in_softmax", "as_model"):
        net = built(cfg(params, f"architectures.hooks:{name}"))
        out = keras.ops.convert_to_numpy(net(np.zeros((2, 8, 8, 1), np.uint8)))
        assert out.shape == (2, 3) and out.dtype == np.float32
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
        assert net.layers[-1].name == "probabilities"
    # a last softmax is kept, not applied twice
    assert built(cfg(params, "architectures.hooks:ends_in_softmax")).layers[-1].activation is keras.activations.linear


def test_a_text_model_of_yours_gets_word_ids_and_the_vocabulary_size(params: Params, user_folder: Path) -> None:
    net = train.build_text_classifier(50, 7, 2, cfg(params, "architectures.hooks:text_net"))
    assert net.get_layer("words").input_dim == 50 and net.inputs[0].dtype == "int32"
    out = keras.ops.convert_to_numpy(net(np.array([[2, 3, 0, 0, 0, 0, 0]])))
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_the_builtins_take_the_train_keys_and_model_args_override_them(params: Params) -> None:
    resolved = architecture.resolve(cfg(params, "cnn", dense_units=7), "images")
    assert resolved.name == "architectures.builtin:cnn"
    assert resolved.args == {
        "filters": params.train.filters,
        "dense_units": 7,
        "dropout": params.train.dropout,
        "l2": params.train.l2,
        "batch_norm": params.train.batch_norm,
    }
    assert architecture.resolve(cfg(params, "cnn"), "text").name == "architectures.builtin:rnn"


@pytest.mark.parametrize(
    ("model", "args", "message"),
    [
        ("architectures.nowhere:net", {}, "train.model=architectures.nowhere:net: no module architectures.nowhere"),
        ("architectures.hooks:absent", {}, "architectures/hooks.py has no function absent"),
        (
            "architectures.hooks:raises",
            {},
            "train.model=architectures.hooks:raises: the function raised RuntimeError: width must be even",
        ),
        ("architectures.hooks:not_keras", {}, "returned str, not a Keras model or tensor"),
        ("architectures.hooks:too_narrow", {}, "its output has shape (None, 2); it must be (batch, 3), one per class"),
        (
            "architectures.hooks:good",
            {"depth": 2, "widht": 3},
            "train.model_args: good takes no argument depth, widht (it takes: width)",
        ),
        ("architectures.hooks:good", {"num_classes": 2}, "train.model_args: num_classes is given by the pipeline"),
        ("cnn", {"blocks": 2}, "train.model_args: cnn takes no argument blocks"),
        ("rnn", {}, "train.model=rnn is the text model"),
    ],
)
def test_a_bad_hook_is_one_line(params: Params, user_folder: Path, model: str, args: dict, message: str) -> None:
    with pytest.raises(TrainflowError) as caught:
        built(cfg(params, model, **args))
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("model", ["resnet", "tasks.train:build_classifier", "architectures.resnet", "a b:c"])
def test_train_model_names_a_function_in_the_folder(raw: dict, model: str) -> None:
    from tasks.lib.config import parse_params

    raw["train"]["model"] = model
    with pytest.raises(TrainflowError, match=r"train\.model: not a model: give cnn, mlp \(images\), rnn \(text\)"):
        parse_params(raw)


def test_a_bad_hook_stops_train_before_any_run_or_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, user_folder: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    params = load_params(committed_params_file(), {"train.model": "architectures.hooks:too_narrow"})
    y = np.arange(24) % 2
    images = np.full((24, 8, 8, 1), 9, np.uint8) + y[:, None, None, None].astype(np.uint8)
    data = Dataset({s: Split(images, y) for s in ("train", "val")}, ("a", "b"))
    artifacts.write_dataset(Path(params.paths.augmented), data)
    normalize.run(params)
    with pytest.raises(TrainflowError, match="its output has shape"):
        train.run(params)
    assert not Path("mlflow.db").exists() and not Path(params.paths.checkpoints).exists()


def test_a_custom_layer_model_serves_from_a_fresh_process_without_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worked example's custom layer (architectures/resnet.py) travels with the logged model: `mlflow models
    serve` in an empty folder, without PYTHONPATH, imports it from the model's own copy. Mutation: log_model without
    ``code_paths`` (or load_context without importing ``modules``) fails to load ("Could not locate class")."""
    from tasks.lib import tracking
    from tasks.lib.config import TrackingParams
    from tests.helpers import background_server, free_port, post_json, tool_env

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    settings = TrackingParams(uri=uri, artifacts="mlartifacts", experiment="own-model")
    params = load_params(committed_params_file())
    own = params.train.model_copy(
        update={"model": "architectures.resnet:resnet", "model_args": {"width": 4, "blocks": 1}}
    )
    model = train.build_classifier((8, 8, 1), 3, own, SCALE)
    assert any(type(layer).__name__ == "Residual" for layer in model.layers)
    train.save_model(model, tmp_path / "model.keras")
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1)).astype(np.uint8)
    expected = np.asarray(model.predict_on_batch(images))
    run_id = tracking.start_parent_run(settings, "own-model", {}, {})
    config = {
        "classes": ["a", "b", "c"],
        "max_request_images": 64,
        "kind": "images",
        "modules": ["architectures.resnet"],
    }
    repo_folder = Path(architectures.__file__).parent
    model_uri = tracking.log_model(
        settings, run_id, tmp_path / "model.keras", images.astype(object), config, code_paths=[repo_folder]
    )

    elsewhere = tmp_path / "elsewhere"  # no architectures/ here, and none on the path
    elsewhere.mkdir()
    env = tool_env(MLFLOW_TRACKING_URI=uri)
    env.pop("PYTHONPATH", None)
    port = free_port()
    mlflow_cli = str(Path(sys.executable).parent / "mlflow")
    args = [mlflow_cli, "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1"]
    with background_server(elsewhere, [*args, "-p", str(port)], f"http://127.0.0.1:{port}/ping", env):
        status, body = post_json(f"http://127.0.0.1:{port}/invocations", json_inputs(images))
    assert status == 200, body
    served = np.asarray([row["probabilities"] for row in body["predictions"]])
    np.testing.assert_allclose(served, expected, atol=1e-5)


def json_inputs(images: np.ndarray) -> bytes:
    import json

    return json.dumps({"inputs": images.tolist()}).encode()


def test_the_report_and_card_name_the_function_its_arguments_and_parameter_count(params: Params) -> None:
    """Mutation: architecture() in tasks/report.py without the logged tags (the card shows only the built-in line)."""
    from tasks import report

    own = {
        "train.architecture": "architectures.resnet:resnet",
        "train.architecture_args": '{"blocks": 2, "width": 16}',
        "train.parameters": "9770",
    }
    line = report.architecture(params, params.train, "images", own)
    assert line.startswith("Keras model of architectures.resnet:resnet(blocks=2, width=16), 9,770 parameters")
    builtin = {**own, "train.architecture": "architectures.builtin:cnn", "train.parameters": "28426"}
    assert "Keras cnn: filters [32, 64]" in report.architecture(params, params.train, "images", builtin)
    assert report.own_architecture(builtin).endswith("28,426 parameters")
    assert report.own_architecture({}) == ""  # a run logged before train.model was a function


def test_an_edit_anywhere_in_the_folder_changes_the_code_hash(params: Params, user_folder: Path) -> None:
    """train's checkpoint key takes it: a resumed training never continues another version's checkpoint. Mutation:
    source_hash over the function's own file only (the helper's edit goes unseen)."""
    resolved = architecture.resolve(cfg(params, "architectures.hooks:good"), "images")
    before = resolved.source_hash()
    (user_folder / "helpers.py").write_text("WIDTH = 3\n")  # a file the function might import
    assert resolved.source_hash() != before
