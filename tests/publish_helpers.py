"""A published newsroom for tests: read-only mounts and a public ``datasette serve``.

``read_only_mount(src)`` exposes a folder read-only the way a published
image or a read-only volume does. Permission bits do not stop root, so it
uses a read-only bind mount (``mount --bind`` then ``mount -o
remount,ro,bind``); where mounting is not allowed the caller gets
``MountUnavailable`` with the reason and skips.

``PublicServer`` runs ``datasette serve`` as a separate process and talks to
it over HTTP as anonymous visitors (optionally from a given client address
through ``X-Forwarded-For``) or as root.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from datasette_llm_core import permissions as P

from .processes import free_port, stop_process, wait_until_serving

REPO = Path(__file__).resolve().parent.parent
SECRET = "publish-test-secret"


class MountUnavailable(Exception):
    """This machine cannot make a read-only mount (not root, no mount namespace...)."""


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def read_only_mount(src: Path, target: Path):
    """``target`` shows ``src`` read-only (even to root) for the ``with`` block."""
    target.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        raise MountUnavailable("read-only bind mounts need root (permission bits do not stop root)")
    bound = _run(["mount", "--bind", str(src), str(target)])
    if bound.returncode != 0:
        raise MountUnavailable(f"mount --bind failed: {bound.stderr.strip()}")
    try:
        ro = _run(["mount", "-o", "remount,ro,bind", str(target)])
        if ro.returncode != 0:
            raise MountUnavailable(f"remount read-only failed: {ro.stderr.strip()}")
        probe = target / ".write-probe"
        try:
            probe.write_text("x")
        except OSError:
            pass
        else:
            probe.unlink()
            raise MountUnavailable("the remounted folder is still writable")
        yield target
    finally:
        if _run(["umount", str(target)]).returncode != 0:
            _run(["umount", "-l", str(target)])  # a file still open: detach it anyway


def root_cookie() -> str:
    from itsdangerous import URLSafeSerializer

    return "ds_actor=" + URLSafeSerializer(SECRET, "actor").dumps({"a": {"id": "root"}})


class PublicServer:
    """``datasette serve ARGS`` in its own process, on 127.0.0.1."""

    def __init__(self, args: list[str], log: Path, cwd: Path | None = None, env: dict | None = None):
        self.args = args
        self.log = log
        self.cwd = cwd or REPO
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> "PublicServer":
        self.port = free_port()
        cmd = [sys.executable, "-m", "datasette", "serve", *self.args,
               "-h", "127.0.0.1", "-p", str(self.port), "--secret", SECRET]
        env = {**os.environ, **(self.env or {})}
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "a"), stderr=subprocess.STDOUT,
                                     cwd=self.cwd, env=env)
        wait_until_serving(self.proc, self.url("/-/versions.json"), lambda: self.log.read_text()[-3000:])
        return self

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> "PublicServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def request(self, method: str, path: str, body=None, *, root: bool = False,
                client: str | None = None, headers: dict | None = None) -> tuple[int, bytes, dict]:
        """(status, body bytes, headers); ``client`` is sent as X-Forwarded-For."""
        h = {"content-type": "application/json"}
        if root:
            h["cookie"] = root_cookie()
            if method == "POST":  # 0.65 checks a CSRF token on cookie-signed posts
                token = self.csrf_token()
                if token:
                    h["cookie"] += f"; ds_csrftoken={token}"
                    h["x-csrftoken"] = token
        if client:
            h["x-forwarded-for"] = client
        h.update(headers or {})
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url(path), data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def csrf_token(self) -> str:
        """0.65's CSRF token for root ("" on 1.0, which has none)."""
        from http.cookies import SimpleCookie

        req = urllib.request.Request(self.url("/-/llm-ask"), headers={"cookie": root_cookie()})
        with urllib.request.urlopen(req, timeout=30) as response:
            jar = SimpleCookie(response.headers.get("set-cookie") or "")
        return jar["ds_csrftoken"].value if "ds_csrftoken" in jar else ""

    def get(self, path: str, **kw) -> tuple[int, bytes, dict]:
        return self.request("GET", path, **kw)

    def json(self, method: str, path: str, body=None, **kw) -> tuple[int, dict]:
        status, raw, _ = self.request(method, path, body, **kw)
        try:
            return status, json.loads(raw or b"null")
        except ValueError:
            return status, {"raw": raw.decode("utf-8", "replace")}

    def csrf_post(self, page: str, path: str, form: dict,
                  headers: dict | None = None) -> tuple[int, bytes]:
        """POST a form as root, with 0.65's CSRF token (1.0 needs none)."""
        from http.cookies import SimpleCookie
        from urllib.parse import urlencode

        req = urllib.request.Request(self.url(page), headers={"cookie": root_cookie()})
        with urllib.request.urlopen(req, timeout=30) as response:
            jar = SimpleCookie(response.headers.get("set-cookie") or "")
        token = jar["ds_csrftoken"].value if "ds_csrftoken" in jar else ""
        cookie = root_cookie() + (f"; ds_csrftoken={token}" if token else "")
        data = urlencode({**form, **({"csrftoken": token} if token else {})}).encode()
        req = urllib.request.Request(self.url(path), data=data, method="POST", headers={
            "cookie": cookie, "content-type": "application/x-www-form-urlencoded",
            **(headers or {})})

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *a, **k):
                return None

        opener = urllib.request.build_opener(NoRedirect)
        try:
            with opener.open(req, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()


def config_flag() -> str:
    """Where plugin config goes on the command line: -m (0.65) or -c (1.0)."""
    return "-c" if P.IS_V1 else "-m"


def index_database(db: Path, config: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "datasette", "llm-rag", "index", str(db), config_flag(), str(config),
         *extra],
        check=True, cwd=REPO, timeout=120, capture_output=True, text=True,
    )
