"""`python -m tasks.<stage>`: load params, run the stage; bad input → one line, exit 1; a transient failure → one
line, exit EXIT_TRANSIENT (the flow retries only those)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.lib import dag
from tasks.lib.config import DEFAULT_PARAMS, Params, load_params
from tasks.lib.errors import EXIT_TRANSIENT, TrainflowError, TransientError, redact
from tasks.lib.lifetime import die_with_dvc
from tasks.lib.lock import workspace_lock
from tasks.lib.quiet import quiet_libraries

log = logging.getLogger("trainflow")


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
    if "DVC_STAGE" in os.environ:  # DVC runs this stage: a killed `dvc repro` takes it (and its server) down
        die_with_dvc()
    quiet_libraries()
    # progress on stdout, warnings on stderr: bad input leaves exactly one line there, the `error:` line
    progress, warnings = logging.StreamHandler(sys.stdout), logging.StreamHandler(sys.stderr)
    progress.addFilter(lambda record: record.levelno < logging.WARNING)
    warnings.setLevel(logging.WARNING)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=[progress, warnings]
    )
    try:
        params = load_params(args.params)
        with workspace_lock(Path(params.paths.lock), f"stage {stage}"):
            missing = dag.missing_input(stage, params.model_dump())  # before the stage imports anything heavy
            if missing is not None:
                raise TrainflowError(missing)
            run(params)
    except TrainflowError as exc:
        print(f"error: {stage}: {exc}", file=sys.stderr)
        sys.exit(EXIT_TRANSIENT if isinstance(exc, TransientError) else 1)
    except (ConnectionError, TimeoutError) as exc:  # a service that did not answer: a retry may pass
        print(f"error: {stage}: {redact(str(exc))}", file=sys.stderr)
        sys.exit(EXIT_TRANSIENT)
