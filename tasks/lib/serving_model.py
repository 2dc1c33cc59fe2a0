"""The served model (MLflow "models from code"): raw uint8 pixels or raw strings → predicted label, class name,
probabilities.

MLflow copies this file into every logged model, so it must import nothing from this project: serving needs only
Keras, NumPy, pandas and MLflow. A registered model outlives the MLflow release it was logged with, so this file uses
public APIs only (tests/tasks/lib/test_serving_model.py checks): bad requests are refused in ``predict`` with
MLflow's public ``MlflowException(..., error_code=INVALID_PARAMETER_VALUE)``, which the scoring server answers with
a 400; nothing here patches the server.
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


class RawPixelClassifier(mlflow.pyfunc.PythonModel):
    """Wraps the Keras model (preprocessing layers inside: pixel scaling, or text vectorisation) and names the
    predicted class. ``model_config``: ``classes``, ``max_request_images`` and ``kind`` (``images`` or ``text``)."""

    def load_context(self, context: Any) -> None:
        import keras

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
