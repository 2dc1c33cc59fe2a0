"""Shared fixtures: the repo's real params and a builder of tiny datasets."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from tasks.lib import artifacts
from tasks.lib.artifacts import Dataset, Split

# load_params stays importable from here: test_clean, test_augment and test_normalize import it
from tasks.lib.config import Params, load_params, read_params_file  # noqa: F401
from tests.helpers import committed_params, committed_params_file

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """Prefect's state (its database, settings) and DVC's site cache (a folder per repo it opens, else under
    /var/tmp/dvc) in a folder of this test session, not the user's: set before any test module imports Prefect,
    inherited by every flow, server and `dvc` the tests start; removed at the end."""
    home = tempfile.mkdtemp(prefix="trainflow-tests-prefect-")
    config.stash[_PREFECT_HOME] = home
    os.environ["PREFECT_HOME"] = home
    os.environ["DVC_SITE_CACHE_DIR"] = str(Path(home) / "dvc-site-cache")


def pytest_unconfigure(config: pytest.Config) -> None:
    home = config.stash.get(_PREFECT_HOME, None)
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)


_PREFECT_HOME = pytest.StashKey[str]()


@pytest.hookimpl(trylast=True)  # after pytest-randomly has shuffled them
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The costliest modules first (tests/durations.json: seconds per module, measured in a full run), each module's
    tests still in random order: the workers (each takes a whole module, ``--dist loadscope``) start on the long
    modules and finish on short ones, rather than one worker running a five-minute module at the end while the others
    wait. ``--no-loadscope-reorder`` (pyproject.toml) keeps this order: by default pytest-xdist 3.8 hands out the
    modules with the most tests first, which put the one-test end-to-end modules last. Only the order depends on the
    file; a stale or missing entry costs time, never a test."""
    seconds = json.loads(Path(__file__).with_name("durations.json").read_text())
    items.sort(key=lambda item: -seconds.get(item.nodeid.split("::")[0], 0))


MakeDataset = Callable[..., Dataset]


@pytest.fixture(scope="session")
def params() -> Params:
    """The default config: the repo's committed params.yaml (not the working copy's, which `dvc exp run` edits)."""
    return committed_params()


def tiny_dataset(
    counts: dict[str, int] | None = None,
    shape: tuple[int, int, int] = (6, 6, 1),
    num_classes: int = 3,
    seed: int = 0,
) -> Dataset:
    """Random, all-distinct, non-constant uint8 images with labels cycling over the classes."""
    counts = counts or {"train": 30, "val": 9, "test": 9}
    rng = np.random.default_rng(seed)
    splits = {}
    for name, n in counts.items():
        x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
        x[:, 0, 0, 0], x[:, 0, 1, 0] = 0, 255  # never constant
        splits[name] = Split(x, np.arange(n, dtype=np.int64) % num_classes)
    return Dataset(splits=splits, classes=tuple(f"c{i}" for i in range(num_classes)))


WORDS = (("free", "win", "prize", "cash", "call", "now"), ("see", "you", "home", "later", "ok", "lunch"))


def tiny_texts(counts: dict[str, int] | None = None, seed: int = 0) -> Dataset:
    """Distinct short texts of two classes (spam-like and ham-like words) with labels alternating 0, 1."""
    counts = counts or {"train": 30, "val": 10, "test": 10}
    rng = np.random.default_rng(seed)
    splits, serial = {}, 0
    for name, n in counts.items():
        y = np.arange(n, dtype=np.int64) % 2
        texts = []
        for label in y:
            serial += 1  # every text its own: no duplicates, no leaks
            words = rng.choice(WORDS[label], size=int(rng.integers(2, 6))).tolist()
            texts.append(" ".join([*words, f"n{serial}"]))
        splits[name] = Split(np.array(texts, dtype=str), y)
    return Dataset(splits=splits, classes=("spam", "ham"))


class Repro(NamedTuple):
    """A workspace and what its first `dvc repro` printed."""

    root: Path
    done: subprocess.CompletedProcess[str]


@pytest.fixture(scope="session")
def tiny_repro(tmp_path_factory: pytest.TempPathFactory) -> Repro:
    """A workspace after one real `dvc repro` of the TINY params (data, model, reports, a champion in the registry).

    Tests that need a finished run start from a copy (:func:`copy_run`) instead of running the pipeline again; the
    workspace is self-contained (DVC cache, MLflow store and artifacts, GX context all inside it). Never change it.
    """
    from tasks.lib.lock import waiting_lock
    from tests.helpers import TINY, make_workspace, sh

    # one run for the whole session: with pytest-xdist, the first worker makes it in the folder all workers share
    # (their basetemps' parent) and the others wait for it, then read what it printed
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root, printed = shared / "tiny-run", shared / "tiny-run.json"
    with waiting_lock(shared / "tiny-run.lock", "the session's tiny run", timeout=1200):
        if not printed.exists():
            shutil.rmtree(root, ignore_errors=True)  # a failed attempt of another worker
            root.mkdir()
            done = sh(make_workspace(root, TINY), "dvc", "repro")
            printed.write_text(json.dumps({"args": done.args, "stdout": done.stdout, "stderr": done.stderr}))
    out = json.loads(printed.read_text())
    return Repro(root, subprocess.CompletedProcess(out["args"], 0, out["stdout"], out["stderr"]))


@pytest.fixture(scope="session")
def tiny_run(tiny_repro: Repro) -> Path:
    """The workspace of :func:`tiny_repro`, to copy."""
    return tiny_repro.root


def copy_run(run: Path, to: Path) -> Path:
    """A copy of a finished run's workspace at ``to`` (which must not exist), to change freely."""
    shutil.copytree(run, to, symlinks=True)
    return to


@pytest.fixture
def raw() -> dict[str, Any]:
    """The repo's committed params.yaml as a plain mapping, to change before it is parsed."""
    return read_params_file(committed_params_file())


@pytest.fixture
def make_dataset() -> MakeDataset:
    return tiny_dataset


# normalize is not here: it writes statistics, not a dataset (tests/tasks/test_normalize.py runs it)
STAGE_IO = {"clean": ("raw", "clean"), "augment": ("clean", "augmented")}


def run_stage_on(stage: str, dataset: Dataset, params: Params, **sections: Any) -> tuple[Dataset, Any]:
    """The stage's real ``run()`` on ``dataset`` written as its input, in a temporary folder; its output and report.

    ``sections`` replace params sections (``clean=CleanParams(...)``); validation thresholds are relaxed to one image
    so that tiny datasets pass the suites, and the GX context, Data Docs and outputs live in the temporary folder.
    """
    source, target = STAGE_IO[stage]
    with tempfile.TemporaryDirectory() as tmp:
        paths = {key: str(Path(tmp) / value) for key, value in params.paths.model_dump().items()}
        relaxed = params.validation.model_copy(update={"min_images": 1, "min_class_fraction": 0.0})
        config = params.model_copy(
            update={"paths": params.paths.model_copy(update=paths), "validation": relaxed, **sections}
        )
        artifacts.write_dataset(Path(getattr(config.paths, source)), dataset, config.data.shard_size)
        report = importlib.import_module(f"tasks.{stage}").run(config)
        return artifacts.read_dataset(Path(getattr(config.paths, target))), report
