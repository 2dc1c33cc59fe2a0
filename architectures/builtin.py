"""The built-in architectures, written as any user's model function is (docs/own-model.md): the preprocessed input
in, one logit per class out; the pipeline adds the preprocessing in front and the softmax head after.

``train.model: cnn``, ``mlp`` and (text) ``rnn`` name these; their arguments default to the train keys of the same
name in params.yaml (``train.filters``, ``train.dense_units``, ...), which ``train.model_args`` overrides.
"""

from __future__ import annotations

from typing import Any


def _conv_padding(size: int) -> str:
    # The seed's CNN uses valid 3×3 convolutions; on small inputs (8×8) they would shrink the map to
    # nothing after two pool steps, so a block switches to same padding when the map is too small.
    return "valid" if (size - 2) // 2 >= 2 else "same"


def _relu(x: Any, batch_norm: bool) -> Any:
    from keras import layers

    # Momentum 0.9, not Keras' 0.99: a short training (a few hundred steps) must still leave moving statistics
    # that match the data, or inference sees activations scaled unlike anything seen in training.
    return layers.Activation("relu")(layers.BatchNormalization(momentum=0.9)(x)) if batch_norm else x


def cnn(
    inputs: Any,
    num_classes: int,
    *,
    filters: tuple[int, ...] = (32, 64),
    dense_units: int = 128,
    dropout: float = 0.25,
    l2: float = 0.0,
    batch_norm: bool = False,
) -> Any:
    """The seed's CNN: a 3×3 conv/2×2 max-pool block per entry of ``filters``, then a ReLU dense layer and dropout.

    With ``batch_norm`` every block and the dense layer normalise their pre-activations: conv (no bias) → max
    pooling → batch norm → ReLU, dense (no bias) → batch norm → ReLU.
    """
    import keras
    from keras import layers

    regularizer = keras.regularizers.L2(l2) if l2 else None
    bias, activation = (False, None) if batch_norm else (True, "relu")
    size = min(inputs.shape[1], inputs.shape[2])
    x = inputs
    for width in filters:
        padding = _conv_padding(size)
        x = layers.Conv2D(
            width, 3, activation=activation, padding=padding, use_bias=bias, kernel_regularizer=regularizer
        )(x)
        size = size - 2 if padding == "valid" else size
        if size >= 2:
            # Pooling before the ReLU gives the same result (max commutes with ReLU), and with batch norm it
            # normalises a quarter of the activations: on CPU, normalising the full first map nearly doubles
            # the training time for no better accuracy.
            x = layers.MaxPooling2D(2)(x)
            size //= 2
        x = _relu(x, batch_norm)
    x = layers.Flatten()(x)
    x = _relu(
        layers.Dense(dense_units, activation=activation, use_bias=bias, kernel_regularizer=regularizer)(x), batch_norm
    )
    x = layers.Dropout(dropout)(x)
    return layers.Dense(num_classes, name="logits")(x)


def mlp(
    inputs: Any,
    num_classes: int,
    *,
    dense_units: int = 128,
    dropout: float = 0.25,
    l2: float = 0.0,
    batch_norm: bool = False,
) -> Any:
    """Two ReLU dense layers of ``dense_units`` on the flattened pixels, dropout after each."""
    import keras
    from keras import layers

    regularizer = keras.regularizers.L2(l2) if l2 else None
    bias, activation = (False, None) if batch_norm else (True, "relu")
    x = layers.Flatten()(inputs)
    for _ in range(2):
        dense = layers.Dense(dense_units, activation=activation, use_bias=bias, kernel_regularizer=regularizer)
        x = layers.Dropout(dropout)(_relu(dense(x), batch_norm))
    return layers.Dense(num_classes, name="logits")(x)


def rnn(
    inputs: Any,
    num_classes: int,
    vocabulary_size: int,
    *,
    embedding_dim: int = 64,
    rnn: str = "lstm",
    rnn_units: int = 64,
    bidirectional: bool = True,
    dense_units: int = 128,
    dropout: float = 0.25,
) -> Any:
    """The article's text model on word ids: embedding, a recurrent layer (``rnn``: lstm or gru, bidirectional when
    asked), a ReLU dense layer, dropout before each dense layer."""
    from keras import layers

    if rnn not in ("lstm", "gru"):
        raise ValueError(f"rnn must be lstm or gru, not {rnn!r}")
    recurrent = {"lstm": layers.LSTM, "gru": layers.GRU}[rnn](rnn_units, name=rnn)
    x = layers.Embedding(vocabulary_size, embedding_dim, mask_zero=True, name="embedding")(inputs)
    x = (layers.Bidirectional(recurrent, name=f"bidirectional_{rnn}") if bidirectional else recurrent)(x)
    x = layers.Dropout(dropout)(x)
    x = layers.Dense(dense_units, activation="relu")(x)
    x = layers.Dropout(dropout)(x)
    return layers.Dense(num_classes, name="logits")(x)
