"""The served model (MLflow "models from code"): raw uint8 pixels or raw strings → predicted label, class name,
probabilities.

MLflow copies this file into every logged model, so it must import nothing from this project: serving needs only
Keras, NumPy, pandas and MLflow.
"""

from __future__ import annotations

import functools
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd


def refuse_deep_json() -> None:
    """Make MLflow's scoring server answer JSON nested too deeply to parse with a 400, not a 500.

    ``mlflow models serve`` parses the body with ``json.loads``, which raises RecursionError at about 1,000 levels;
    MLflow catches only JSONDecodeError there, so the error escapes as HTTP 500 (mlflow/mlflow#4897: bad input
    should be a 4xx). The server loads this model before it answers, so wrapping its JSON decoder here fixes every
    request. ``tests/tasks/lib/test_serving.py`` fails by name if MLflow renames the decoder.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST
    from mlflow.pyfunc import scoring_server

    decode = scoring_server._decode_json_input
    if getattr(decode, "refuses_deep_json", False):
        return

    @functools.wraps(decode)
    def decode_or_refuse(json_input: Any) -> Any:
        try:
            return decode(json_input)
        except RecursionError:
            raise MlflowException("the request's JSON is nested too deeply to parse", error_code=BAD_REQUEST) from None

    decode_or_refuse.refuses_deep_json = True  # type: ignore[attr-defined]
    scoring_server._decode_json_input = decode_or_refuse


CHUNK = 256  # items per forward pass: bounds the activations' memory for large requests


def _bad_request(message: str) -> Exception:
    from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


class RawPixelClassifier(mlflow.pyfunc.PythonModel):
    """Wraps the Keras model (preprocessing layers inside: pixel scaling, or text vectorisation) and names the
    predicted class. ``model_config``: ``classes``, ``max_request_images`` and ``kind`` (``images`` or ``text``)."""

    def load_context(self, context: Any) -> None:
        import keras

        refuse_deep_json()

        self.model = keras.saving.load_model(context.artifacts["keras_model"], compile=False, safe_mode=True)
        self.classes = list(context.model_config["classes"])
        self.max_images = int(context.model_config["max_request_images"])
        self.kind = str(context.model_config.get("kind", "images"))

    def _inputs(self, model_input: Any) -> np.ndarray:
        """The request as the Keras model takes it: uint8 images, or a 1-D object array of str."""
        if self.kind != "text":
            return np.asarray(model_input, dtype=np.uint8)
        texts = np.asarray(model_input.iloc[:, 0] if isinstance(model_input, pd.DataFrame) else model_input)
        if texts.ndim != 1 or not all(isinstance(t, str) for t in texts.tolist()):
            raise _bad_request('expected a list of strings, e.g. {"inputs": ["free entry to win ..."]}')
        return texts.astype(object)

    def _call(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(images), dtype=np.float32)

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        images = self._inputs(model_input)
        if len(images) > self.max_images:  # a 4xx, not minutes of CPU or an out-of-memory kill
            raise _bad_request(
                f"{len(images)} items in one request; at most {self.max_images} (deploy.max_request_images)"
            )
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
