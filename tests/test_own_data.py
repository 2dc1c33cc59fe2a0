"""docs/own-data.md's steps, followed with a folder of another dataset (MNIST digits 0-2 as named PNG classes), in a
workspace whose registry already has a digits champion: changed data reruns ingest, deploy reports an incomparable
reference and the run goes on, a new input contract does not take the old champion's alias, its own name does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.lib.sources import load_idx_dir
from tests.conftest import copy_run
from tests.helpers import REPO, needs, ran, sh

pytestmark = pytest.mark.slow

MNIST = REPO.parent / "shared" / "data" / "mnist"
CLASSES = {0: "zero", 1: "one", 2: "two"}


def write_images(folder: Path, per_class: int) -> None:
    """PNGs of MNIST's first digits 0, 1 and 2: one sub-folder per class, named by word."""
    loaded = load_idx_dir(MNIST)
    for label, name in CLASSES.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(loaded.x[loaded.y == label][:per_class]):
            Image.fromarray(image[..., 0]).save(folder / name / f"{i:04d}.png")


def report(workspace: Path, name: str) -> dict:
    return json.loads((workspace / "reports" / name).read_text())


def test_your_own_images_step_by_step(tmp_path: Path, tiny_run: Path) -> None:
    needs(MNIST.is_dir(), f"the MNIST test set at {MNIST}")
    workspace = copy_run(tiny_run, tmp_path / "workspace")  # the registry's champion: a digits model (8×8, ten classes)
    assert report(workspace, "deploy.json")["registry"]["alias"] == "champion"
    sh(workspace, "git", "add", "-A")
    sh(workspace, "git", "commit", "-qm", "digits")

    # step 1: the images, one sub-folder per class, in data/input (the default data.path)
    write_images(workspace / "data" / "input", per_class=120)
    assert "data/input" in sh(workspace, "dvc", "status").stdout  # the data is a dependency of ingest

    # without a name of its own: deploy's drift check cannot compare, says so and goes on; the champion keeps its alias
    kept = sh(
        workspace,
        "dvc",
        "exp",
        "run",
        "-S",
        "data.source=folder",
        "-S",
        "data.path=data/input",
        "-S",
        "data.image_size=[28, 28]",
    )
    assert ran(kept.stdout) == [
        "ingest",
        "clean",
        "augment",
        "normalize",
        "train",
        "evaluate",
        "deploy",
        "audit",
        "report",
    ]
    deployed = report(workspace, "deploy.json")
    drift = deployed["drift"]
    assert drift["comparable"] is False and "not comparable" in drift["why"] and "'zero'" in drift["why"]
    assert deployed["registry"]["alias"] == "challenger" and "another input contract" in deployed["gate"]["reason"]
    assert deployed["contract"] == {"input_shape": [28, 28, 1], "dtype": "uint8", "classes": ["one", "two", "zero"]}

    # step 2 as the docs give it: its own registry name, where it becomes the first champion
    named = sh(workspace, "dvc", "exp", "run", "-S", "deploy.model_name=my-images")
    assert "deploy" in ran(named.stdout) and "train" not in ran(named.stdout)  # the data and model are unchanged
    deployed = report(workspace, "deploy.json")
    assert deployed["registry"]["model_name"] == "my-images" and deployed["registry"]["alias"] == "champion"
    assert deployed["drift"]["why"] == "no reference yet: my-images has no champion"

    # a changed image reruns ingest, and only what its output changes
    first = workspace / "data" / "input" / "zero" / "0000.png"
    Image.fromarray(np.zeros((28, 28), np.uint8) + 40).save(first)
    status = sh(workspace, "dvc", "status").stdout
    assert "ingest" in status and "data/input" in status
