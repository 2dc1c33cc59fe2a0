"""The seed article's script, as plain Keras: the reference every pipeline figure is compared with.

MNIST test set from an IDX folder, first 8,000 images to train, last 2,000 to test (or an .npz of x_train, y_train,
x_test, y_test: benchmarks/at_scale.py's 60,000 images); the seed's CNN (Conv 32 3×3, pool, Conv 64 3×3, pool,
Dense 128, softmax), Adam, batch 64, 10 epochs. Prints one JSON line: train_s (model.fit), images_per_s,
step_ms (model.fit's seconds per training step), test_accuracy.

    python benchmarks/baseline.py ../shared/data/mnist [EPOCHS]
    python benchmarks/baseline.py mnist-x6.npz [EPOCHS]
"""

from __future__ import annotations

import gzip
import json
import sys
import time
from pathlib import Path


def _idx(path: Path):
    import numpy as np

    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def main(folder: str, epochs: int = 10) -> dict:
    import keras
    import numpy as np
    from keras import layers

    root = Path(folder)
    if root.suffix == ".npz":
        arrays = np.load(root)
        x_train, y_train = arrays["x_train"].astype("float32") / 255.0, arrays["y_train"]
        x_test, y_test = arrays["x_test"].astype("float32") / 255.0, arrays["y_test"]
    else:
        x = _idx(next(root.glob("t10k-images-idx3-ubyte*"))).astype("float32")[..., None] / 255.0
        y = _idx(next(root.glob("t10k-labels-idx1-ubyte*")))
        x_train, y_train, x_test, y_test = x[:8000], y[:8000], x[8000:], y[8000:]
    model = keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            layers.Conv2D(32, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(64, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
    train_s = time.perf_counter() - start
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return {
        "train_s": train_s,
        "images_per_s": len(x_train) * epochs / train_s,
        "step_ms": 1000 * train_s / (epochs * -(-len(x_train) // 64)),
        "test_accuracy": float(accuracy),
        "backend": keras.backend.backend(),
    }


if __name__ == "__main__":
    result = main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
    # the whole process: from interpreter start (the caller times the process from outside as well)
    print(json.dumps(result))
