"""Fault-injection points for the crash tests, inert unless a test sets an environment variable.

``DATASETTE_LLM_TEST_POINT=<name>:kill`` makes the server process SIGKILL
itself when it reaches ``await reached("<name>")``;
``DATASETTE_LLM_TEST_POINT=<name>:pause:<dir>`` creates ``<dir>/paused`` and
waits (up to 60 s) for ``<dir>/resume`` to exist, then removes both, so a test
can change the world (fill the disk) at exactly that moment. Production never
sets it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

ENV = "DATASETTE_LLM_TEST_POINT"


async def reached(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec or not spec.startswith(name + ":"):
        return
    action, _, arg = spec[len(name) + 1:].partition(":")
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "pause" and arg:
        open(os.path.join(arg, "paused"), "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(arg, "resume")) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for leftover in ("paused", "resume"):
            try:
                os.remove(os.path.join(arg, leftover))
            except OSError:
                pass
