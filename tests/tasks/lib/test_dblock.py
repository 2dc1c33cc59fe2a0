"""The shared lock (tasks/lib/dblock.py): which URLs take it, and one clear line when its database is unreachable.
The lock itself, between machines, is tested on a real PostgreSQL in tests/services/test_stack.py."""

from __future__ import annotations

import pytest

from tasks.lib import dblock
from tasks.lib.errors import TransientError
from tests.helpers import free_port


@pytest.mark.parametrize(
    ("url", "shared"),
    [
        ("postgresql://u@db/optuna", True),
        ("postgresql+psycopg://u@db/optuna", True),
        ("postgres://u@db/x", True),
        ("sqlite:///optuna.db", False),
        ("optuna.db", False),
        ("mysql://u@db/optuna", False),
    ],
)
def test_only_postgresql_urls_take_the_database_lock(url: str, shared: bool) -> None:
    assert dblock.is_postgresql(url) is shared


def test_an_unreachable_lock_database_is_one_transient_line_without_the_password() -> None:
    url = f"postgresql://trainflow:s3cret-pass@127.0.0.1:{free_port()}/mlflow"  # nothing listens there
    with pytest.raises(TransientError) as caught, dblock.advisory_lock(url, "champion:m", "moving the alias"):
        pytest.fail("the body ran without the lock")
    message = str(caught.value)
    assert "\n" not in message and "s3cret-pass" not in message
    assert message.startswith("postgresql://***@127.0.0.1:") and "the lock for moving the alias failed" in message


def test_turns_lock_only_a_postgresql_database() -> None:
    """Elsewhere (SQLite) nothing is opened: the mutation that always locks would try psycopg on a sqlite URL."""
    with dblock.turns("sqlite:////nonexistent/optuna.db", "k", "creating the tables"):
        pass
    with pytest.raises(TransientError), dblock.turns("postgresql://u@127.0.0.1:1/db", "k", "creating the tables"):
        pass
