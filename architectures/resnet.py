"""A small residual network for images: docs/own-model.md's worked example of a model function of your own, with a
custom layer (registered with Keras' serialization API, so the saved and the served model rebuild it)."""

from __future__ import annotations

from typing import Any

import keras
from keras import layers


@keras.saving.register_keras_serializable(package="resnet")
class Residual(layers.Layer):
    """relu(x + conv(relu(conv(x)))): two 3×3 convolutions of ``filters`` (the input's channels) and a skip."""

    def __init__(self, filters: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters = filters
        self.first = layers.Conv2D(filters, 3, padding="same", activation="relu")
        self.second = layers.Conv2D(filters, 3, padding="same")

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.first.build(input_shape)
        self.second.build((*input_shape[:-1], self.filters))

    def call(self, x: Any) -> Any:
        return keras.ops.relu(x + self.second(self.first(x)))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "filters": self.filters}


def resnet(inputs: Any, num_classes: int, *, width: int = 16, blocks: int = 2, dropout: float = 0.1) -> Any:
    """A 3×3 stem of ``width`` channels, ``blocks`` residual blocks, global average pooling, dropout, one logit per
    class (the pipeline adds the softmax)."""
    x = layers.Conv2D(width, 3, padding="same", activation="relu")(inputs)
    for _ in range(blocks):
        x = Residual(width)(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(dropout)(x)
    return layers.Dense(num_classes)(x)
