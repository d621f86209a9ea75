"""A real ``datasette serve`` process for the request-layer attack tests (sec_http).

One server per test module: two databases (``news``, writable and public with
a ``target`` table; ``private``, viewable by root only, with ``payroll``),
the suite's models pointed at the fake OpenAI-compatible server, a search
index over ``news.target`` built with the tests' hash embedder (registered in
the server through ``--plugins-dir``), and these actors:

- ``alice`` and ``bob``: ``llm-extract`` everywhere they can view, ``alice``
  also ``llm-ask`` on ``news``;
- ``carol``: ``llm-extract`` on ``news/target`` only (a table-level grant);
- ``root``.

Requests go over real sockets (``http.client``), signed in with a signed
``ds_actor`` cookie, so every check runs exactly as for a browser or client.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from datasette_llm_core import permissions as P
from datasette_llm_extract.settings import ExtractSettings

from ..fake_openai_server import Reply, last_user_text
from ..processes import free_port, stop_process, wait_until_serving

REPO = Path(__file__).resolve().parent.parent.parent
SECRET = "sec-http-suite-secret"
V1 = P.IS_V1

PLUGIN = '''
from datasette import hookimpl
from tests.fakes import HashEmbeddingModel


@hookimpl
def register_embedding_models(datasette):
    return [HashEmbeddingModel()]
'''


def extraction_reply(request: dict) -> Reply:
    """Rows for every ``<Name> paid <n> dollars`` in the document; prose for answers."""
    text = last_user_text(request)
    if request.get("response_format") is None and "paid" not in text:
        return Reply(content="Road budgets rose [1].")
    found = re.findall(r"([A-Z][A-Za-z]+) paid (\d+) dollars", text)
    rows = [{"name": n, "amount": int(a), "source_quote": f"{n} paid {a} dollars"} for n, a in dict(found).items()]
    return Reply(content=json.dumps({"rows": rows}))


def make_databases(tmp_path: Path) -> tuple[Path, Path]:
    news = tmp_path / "news.db"
    conn = sqlite3.connect(news)
    conn.execute("create table target (id integer primary key, name text, amount integer)")
    conn.execute("create table notes (id integer primary key, body text)")
    conn.executemany("insert into notes (id, body) values (?, ?)",
                     [(1, "Road budgets rose sharply this year."), (2, "The bridge repair was delayed.")])
    conn.commit()
    conn.close()
    private = tmp_path / "private.db"
    conn = sqlite3.connect(private)
    conn.execute("create table payroll (id integer primary key, name text, salary integer)")
    conn.execute("insert into payroll values (1, 'Dana', 90000)")
    conn.commit()
    conn.close()
    return news, private


RAG_TABLES = {"notes": {"columns": ["body"]}}


def build_index(news: Path, sidecar: Path) -> None:
    import asyncio

    from datasette_llm_rag.indexer import refresh_index

    from ..fakes import HashEmbeddingModel

    asyncio.run(refresh_index(str(news), "news", {"databases": {"news": {"tables": RAG_TABLES}}},
                              HashEmbeddingModel(), sidecar=str(sidecar)))


def config(tmp_path: Path, model_url: str, extract: dict | None = None) -> dict:
    plugin = {
        "state_database": str(tmp_path / "state.db"),
        "models": [{"id": "fake", "provider": "openai-compatible", "model": "fake-model",
                    "base_url": model_url, "supports": ["streaming", "schema"], "timeout": 30}],
        "defaults": {"extract": "fake", "answer": "fake", "embed": "hash-embed"},
        "retries": {"max_attempts": 1},
        "permissions": {
            "llm-extract": {"id": ["alice", "bob"]},
            "databases": {
                "news": {"llm-ask": {"id": "alice"}, "tables": {"target": {"llm-extract": {"id": "carol"}}}},
            },
        },
        # (keys this version does not know are left out, so the tests also run, and fail
        # for the right reason, against the code before the fixes)
        "extract": {"chunk_chars": 4000, **{k: v for k, v in (extract or {}).items()
                                            if k in ExtractSettings.model_fields}},
        "rag": {
            "embedding_model": "hash-embed",
            "databases": {"news": {"sidecar": str(tmp_path / "news.llm-rag.db"), "tables": RAG_TABLES}},
        },
    }
    out = {"databases": {"private": {"allow": {"id": "root"}}},
           "plugins": {"datasette-llm-newsroom": plugin}}
    if V1:  # Datasette's own write permissions (0.65 has none: llm-extract decides)
        writers = {"id": ["alice", "bob", "carol"]}
        out["permissions"] = {a: writers for a in ("insert-row", "create-table", "delete-row", "update-row")}
    return out


class Response:
    def __init__(self, status: int, headers: dict, body: bytes, elapsed: float):
        self.status = status
        self.headers = headers
        self.body = body
        self.elapsed = elapsed

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<{self.status} {self.text[:300]!r}>"


class Server:
    """``datasette serve`` on 127.0.0.1 in its own process."""

    def __init__(self, tmp_path: Path, config: dict):
        self.tmp_path = tmp_path
        self.config_path = tmp_path / "config.json"
        self.config_path.write_text(json.dumps(config))
        plugins = tmp_path / "plugins"
        plugins.mkdir(exist_ok=True)
        (plugins / "sec_http_hash_embedder.py").write_text(PLUGIN)
        self.plugins = plugins
        self.log_path = tmp_path / "server.log"
        self.proc = None
        self.port = None

    def start(self) -> "Server":
        self.port = free_port()
        flag = "-c" if V1 else "-m"
        cmd = [sys.executable, "-m", "datasette", "serve", str(self.tmp_path / "news.db"),
               str(self.tmp_path / "private.db"), flag, str(self.config_path),
               "--plugins-dir", str(self.plugins), "-h", "127.0.0.1", "-p", str(self.port),
               "--secret", SECRET]
        if V1:
            cmd.append("--root")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in [os.environ.get("PYTHONPATH", ""), str(REPO)] if p)}
        self.proc = subprocess.Popen(cmd, stdout=open(self.log_path, "a"), stderr=subprocess.STDOUT,
                                     cwd=self.tmp_path, env=env)
        wait_until_serving(self.proc, self.base_url + "/-/versions.json", self.log)
        return self

    def stop(self) -> None:
        stop_process(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- identities
    @staticmethod
    def actor_cookie_value(actor_id: str) -> str:
        from itsdangerous import URLSafeSerializer

        return URLSafeSerializer(SECRET, "actor").dumps({"a": {"id": actor_id}})

    def cookie(self, actor_id: str | None, csrf: str | None = None) -> str:
        parts = []
        if actor_id:
            parts.append("ds_actor=" + self.actor_cookie_value(actor_id))
        if csrf:
            parts.append("ds_csrftoken=" + csrf)
        return "; ".join(parts)

    def csrf_token(self, actor_id: str, page: str = "/-/llm-extract") -> str:
        """A valid (0.65) ``ds_csrftoken`` for forms: the cookie value Datasette sets."""
        r = self.request("GET", page, actor=actor_id)
        match = re.search(r"ds_csrftoken=([^;]+)", r.headers.get("set-cookie", ""))
        return match.group(1) if match else ""

    # --- HTTP
    def request(self, method: str, path: str, body: bytes | str | dict | None = None, *,
                actor: str | None = None, headers: dict | None = None, content_type: str | None = None,
                csrf: str | None = None, timeout: float = 30) -> Response:
        headers = dict(headers or {})
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            content_type = content_type or "application/json"
        elif isinstance(body, str):
            body = body.encode("utf-8")
        if content_type:
            headers["content-type"] = content_type
        cookie = self.cookie(actor, csrf)
        if cookie:
            headers["cookie"] = cookie
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        started = time.monotonic()
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, data,
                            time.monotonic() - started)
        finally:
            conn.close()

    def rss_mb(self) -> float:
        """Resident memory of the server process (Linux /proc)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    # --- extraction helpers
    def start_run(self, actor: str, text: str, **extra) -> str:
        r = self.request("POST", "/-/llm-extract/api/runs",
                         {"database": "news", "table": "target", "text": text,
                          "columns": ["name", "amount"], **extra}, actor=actor)
        assert r.status == 201, r
        return r.json()["id"]

    def wait_run(self, run_id: str, actor: str, predicate, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        run = None
        while time.monotonic() < deadline:
            r = self.request("GET", f"/-/llm-extract/api/runs/{run_id}", actor=actor)
            assert r.status == 200, r
            run = r.json()
            if predicate(run):
                return run
            time.sleep(0.1)
        raise AssertionError(f"run {run_id} never reached the expected state: {run}")

    def inserted_run(self, actor: str, text: str, **insert) -> str:
        """A finished run whose valid rows were inserted through the JSON API."""
        run_id = self.start_run(actor, text)
        self.wait_run(run_id, actor, lambda r: r["status"] not in ("pending", "running"))
        r = self.request("POST", f"/-/llm-extract/api/runs/{run_id}/insert",
                         {"accept": "all_valid", **insert}, actor=actor)
        assert r.status == 200, r
        return run_id

    def state(self) -> sqlite3.Connection:
        return sqlite3.connect(self.tmp_path / "state.db")

    def count(self, sql: str, params=()) -> int:
        conn = self.state()
        try:
            return conn.execute(sql, params).fetchone()[0]
        finally:
            conn.close()


def start_world(tmp_path: Path, model_url: str, extract: dict | None = None) -> Server:
    news, _ = make_databases(tmp_path)
    build_index(news, tmp_path / "news.llm-rag.db")
    return Server(tmp_path, config(tmp_path, model_url, extract)).start()
