"""Text vectorisation, one definition for the stage that fits it (normalize) and the model that applies it (train):
Keras' TextVectorization, lower-cased, punctuation stripped, split on whitespace; id 0 pads, 1 is ``[UNK]``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tasks.lib import artifacts

VOCABULARY = "vocabulary.json"  # beside data/normalized's statistics.json: the train vocabulary, index = token id
CHUNK = 1024  # texts vectorised at once


def text_vectorizer(
    vocabulary_size: int | None = None, vocabulary: list[str] | None = None, length: int | None = None
) -> Any:
    """The TextVectorization layer: to fit (``adapt``) or with its vocabulary (and a fixed output length)."""
    from tasks.lib.quiet import import_keras

    keras = import_keras()
    return keras.layers.TextVectorization(
        max_tokens=vocabulary_size, vocabulary=vocabulary, output_sequence_length=length, name="vectorize"
    )


def fit_vocabulary(train: Iterable[np.ndarray], size: int) -> list[str]:
    """The ``size`` most frequent words of the train texts (one shard at a time), padding and ``[UNK]`` first."""
    from tasks.lib.quiet import import_keras

    import_keras()  # TensorFlow loads with it, its start-up lines filtered
    import tensorflow as tf

    shards = list(train)
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(shards), output_signature=tf.TensorSpec(shape=(None,), dtype=tf.string)
    )
    vectorizer = text_vectorizer(vocabulary_size=size)
    vectorizer.adapt(dataset)
    return [str(word) for word in vectorizer.get_vocabulary()]


def token_counts(vectorizer: Any, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per text: its words, and those of them outside the vocabulary."""
    tokens, unknown = np.zeros(len(texts), np.int64), np.zeros(len(texts), np.int64)
    for start in range(0, len(texts), CHUNK):
        ids = np.asarray(vectorizer(texts[start : start + CHUNK]))
        tokens[start : start + CHUNK] = (ids != 0).sum(axis=1)
        unknown[start : start + CHUNK] = (ids == 1).sum(axis=1)
    return tokens, unknown


def read_vocabulary(folder: Path, statistics: Mapping[str, Any]) -> list[str]:
    """The vocabulary normalize fitted: the file its ``statistics`` name in ``folder`` (data/normalized)."""
    return list(artifacts.read_json(Path(folder) / statistics["vocabulary"]))
