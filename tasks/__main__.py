"""`python -m tasks <stage> [--params FILE]`: run one stage, as `python -m tasks.<stage>` does (what dvc.yaml runs).

The two are the same stage, the same arguments and the same artifacts. This entry imports only the standard library
before it hands the stage to a warm server (tasks/warm.py); `python -m tasks.<stage>` first has to import the stage
module (numpy, pydantic, the config: ~0.3 s) only to hand it over.
"""

from __future__ import annotations

import importlib
import sys

from tasks import warm


def main(argv: list[str] | None = None) -> None:
    """Hand ``<stage> [args]`` to a warm server, or run it in this process (warm start off, or no server)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] not in warm.STAGES:
        got = f"unknown stage {args[0]!r}" if args else "no stage given"
        sys.exit(f"error: {got}; usage: python -m tasks {{{','.join(warm.STAGES)}}} [--params FILE]")
    stage, rest = args[0], args[1:]
    module = f"tasks.{stage}"
    if argv is None and warm.enabled():
        code = warm.delegate(warm.STAGES[stage], module, rest)
        if code is not None:
            sys.exit(code)
    from tasks.cli import main as run_stage

    run_stage(stage, importlib.import_module(module).run, rest)


if __name__ == "__main__":
    main()
