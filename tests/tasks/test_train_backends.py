"""tasks/train.py under KERAS_BACKEND=jax and torch: the whole train stage (device detection, precision policy,
seeding, batch norm, the cosine schedule, checkpoints, the MLflow epoch callback, the .keras save) in a fresh
process per backend, then the saved model reloaded in another fresh process of the same backend.

Keras picks its backend once, at import, so every run is a subprocess. A backend whose package is not installed
is skipped (both are in the ``tests`` extra, CPU builds, so `make test` runs them).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import REPO
from tests.helpers import committed_params_file, needs

EPOCHS = 3

# Writes data/clean and data/augmented (two classes: dark and bright 8×8 images), runs the normalize and train stages
# (normalize writes the statistics; train reads augment's items and those statistics), and prints
# what it did as JSON: the stage's report, the MLflow per-epoch metric count and the trained model's test output.
TRAIN = """
import json, sys
from pathlib import Path
import numpy as np
import keras
from tasks import normalize, train
from tasks.lib import tracking
from tasks.lib.artifacts import Dataset, Split, write_dataset
from tasks.lib.config import load_params

params = load_params(Path(sys.argv[1]), json.loads(sys.argv[2]))
rng = np.random.default_rng(0)

def split(n):
    y = np.arange(n) % 2
    x = rng.integers(0, 100, (n, 8, 8, 1)) + 150 * y[:, None, None, None]
    return Split(x.astype(np.uint8), y)

clean = Dataset(splits={"train": split(256), "val": split(32), "test": split(32)}, classes=("dark", "bright"))
write_dataset(Path(params.paths.clean), clean)
write_dataset(Path(params.paths.augmented), clean)
normalize.run(params)
report = train.run(params)
run_id = tracking.current_run(Path(params.paths.run_info))
curve = tracking.client(params.tracking).get_metric_history(run_id, "val_loss")
model = keras.saving.load_model(params.paths.model)
test = clean.splits["test"]
probs = keras.ops.convert_to_numpy(model.predict(test.x, verbose=0))
print(json.dumps({"report": report, "val_loss_steps": sorted(m.step for m in curve),
                  "x": test.x.tolist(), "y": test.y.tolist(), "probs": probs.tolist()}))
"""

# Loads the saved model and predicts the given images: what a serving process of that backend would do.
PREDICT = """
import json, sys
import numpy as np
import keras
model = keras.saving.load_model(sys.argv[1])
x = np.asarray(json.loads(sys.stdin.read()), dtype=np.uint8)
print(json.dumps({"backend": keras.backend.backend(), "dtype": model.inputs[0].dtype,
                  "probs": keras.ops.convert_to_numpy(model.predict(x, verbose=0)).tolist()}))
"""


def _python(backend: str, cwd: Path, code: str, *args: str, stdin: str | None = None) -> dict[str, Any]:
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("MLFLOW_TRACKING_URI", None)  # params' tracking.uri: an SQLite store in cwd
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        pytest.fail(f"KERAS_BACKEND={backend} exited {done.returncode}\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_train_stage_under_backend(tmp_path: Path, backend: str) -> None:
    needs(importlib.util.find_spec(backend) is not None, f"the {backend} package (pip install -e '.[tests]')")
    overrides = {
        "train.epochs": EPOCHS,
        "train.filters": [4, 8],
        "train.dense_units": 16,
        "train.batch_size": 16,
        "train.learning_rate": 0.01,
        "train.batch_norm": True,
        "train.lr_schedule": "cosine",
        "train.lr_warmup_epochs": 1,
    }
    trained = _python(backend, tmp_path, TRAIN, str(committed_params_file()), json.dumps(overrides))

    report = trained["report"]
    assert report["backend"] == backend and report["device"] in ("CPU", "GPU")  # CPU here, GPU where there is one
    assert report["policy"] == ("mixed_float16" if report["device"] == "GPU" else "float32")  # mixed_precision: auto
    assert report["epochs_run"] == EPOCHS
    assert trained["val_loss_steps"] == list(range(EPOCHS))  # the MLflow callback logged every epoch
    model = tmp_path / "models" / "model.keras"
    assert zipfile.is_zipfile(model) and "config.json" in zipfile.ZipFile(model).namelist()  # the .keras format
    assert not any((tmp_path / "models" / "checkpoints").iterdir())  # checkpoint and run marker cleaned up
    y, probs = np.array(trained["y"]), np.array(trained["probs"])
    assert probs.shape == (len(y), 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert (probs.argmax(axis=1) == y).mean() > 0.8  # dark vs bright: far above chance (0.5)

    reloaded = _python(backend, tmp_path, PREDICT, str(model), stdin=json.dumps(trained["x"]))
    assert reloaded["backend"] == backend and reloaded["dtype"] == "uint8"
    np.testing.assert_allclose(np.array(reloaded["probs"]), probs, rtol=1e-5, atol=1e-6)
