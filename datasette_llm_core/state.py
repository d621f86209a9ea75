"""The suite's own SQLite database: call log, runs, feedback, templates.

It is attached to Datasette as a database named ``llm_newsroom`` so that
allowed users can browse it (permission hooks hide it from everyone else).
Its path comes from plugin config ``state_database`` (or the environment
variable ``DATASETTE_LLM_NEWSROOM_STATE``), default ``llm_newsroom.db`` in the
current directory; ``:memory:`` keeps it in memory (tests, throwaway demos).

Each package registers migrations with ``register_migrations``; they run once,
in order, inside ``execute_write_fn``, and are recorded in ``_llm_migrations``
so running them twice is safe.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
import weakref
from typing import Callable

from .config import plugin_settings
from .errors import ConfigError

STATE_DB_NAME = "llm_newsroom"
ENV_STATE_PATH = "DATASETTE_LLM_NEWSROOM_STATE"

Migration = Callable[[sqlite3.Connection], None]
_MIGRATIONS: list[tuple[str, str, Migration]] = []  # (package, name, fn)
_ready: "weakref.WeakKeyDictionary[object, asyncio.Future]" = weakref.WeakKeyDictionary()


def register_migrations(package: str, migrations: list[tuple[str, Migration]]) -> None:
    """Register ``(name, fn)`` migrations for ``package``; order is kept."""
    for name, fn in migrations:
        key = (package, name)
        if any((p, n) == key for p, n, _ in _MIGRATIONS):
            continue
        _MIGRATIONS.append((package, name, fn))


def _m_application_id(conn: sqlite3.Connection) -> None:
    """Mark the file as the suite's state database (see suitefiles.py)."""
    from .suitefiles import STATE_APPLICATION_ID

    conn.execute(f"pragma application_id = {int(STATE_APPLICATION_ID)}")


register_migrations("core", [("0000_application_id", _m_application_id)])


def state_path(datasette) -> str:
    settings = plugin_settings(datasette)
    return settings.state_database or os.environ.get(ENV_STATE_PATH) or "llm_newsroom.db"


def _apply_migrations(conn: sqlite3.Connection) -> list[str]:
    conn.execute(
        "create table if not exists _llm_migrations ("
        " package text not null, -- package that owns the migration\n"
        " name text not null, -- migration name, unique within the package\n"
        " applied_at real not null, -- unix time it ran\n"
        " primary key (package, name))"
    )
    done = {
        (row[0], row[1])
        for row in conn.execute("select package, name from _llm_migrations")
    }
    applied = []
    for package, name, fn in list(_MIGRATIONS):
        if (package, name) in done:
            continue
        with conn:  # one transaction per migration
            fn(conn)
            conn.execute(
                "insert into _llm_migrations (package, name, applied_at) values (?, ?, ?)",
                (package, name, time.time()),
            )
        applied.append(f"{package}:{name}")
    return applied


def _use_wal(path: str) -> None:
    """WAL: readers never wait for the call-log writer, and with
    synchronous=NORMAL (set per connection by ``tune_connection``) a log row
    costs no fsync. The mode is stored in the file, so it is set once here,
    outside any transaction (Datasette 1.0 wraps write functions in one)."""
    # The same SQLite library Datasette uses (pysqlite3 when installed): two
    # copies of SQLite in one process must not hold the same file.
    from datasette.utils.sqlite import sqlite3 as datasette_sqlite3

    conn = datasette_sqlite3.connect(path)
    try:
        conn.execute("pragma journal_mode=wal")
    finally:
        conn.close()


def tune_connection(conn: sqlite3.Connection) -> None:
    """Per-connection settings for the state database (see _use_wal).

    ``read_uncommitted``: a ``":memory:"`` state database is one shared-cache
    database, where a reader meeting a table the writer has locked fails at
    once with "database table is locked" (no busy timeout applies); readers
    that take no table locks never do. A file database ignores it (WAL)."""
    conn.execute("pragma synchronous=normal")
    conn.execute("pragma read_uncommitted=1")


def attach_state_database(datasette):
    """Add the state database to ``datasette`` if it is not there yet."""
    from datasette.database import Database

    if STATE_DB_NAME in datasette.databases:
        return datasette.databases[STATE_DB_NAME]
    path = state_path(datasette)
    if path == ":memory:":
        db = Database(datasette, memory_name=f"llm_newsroom_{id(datasette)}", is_mutable=True)
    else:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            _use_wal(path)
        except Exception as e:  # noqa: BLE001 - OSError or either SQLite library's error
            raise ConfigError(
                f"Cannot create or open the state database {path} ({e}). On a read-only disk "
                "(a published image, a read-only volume) set state_database: \":memory:\" or a "
                "path on a writable volume under plugins: datasette-llm-newsroom (or the "
                f"environment variable {ENV_STATE_PATH})."
            ) from None
        db = Database(datasette, path=path, is_mutable=True)
    return datasette.add_database(db, name=STATE_DB_NAME)


async def state_db(datasette):
    """The state database with every registered migration applied."""
    db = attach_state_database(datasette)
    fut = _ready.get(datasette)
    if fut is None:
        fut = asyncio.get_running_loop().create_future()
        _ready[datasette] = fut
        try:
            await db.execute_write_fn(_apply_migrations, block=True)
        except BaseException as e:  # let the next caller retry
            del _ready[datasette]
            fut.set_exception(e)
            fut.exception()  # mark retrieved
            raise
        fut.set_result(True)
    else:
        await fut
    # Migrations registered after the first run (late imports) still apply.
    return db

