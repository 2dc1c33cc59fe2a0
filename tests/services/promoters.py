"""`python -m tests.services.promoters NAME SOURCE ROUNDS PROMOTERS`: promoters racing for the champion alias.

Each round, every promoter registers a version of SOURCE under NAME, all wait at a barrier, then each moves the
champion alias with ``registry.promote`` comparing with the champion read before the round. Prints, as JSON, the
winners of each round (the versions that moved the alias): a correct compare-and-set has exactly one per round.

The registry answers its read of the champion SLOW_READ_S late, as a busy server would: on loopback the window between
the check and the move is a few milliseconds, which threads started together rarely hit; at this width every
promoter hits it unless the lock keeps them apart.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tasks.lib import registry
from tasks.lib.config import load_params

SLOW_READ_S = 0.3


def slow_champion_version(settings: Any, name: str, read: Any = registry.champion_version) -> Any:
    found = read(settings, name)
    time.sleep(SLOW_READ_S)
    return found


def main(name: str, source: str, rounds: int, promoters: int) -> list[list[int]]:
    settings = load_params(Path("params.yaml")).tracking
    registry.champion_version = slow_champion_version  # what promote() reads under its lock
    winners = []
    for _ in range(rounds):
        current = registry.champion_version(settings, name)
        seen = int(current.version) if current is not None else None
        versions = [registry.register_version(settings, name, source, {}) for _ in range(promoters)]
        barrier = threading.Barrier(promoters)

        def promote(version: int, seen: int | None = seen, barrier: threading.Barrier = barrier) -> int | None:
            barrier.wait()
            return version if registry.promote(settings, name, version, seen) is None else None

        with ThreadPoolExecutor(promoters) as pool:
            winners.append([v for v in pool.map(promote, versions) if v is not None])
    return winners


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
