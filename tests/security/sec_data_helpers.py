"""Shared by the ``test_sec_data_*`` attack tests: a real ``datasette serve``
process on 127.0.0.1, requests as any actor (or none), and small SQLite helpers.

Not a conftest: the fixtures live in each test module.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from datasette_llm_core import permissions as P

from ..processes import free_port, stop_process, wait_until_serving

REPO = Path(__file__).resolve().parent.parent.parent
SECRET = "sec-data-suite-secret"


def actor_cookie(actor: dict | None) -> str:
    if actor is None:
        return ""
    from itsdangerous import URLSafeSerializer

    return "ds_actor=" + URLSafeSerializer(SECRET, "actor").dumps({"a": actor})


class Server:
    """``datasette serve FILES`` in its own process with ``config`` (plugins,
    allow blocks) passed as metadata on 0.65 and as config on 1.0."""

    def __init__(self, workdir: Path, files: list, config: dict, *, args=(), env=None):
        self.workdir = Path(workdir)
        self.files = [str(f) for f in files]
        self.config_path = self.workdir / "sec-config.json"
        self.config_path.write_text(json.dumps(config))
        self.args = list(args)
        self.env = {**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1", **(env or {})}
        self.log = self.workdir / "server.log"
        self.proc = None
        self.port = None

    def start(self, timeout: float = 60) -> "Server":
        self.port = free_port()
        flag = "-c" if P.IS_V1 else "-m"
        cmd = [sys.executable, "-m", "datasette", "serve", *self.files, flag, str(self.config_path),
               "-h", "127.0.0.1", "-p", str(self.port), "--secret", SECRET, *self.args]
        if P.IS_V1 and "--root" not in cmd:
            cmd.append("--root")
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                         env=self.env)
        wait_until_serving(self.proc, f"http://127.0.0.1:{self.port}/-/versions.json",
                           lambda: self.log.read_text()[-3000:], timeout=timeout)
        return self

    def stop(self) -> None:
        stop_process(self.proc)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def request(self, method: str, path: str, body=None, *, actor: dict | None = None,
                headers: dict | None = None) -> tuple[int, str, dict]:
        """(status, body text, headers); redirects are followed for GET."""
        data = json.dumps(body).encode() if body is not None else None
        hdrs = {"accept": "application/json"}
        if data is not None:
            hdrs["content-type"] = "application/json"
        cookie = actor_cookie(actor)
        if cookie:
            hdrs["cookie"] = cookie
        hdrs.update(headers or {})
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return response.status, response.read().decode("utf-8", "replace"), dict(response.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace"), dict(e.headers)

    def csrf_headers(self, page: str = "/", actor: dict | None = None) -> dict:
        """Headers for a POST that 0.65's CSRF check accepts (its token cookie and
        header); empty on 1.0, which checks the request's origin instead."""
        if P.IS_V1:
            return {}
        from http.cookies import SimpleCookie

        _, _, headers = self.get(page, actor=actor)
        jar = SimpleCookie(headers.get("Set-Cookie") or headers.get("set-cookie") or "")
        if "ds_csrftoken" not in jar:
            return {}
        token = jar["ds_csrftoken"].value
        cookie = "; ".join(c for c in (actor_cookie(actor), f"ds_csrftoken={token}") if c)
        return {"cookie": cookie, "x-csrftoken": token}

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def json(self, method: str, path: str, body=None, **kw):
        status, text, _ = self.request(method, path, body, **kw)
        try:
            return status, json.loads(text)
        except ValueError:
            return status, {"_raw": text}


def fill_row(conn: sqlite3.Connection, table: str, values: dict) -> None:
    """Insert a row into ``table`` giving every NOT NULL column without a
    default a plausible value, so tests do not depend on every column."""
    cols = conn.execute(f'pragma table_info("{table}")').fetchall()
    row = dict(values)
    for _cid, name, ctype, notnull, default, _pk in cols:
        if name in row or not notnull or default is not None:
            continue
        ctype = (ctype or "").lower()
        row[name] = 0 if ("int" in ctype or "real" in ctype) else f"{name}-x"
    names = ", ".join(f'"{n}"' for n in row)
    marks = ", ".join("?" for _ in row)
    conn.execute(f'insert into "{table}" ({names}) values ({marks})', list(row.values()))
