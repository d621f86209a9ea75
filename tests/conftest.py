import asyncio
import ipaddress
import socket
import time

import pytest
from datasette.plugins import pm

from .fakes import FakeModelsPlugin, HashEmbeddingModel, ScriptedChatModel

_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", ""}


def _is_loopback(address) -> bool:
    if not isinstance(address, tuple):  # unix socket paths are local
        return True
    host = address[0]
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail any test that tries to open a connection off this machine."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def guarded_connect(self, address):
        if not _is_loopback(address):
            raise AssertionError(f"test tried to reach the network: {address!r}")
        return real_connect(self, address)

    def guarded_connect_ex(self, address):
        if not _is_loopback(address):
            raise AssertionError(f"test tried to reach the network: {address!r}")
        return real_connect_ex(self, address)

    real_getaddrinfo = socket.getaddrinfo

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host not in _LOOPBACK_NAMES and host is not None:
            try:
                if not ipaddress.ip_address(host).is_loopback:
                    raise AssertionError(f"test tried to resolve {host!r}")
            except ValueError:
                raise AssertionError(f"test tried to resolve {host!r}") from None
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield


@pytest.fixture(autouse=True)
def llm_user_dir(tmp_path_factory, monkeypatch):
    """llm (when installed) keeps keys and aliases under LLM_USER_PATH: never the real ~/.config.
    As in llm's own tests, llm loads no installed plugin in this process (``sys._called_from_test``):
    tests register the one they use (tests/llm_test_plugin.py)."""
    import sys

    monkeypatch.setenv("LLM_USER_PATH", str(tmp_path_factory.getbasetemp() / "llm-user"))
    monkeypatch.setattr(sys, "_called_from_test", True, raising=False)


@pytest.fixture
def scripted_model():
    return ScriptedChatModel("scripted")


@pytest.fixture
def hash_embedder():
    return HashEmbeddingModel()


@pytest.fixture
def fake_models(scripted_model, hash_embedder):
    """Register the scripted chat model and hash embedder through the real hooks."""
    plugin = FakeModelsPlugin(chat=[scripted_model], embedding=[hash_embedder])
    name = f"fake-models-{id(plugin)}"
    pm.register(plugin, name=name)
    try:
        yield plugin
    finally:
        pm.unregister(name=name)


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02):
    """Await until ``predicate()`` (sync or async) is truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


# --- secret scanning (added by the reliability suite) ------------------------
# Every test runs with a collector that records each response body and header
# the suite sends through ``datasette.client``, every log record, and every row
# of the state database (call log, runs, feedback) of each Datasette it built.
# At teardown, any occurrence of a fake API key fails the test. Tests that
# configure real provider SDKs use the ``fake_api_keys`` fixture, whose keys
# carry the recognisable marker below; never put the marker in test inputs.

import logging as _logging  # noqa: E402
import os as _os  # noqa: E402
import weakref as _weakref  # noqa: E402

# Datasette may use pysqlite3 (its own SQLite library); in-memory databases are
# shared only between connections of the same library.
from datasette.utils.sqlite import sqlite3 as _sqlite3  # noqa: E402

SECRET_MARKER = "sk-test-SECRET-"
FAKE_API_KEYS = {
    "OPENAI_API_KEY": SECRET_MARKER + "openai-7f3a9c2e51d04b8a",
    "ANTHROPIC_API_KEY": SECRET_MARKER + "anthropic-0c9e4d2b7a16f835",
}
SECRET_SCAN_STATS = {"bodies": 0, "log_records": 0, "state_rows": 0, "hits": 0}


@pytest.fixture
def fake_api_keys(monkeypatch):
    """Set recognisable fake provider keys in the environment; returns them."""
    for name, value in FAKE_API_KEYS.items():
        monkeypatch.setenv(name, value)
    return dict(FAKE_API_KEYS)


def _secret_values() -> set[str]:
    found = set(FAKE_API_KEYS.values()) | {SECRET_MARKER}
    for value in _os.environ.values():
        if value.startswith(SECRET_MARKER):
            found.add(value)
    return found


def _state_rows(ds):
    """Yield every text/bytes value stored in ``ds``'s state database."""
    db = ds.databases.get("llm_newsroom")
    if db is None:
        return
    if getattr(db, "memory_name", None):
        uri = f"file:{db.memory_name}?mode=memory&cache=shared"
    elif getattr(db, "path", None) and _os.path.exists(db.path):
        uri = f"file:{db.path}?mode=ro"
    else:
        return
    conn = _sqlite3.connect(uri, uri=True, timeout=1)
    try:
        tables = [r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")]
        for table in tables:
            quoted = '"' + table.replace('"', '""') + '"'
            for row in conn.execute(f"select * from {quoted} limit 20000"):
                SECRET_SCAN_STATS["state_rows"] += 1
                yield table, row
    except _sqlite3.Error:
        return
    finally:
        conn.close()


def find_secret_hits(bodies, messages, instances) -> list[str]:
    """Where a fake key occurs in response bodies, log messages or state databases."""
    secrets = _secret_values()
    hits = []
    SECRET_SCAN_STATS["bodies"] += len(bodies)
    SECRET_SCAN_STATS["log_records"] += len(messages)
    for where, text in bodies:
        hits += [f"response to {where}" for s in secrets if s in text]
    for message in messages:
        hits += [f"log record {message[:80]!r}" for s in secrets if s in message]
    for ds in instances:
        for table, row in _state_rows(ds):
            for value in row:
                if isinstance(value, bytes):
                    value = value.decode("utf-8", "replace")
                if isinstance(value, str) and any(s in value for s in secrets):
                    hits.append(f"state table {table!r}")
    return hits


class _LogCollector(_logging.Handler):
    def __init__(self):
        super().__init__(level=_logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        try:
            self.messages.append(record.getMessage())
        except Exception:  # a broken log call is not our business here
            pass


@pytest.fixture(autouse=True)
def secret_scan(monkeypatch):
    """Fail the test if a fake API key shows up in a response, log record or state row."""
    from datasette.app import Datasette, DatasetteClient

    bodies: list[tuple[str, str]] = []
    instances: "_weakref.WeakSet" = _weakref.WeakSet()

    def wrap(original):
        async def recording(self, method, path, *args, **kwargs):
            response = await original(self, method, path, *args, **kwargs)
            instances.add(self.ds)
            try:
                text = response.content.decode("utf-8", "replace")
            except Exception:  # streamed bodies not read by the test
                text = ""
            headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
            bodies.append((f"{method.upper()} {path}", headers + "\n\n" + text))
            return response

        return recording

    monkeypatch.setattr(DatasetteClient, "_request", wrap(DatasetteClient._request))
    monkeypatch.setattr(DatasetteClient, "request", wrap(DatasetteClient.request))

    real_init = Datasette.__init__

    def tracking_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        instances.add(self)

    monkeypatch.setattr(Datasette, "__init__", tracking_init)

    collector = _LogCollector()
    root = _logging.getLogger()
    root.addHandler(collector)
    try:
        yield bodies
    finally:
        root.removeHandler(collector)
    hits = find_secret_hits(bodies, collector.messages, list(instances))
    if hits:
        SECRET_SCAN_STATS["hits"] += len(hits)
        pytest.fail("API key leaked: " + "; ".join(sorted(set(hits))[:10]), pytrace=False)


def pytest_terminal_summary(terminalreporter):
    stats = SECRET_SCAN_STATS
    if stats["bodies"] or stats["state_rows"]:
        terminalreporter.write_line(
            f"secret scan: {stats['bodies']} response bodies, {stats['log_records']} log "
            f"records, {stats['state_rows']} state-db rows scanned, {stats['hits']} key leaks"
        )
