"""`python -m flows.deploy`: serve the training flow as deployment training/nightly on the schedule in params.yaml, or
with ``--pool`` deploy it to a Prefect work pool whose workers run it in this folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from flows import prefect_api
from tasks.lib.config import DEFAULT_PARAMS, load_params
from tasks.lib.errors import TrainflowError

DEPLOYMENT = "nightly"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flows.deploy",
        description="Create the deployment training/nightly and serve its scheduled and manual runs until stopped.",
    )
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help="params file (default: %(default)s)")
    parser.add_argument(
        "--pool",
        help="create the deployment on this Prefect work pool and return: its workers run the flow from this folder "
        "(`prefect worker start --pool NAME` on the machine that holds it) instead of this process serving it",
    )
    args = parser.parse_args(argv)
    with prefect_api.one_line_errors("deploy"):  # quiet: no httpx line for every poll of the server
        params = load_params(Path(args.params))
        schedule = params.schedule
        from prefect.schedules import Cron
        from prefect.settings import get_current_settings

        if not get_current_settings().api.url:
            raise TrainflowError(
                "PREFECT_API_URL is not set: schedules need a Prefect server "
                "(prefect server start, then export PREFECT_API_URL=http://127.0.0.1:4200/api)"
            )

    from flows.training import training

    description = "The training pipeline, nightly; trigger now with `prefect deployment run training/nightly`."
    if args.pool:
        # the workers run the flow where this repo is (Prefect's set_working_directory pull step), with their own
        # environment: the team's MLFLOW_TRACKING_URI and the rest are the worker machine's, not copied from here
        root = Path(__file__).resolve().parents[1]
        with prefect_api.one_line_errors("deploy"):
            training.from_source(source=str(root), entrypoint="flows/training.py:training").deploy(
                name=DEPLOYMENT,
                work_pool_name=args.pool,
                schedules=[Cron(schedule.cron, timezone=schedule.timezone)],
                parameters={"params_path": args.params},
                description=description,
                concurrency_limit=1,  # one run at a time: two runs would write the same workspace
                print_next_steps=False,
            )
        print(f"training/{DEPLOYMENT} is on work pool {args.pool!r}, run by its workers in {root}")
        return

    # One run at a time: two runs would write the same workspace.
    training.serve(
        name=DEPLOYMENT,
        schedules=[Cron(schedule.cron, timezone=schedule.timezone)],
        parameters={"params_path": args.params},
        description=description,
        limit=1,
    )


if __name__ == "__main__":
    main()
