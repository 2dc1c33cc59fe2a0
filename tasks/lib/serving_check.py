"""The exported SavedModel's predictions in a fresh interpreter that imports only numpy and TensorFlow.

deploy starts it first (its TensorFlow import overlaps the export), then writes one line to its stdin:
``<export dir>\\t<images .npy>\\t<output .npy>``. It loads the export with ``tf.saved_model.load`` — no Keras, no
project code — and saves the ``serve`` signature's output.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf

    serving_dir, sample, out = sys.stdin.readline().rstrip("\n").split("\t")
    served = tf.saved_model.load(serving_dir)
    np.save(out, np.asarray(served.serve(tf.constant(np.load(sample, allow_pickle=False)))), allow_pickle=False)


if __name__ == "__main__":
    main()
