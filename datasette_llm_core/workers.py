"""Which server process runs a background run or job, and whether it still lives.

Several Datasette processes (two workers, or a CLI command next to a server)
may share the state database, while each knows only its own asyncio tasks. So
a process stamps the runs and jobs it executes with its worker id and renews
a heartbeat every ``heartbeat_seconds``; another process treats such a row as
abandoned only once the heartbeat is older than the lease.

Nothing here imports Datasette.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time

#: Seconds between heartbeats of a live run or job (at most a third of the lease).
HEARTBEAT_SECONDS = 10.0
#: A run or job whose heartbeat is older than this is taken for dead by other processes.
LEASE_SECONDS = 45.0

_ID: tuple[int, str] | None = None


def worker_id() -> str:
    """``host:pid:random``, one per process (a forked child gets its own)."""
    global _ID
    pid = os.getpid()
    if _ID is None or _ID[0] != pid:
        _ID = (pid, f"{socket.gethostname()}:{pid}:{secrets.token_hex(4)}")
    return _ID[1]


def lease_seconds(configured: float | None = None) -> float:
    """The lease: the ``lease_seconds`` setting when given, else ``LEASE_SECONDS``."""
    return float(configured) if configured else float(LEASE_SECONDS)


def heartbeat_seconds(lease: float) -> float:
    """How often to renew: ``HEARTBEAT_SECONDS``, but at least three beats per lease."""
    return min(float(HEARTBEAT_SECONDS), lease / 3)


def lease_cutoff(lease: float, now: float | None = None) -> float:
    """Heartbeats older than this unix time have lapsed."""
    return (time.time() if now is None else now) - lease


def abandoned(owner: str | None, heartbeat_at: float | None, lease: float, now: float | None = None) -> bool:
    """Whether a run or job that is NOT executing in this process has no live owner:
    no owner recorded (a row from before leases) or a lapsed heartbeat."""
    if owner is None or heartbeat_at is None:
        return True
    return heartbeat_at < lease_cutoff(lease, now)


def lease_for(datasette) -> float:
    """The lease configured for ``datasette`` (plugin setting ``lease_seconds``)."""
    from .config import plugin_settings

    return lease_seconds(plugin_settings(datasette).lease_seconds)


async def beat_until_stopped(interval: float, beat, what: str) -> None:
    """Call ``await beat()`` every ``interval`` seconds until it returns True or
    the task is cancelled. A failing beat (state database trouble) is logged and
    tried again at the next interval: a missed beat only shortens the lease."""
    while True:
        await asyncio.sleep(interval)
        try:
            if await beat():
                return
        except Exception:  # noqa: BLE001
            logging.getLogger(__name__).exception("could not renew the heartbeat of %s", what)
