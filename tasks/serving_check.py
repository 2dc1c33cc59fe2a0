"""The exported SavedModel's predictions in a fresh interpreter that imports only numpy and TensorFlow.

deploy starts it first (its TensorFlow import overlaps the export), then writes one line to its stdin:
``<export dir>\\t<images .npy>\\t<output .npy>``. It loads the export with ``tf.saved_model.load`` — no Keras, no
project code — and saves the ``serve`` signature's output. With warm start it is a child of a server that has
imported TensorFlow and nothing else (``tasks/warm.py``, profile ``serving``).
"""

from __future__ import annotations

import sys


def main() -> None:
    import numpy as np
    import tensorflow as tf

    serving_dir, sample, out = sys.stdin.readline().rstrip("\n").split("\t")
    served = tf.saved_model.load(serving_dir)
    np.save(out, np.asarray(served.serve(tf.constant(np.load(sample, allow_pickle=False)))), allow_pickle=False)


if __name__ == "__main__":
    from tasks import warm  # the runner only; the check itself imports numpy and TensorFlow

    if warm.enabled():
        code = warm.delegate("serving")
        if code is not None:
            sys.exit(code)
    main()
