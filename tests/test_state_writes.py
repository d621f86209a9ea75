"""Writes to the state database retry on a lock, whichever SQLite library raised it."""

import pytest
from datasette.utils.sqlite import sqlite3 as datasette_sqlite3

from datasette_llm_extract import runs


class FlakyDb:
    def __init__(self, failures, error):
        self.failures = failures
        self.error = error
        self.calls = 0

    async def execute_write_fn(self, fn, block=True):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return fn(None)


async def test_locked_error_from_datasettes_sqlite_is_retried():
    db = FlakyDb(2, datasette_sqlite3.OperationalError("database table is locked"))
    assert await runs._write(db, lambda conn: "written") == "written"
    assert db.calls == 3


async def test_other_operational_errors_are_not_retried():
    db = FlakyDb(1, datasette_sqlite3.OperationalError("no such table: x"))
    with pytest.raises(datasette_sqlite3.OperationalError):
        await runs._write(db, lambda conn: "written")
    assert db.calls == 1
