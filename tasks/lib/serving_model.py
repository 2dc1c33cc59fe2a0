"""The served model (MLflow "models from code"): raw uint8 pixels → predicted label, class name, probabilities.

MLflow copies this file into every logged model, so it must import nothing from this project: serving needs only
Keras, NumPy, pandas and MLflow.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd


class RawPixelClassifier(mlflow.pyfunc.PythonModel):
    """Wraps the Keras model (preprocessing layers inside) and names the predicted class."""

    def load_context(self, context: Any) -> None:
        import keras

        self.model = keras.saving.load_model(context.artifacts["keras_model"], compile=False, safe_mode=True)
        self.classes = list(context.model_config["classes"])
        self.max_images = int(context.model_config["max_request_images"])

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        images = np.asarray(model_input, dtype=np.uint8)
        if len(images) > self.max_images:  # a 4xx, not minutes of CPU or an out-of-memory kill
            from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

            raise MlflowException(
                f"{len(images)} images in one request; at most {self.max_images} (deploy.max_request_images)",
                error_code=INVALID_PARAMETER_VALUE,
            )
        probabilities = np.asarray(self.model.predict(images, verbose=0))
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
