"""A lock every machine of a team shares: a PostgreSQL advisory lock, the one module that knows psycopg.

MLflow's registry and Optuna's study attributes have no compare-and-set; where several machines must not interleave
a read and a write (moving the champion alias, creating a study's parent run), they hold this lock around both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tasks.lib.errors import TransientError, redact

WAIT_S = 120  # how long a holder may keep the others waiting: the steps it guards take seconds


def is_postgresql(url: str) -> bool:
    return url.split("://", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


@contextlib.contextmanager
def advisory_lock(url: str, key: str, what: str) -> Iterator[None]:
    """Hold PostgreSQL's transaction-level advisory lock of ``key`` on the database at ``url`` for the body.

    The database releases it when the transaction ends or the connection drops, so a killed holder holds nothing.
    The password comes from the URL or from libpq's password file (``PGPASSFILE``, ``~/.pgpass``).

    Raises:
        TransientError: the database is unreachable, or another holder kept the lock ``WAIT_S`` seconds.
    """
    import psycopg

    dsn = "postgresql://" + url.split("://", 1)[1]  # a SQLAlchemy URL names its driver: postgresql+psycopg://
    try:
        with psycopg.connect(dsn, connect_timeout=10) as connection:  # one transaction: the lock's lifetime
            connection.execute(f"SET LOCAL lock_timeout = '{WAIT_S}s'")
            connection.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))
            yield
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise TransientError(f"{redact(url)}: the lock for {what} failed ({first})") from None


def turns(url: str, key: str, what: str) -> contextlib.AbstractContextManager[None]:
    """:func:`advisory_lock` where ``url`` is a PostgreSQL database (machines sharing it take turns); elsewhere
    nothing (SQLite's file locking serialises its own writers)."""
    return advisory_lock(url, key, what) if is_postgresql(url) else contextlib.nullcontext()
