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
