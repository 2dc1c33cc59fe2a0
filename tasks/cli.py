"""`python -m tasks <stage>` / `python -m tasks.<stage>`: load params, run the stage, bad input → one line, exit 1."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks import warm
from tasks.config import DEFAULT_PARAMS, Params, load_params
from tasks.errors import TrainflowError
from tasks.lock import workspace_lock

log = logging.getLogger("trainflow")


def main(stage: str, run: Callable[[Params], Any], argv: list[str] | None = None) -> None:
    """Entry point shared by every stage module.

    Args:
        stage: the stage's name (a key of ``tasks.warm.STAGES``, which names its warm server profile).
        run: the stage's ``run(params)``.
        argv: arguments (default: the command line; given, the stage runs in this process).
    """
    parser = argparse.ArgumentParser(prog=f"python -m tasks.{stage}", description=f"Run the {stage} stage.")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file (default: %(default)s)")
    args = parser.parse_args(argv)
    if argv is None and warm.enabled():
        code = warm.delegate(warm.STAGES[stage])  # a forked child of a server that has imported the libraries already
        if code is not None:
            sys.exit(code)
    if warm.CHILD not in os.environ:  # a warm child's TensorFlow is imported already, and its environment stays
        # the caller's, so that what it starts with warm start (deploy's check) finds the servers the caller did
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up chatter hides the stage's log
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        params = load_params(args.params)
        with workspace_lock(Path(params.paths.lock), f"stage {stage}"):
            run(params)
    except TrainflowError as exc:
        print(f"error: {stage}: {exc}", file=sys.stderr)
        sys.exit(1)
