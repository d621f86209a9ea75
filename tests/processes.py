"""Starting and stopping the real server processes the tests talk to (127.0.0.1 only).

One place for what every real-server fixture needs: a free local port, waiting until a
just-started process answers (failing with the tail of its log if it dies or never
answers), and stopping it without leaving a process behind.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import Callable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(proc: subprocess.Popen, url: str, tail: Callable[[], str], *,
                       timeout: float = 60.0) -> None:
    """Poll ``url`` until it answers 200; fail with ``tail()`` (the log's end) if the
    process exits or the deadline passes first (the process is then stopped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with code {proc.returncode}: {tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    stop_process(proc)  # never leave a server behind (one outlived a timed-out run under load)
    raise AssertionError("server did not start: " + tail())


def stop_process(proc: subprocess.Popen | None) -> None:
    """Terminate, then kill if it has not gone within 10 seconds; always reaped."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
