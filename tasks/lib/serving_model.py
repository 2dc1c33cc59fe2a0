"""The served model (MLflow "models from code"): raw uint8 pixels or raw strings → predicted label, class name,
probabilities.

MLflow copies this file into every logged model, so it must import nothing from this project: serving needs only
Keras, NumPy, pandas and MLflow. A registered model outlives the MLflow release it was logged with, so this file uses
public APIs only (tests/tasks/lib/test_serving_model.py checks): bad requests are refused in ``predict`` with
MLflow's public ``MlflowException(..., error_code=INVALID_PARAMETER_VALUE)``, which the scoring server answers with
a 400; nothing here patches the server.

Images are logged with an object signature: MLflow's scoring server then hands ``predict`` the JSON values as sent
(with a uint8 signature it casts them first, so 0.9 and ``true`` would arrive as 0 and 1), and ``_pixels`` accepts
whole numbers 0-255 only. The server parses the whole body before ``predict`` runs: the checks here bound the work
after parsing (the model's forward pass, the text vectoriser), not the parsing itself.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

CHUNK = 256  # items per forward pass: bounds the activations' memory for large requests


def _bad_request(message: str) -> Exception:
    """MLflow's public error for bad input: the scoring server answers it with a 400 and this message."""
    from mlflow.exceptions import MlflowException

    return MlflowException.invalid_parameter_value(message)


def _shown(value: Any) -> str:
    """A value for a one-line message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _whole(value: Any) -> bool:
    """A pixel as JSON sends it: an int, or a float with no fraction (3.0); never a bool, None or a string."""
    return type(value) is int or (type(value) is float and value.is_integer())


def _pixels(values: np.ndarray) -> np.ndarray:
    """``values`` as uint8 pixels: whole numbers 0-255; a 400 for anything else.

    Booleans, fractions, NaN, strings and nested lists are refused, never cast: a client that sends them has a bug.
    """
    if values.dtype.kind in "iu":  # a NumPy integer array from a Python caller
        flat = [int(values.min(initial=0)), int(values.max(initial=0))]
    else:
        flat = values.ravel().tolist()  # the values as JSON sent them: bool is not int here, 0.9 is still 0.9
        kinds = set(map(type, flat))
        if kinds - {int}:
            wrong = [v for v in flat if not _whole(v)]
            if wrong:
                raise _bad_request(
                    f"pixel {_shown(wrong[0])} is not a whole number 0-255 (no fractions, booleans or strings)"
                )
    low, high = min(flat, default=0), max(flat, default=0)
    if low < 0 or high > 255:
        raise _bad_request(f"pixel {_shown(low if low < 0 else high)} is outside 0-255")
    return values.astype(np.uint8)


def _texts(model_input: Any, max_chars: int | None) -> np.ndarray:
    """``model_input`` as a 1-D object array of str, each at most ``max_chars`` long; a 400 for anything else."""
    texts = np.asarray(model_input.iloc[:, 0] if isinstance(model_input, pd.DataFrame) else model_input)
    if texts.ndim != 1 or not all(isinstance(t, str) for t in texts.tolist()):
        raise _bad_request('expected a list of strings, e.g. {"inputs": ["free entry to win ..."]}')
    longest = max(map(len, texts.tolist()), default=0)
    if max_chars is not None and longest > max_chars:  # before the vectoriser copies it into tensors
        raise _bad_request(f"a text of {longest} characters; at most {max_chars} (clean.max_chars)")
    return texts.astype(object)


class RawPixelClassifier(mlflow.pyfunc.PythonModel):
    """Wraps the Keras model (preprocessing layers inside: pixel scaling, or text vectorisation) and names the
    predicted class. ``model_config``: ``classes``, ``max_request_images``, ``kind`` (``images`` or ``text``),
    ``modules`` (imported first: the model function's, logged with the model) and, for text, ``max_request_chars``
    (clean.max_chars)."""

    def load_context(self, context: Any) -> None:
        import importlib

        import keras

        # the model function's module registers its custom layers; MLflow put its logged copy (code_paths) on sys.path
        for module in context.model_config.get("modules") or []:
            importlib.import_module(str(module))
        self.model = keras.saving.load_model(context.artifacts["keras_model"], compile=False, safe_mode=True)
        self.classes = list(context.model_config["classes"])
        self.max_images = int(context.model_config["max_request_images"])
        self.kind = str(context.model_config.get("kind", "images"))
        chars = context.model_config.get("max_request_chars")
        self.max_chars = None if chars is None else int(chars)

    def _inputs(self, model_input: Any) -> np.ndarray:
        """The request as the Keras model takes it: uint8 images, or a 1-D object array of str."""
        if self.kind != "text":
            return _pixels(np.asarray(model_input))
        return _texts(model_input, self.max_chars)

    def _call(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(images), dtype=np.float32)

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if len(model_input) > self.max_images:  # a 4xx, not minutes of CPU or an out-of-memory kill; checked first
            raise _bad_request(
                f"{len(model_input)} items in one request; at most {self.max_images} (deploy.max_request_images)"
            )
        images = self._inputs(model_input)
        # predict_on_batch runs the compiled predict step: 0.7 ms for one image, where calling the model eagerly takes
        # 5 ms and Model.predict, which builds a data pipeline per call, 45 ms.
        probabilities = np.concatenate(
            [self._call(images[start : start + CHUNK]) for start in range(0, len(images), CHUNK)]
            or [np.zeros((0, len(self.classes)), dtype=np.float32)]
        )
        labels = probabilities.argmax(axis=1)
        return pd.DataFrame(
            {
                "label": labels.astype(np.int64),
                "class": [self.classes[i] for i in labels],
                "probability": probabilities.max(axis=1).astype(np.float64),
                "probabilities": [row.astype(np.float64).tolist() for row in probabilities],
            }
        )


mlflow.models.set_model(RawPixelClassifier())
