"""`python -m tasks.<stage>`: load params, run the stage, bad input → one line, exit 1."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.lib.config import DEFAULT_PARAMS, Params, load_params
from tasks.lib.errors import TrainflowError
from tasks.lib.lock import workspace_lock

log = logging.getLogger("trainflow")


def quiet_libraries() -> None:
    """Keep a CPU run's output to what the user needs: no TensorFlow C++ start-up chatter, no repeated warnings.

    Set before TensorFlow is imported (it reads ``TF_CPP_MIN_LOG_LEVEL`` once); a value the user set is kept.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow(\.|$)")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"mlflow(\.|$)")
    for name in ("httpx", "alembic", "great_expectations"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(stage: str, run: Callable[[Params], Any], argv: list[str] | None = None) -> None:
    """Entry point shared by every stage module.

    Args:
        stage: the stage's name (its dvc.yaml stage and module).
        run: the stage's ``run(params)``.
        argv: arguments (default: the command line).
    """
    parser = argparse.ArgumentParser(prog=f"python -m tasks.{stage}", description=f"Run the {stage} stage.")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file (default: %(default)s)")
    args = parser.parse_args(argv)
    quiet_libraries()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        params = load_params(args.params)
        with workspace_lock(Path(params.paths.lock), f"stage {stage}"):
            run(params)
    except TrainflowError as exc:
        print(f"error: {stage}: {exc}", file=sys.stderr)
        sys.exit(1)
