"""Permission matrix: every route of the suite against five actors, on both lines.

The matrix is data: one line per route (and method) with the status each
actor must get. The routes are discovered from the suite's own
``register_routes`` hooks, and the test fails if one is missing from the
matrix, so adding a route means adding one line here.

Actors:
- ``anon``: not signed in
- ``nobody``: signed in, no grants
- ``viewer``: may view only table ``public`` of ``news`` (and ask questions there)
- ``extractor``: may view ``public`` and ``target`` and extract into ``target`` only
- ``root``

Leak checks on top: the question box and search never retrieve, cite or show
a row of a table the actor cannot view, and one user's runs, answers and the
call log are not reachable by another.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

import pytest
from datasette import hookimpl
from datasette.app import Datasette
from datasette.plugins import pm

from datasette_llm_core import permissions as P
from datasette_llm_extract.runs import ACTIVE
from datasette_llm_rag.indexer import refresh_index

from .conftest import wait_for
from .fakes import HashEmbeddingModel

V1 = P.IS_V1
SUITE_MODULES = ("datasette_llm_core", "datasette_llm_extract", "datasette_llm_rag")
ACTORS = {
    "anon": None,
    "nobody": {"id": "nobody"},
    "viewer": {"id": "viewer"},
    "extractor": {"id": "extractor"},
    "root": {"id": "root"},
}
SECRET_WORD = "zanzibarsecret"  # appears only in rows of the table ``secret``


def make_news(path) -> str:
    conn = sqlite3.connect(path)
    conn.execute("create table public (id integer primary key, title text, body text)")
    conn.execute("create table secret (id integer primary key, title text, body text)")
    conn.execute("create table target (id integer primary key, name text, amount integer)")
    conn.executemany(
        "insert into public values (?, ?, ?)",
        [(i, f"Budget story {i}", f"The council budget for roads rose {i} percent.") for i in range(1, 6)],
    )
    conn.executemany(
        "insert into secret values (?, ?, ?)",
        [(i, f"{SECRET_WORD} memo {i}", f"The council budget for roads {SECRET_WORD} was cut {i}.") for i in range(1, 6)],
    )
    conn.execute("insert into target values (1, 'existing', 5)")
    conn.commit()
    conn.close()
    return str(path)


RAG_TABLES = {
    "public": {"columns": ["title", "body"], "title_column": "title"},
    "secret": {"columns": ["title", "body"], "title_column": "title"},
}


def build_config(tmp_path) -> dict:
    rules = {
        "databases": {
            "news": {
                "allow": {"id": ["viewer", "extractor", "extractor2", "root"]},
                "tables": {
                    "secret": {"allow": {"id": "root"}},
                    "target": {"allow": {"id": ["extractor", "extractor2", "root"]}},
                },
            }
        }
    }
    if V1:  # 1.0 needs Datasette's own write permission for inserts
        rules["databases"]["news"]["tables"]["target"]["permissions"] = {"insert-row": {"id": ["extractor", "extractor2", "root"]}}
    plugin = {
        "state_database": str(tmp_path / "state.db"),
        "defaults": {"embed": "hash-embed"},
        "permissions": {
            "databases": {
                "news": {
                    "llm-ask": {"id": "viewer"},
                    "tables": {"target": {"llm-extract": {"id": ["extractor", "extractor2"]}}},
                }
            }
        },
        "rag": {
            "embedding_model": "hash-embed",
            "databases": {"news": {"sidecar": str(tmp_path / "news.llm-rag.db"), "tables": RAG_TABLES}},
        },
    }
    return {**rules, "plugins": {"datasette-llm-newsroom": plugin}}


class SkipCsrf:
    """0.65 only: isolate permission checks from the CSRF token check."""

    @hookimpl
    def skip_csrf(self, datasette, scope):
        return True


def respond(request) -> str:
    if request.json_schema is not None:
        return json.dumps({"rows": [{"name": "Acme", "amount": 12, "source_quote": "Acme paid 12"}]})
    return "Road budgets rose [1]. Also see [2]."


@pytest.fixture
async def world(tmp_path, fake_models, scripted_model):
    scripted_model.responder = respond
    path = make_news(tmp_path / "news.db")
    await refresh_index(
        path, "news", {"databases": {"news": {"tables": RAG_TABLES}}}, HashEmbeddingModel(),
        sidecar=str(tmp_path / "news.llm-rag.db"),
    )
    config = build_config(tmp_path)
    ds = Datasette([path], config=config) if V1 else Datasette([path], metadata=config)
    if V1:
        ds.root_enabled = True  # what `datasette --root` does: root may do everything
    skip = None
    if not V1:
        skip = SkipCsrf()
        pm.register(skip, name="h7-skip-csrf")
    try:
        await ds.invoke_startup()
        w = World(ds, tmp_path)
        await w.seed()
        yield w
    finally:
        if skip is not None:
            pm.unregister(name="h7-skip-csrf")


class World:
    def __init__(self, ds, tmp_path):
        self.ds = ds
        self.tmp_path = tmp_path
        self.ids: dict[str, str] = {}

    def cookies(self, actor_name):
        actor = ACTORS[actor_name]
        return {"ds_actor": self.ds.sign({"a": actor}, "actor")} if actor else {}

    async def request(self, actor_name, method, path, body=None):
        # forms carry a valid token (0.65's check is the suite's own on its form
        # routes): the matrix isolates permissions from CSRF
        kwargs = {"cookies": {**self.cookies(actor_name), "ds_csrftoken": "matrix-token"},
                  "headers": {"x-csrftoken": "matrix-token"}}
        if body is not None:
            kwargs["json"] = body
        return await self.ds.client.request(method, path, **kwargs)

    async def seed(self):
        # A finished extraction run owned by ``extractor``.
        r = await self.request(
            "extractor", "POST", "/-/llm-extract/api/runs",
            {"database": "news", "table": "target", "text": "Acme paid 12 dollars."},
        )
        assert r.status_code == 201, r.text
        run_id = r.json()["id"]
        self.ids["run"] = run_id

        async def finished():
            got = await self.request("extractor", "GET", f"/-/llm-extract/api/runs/{run_id}")
            return got.json()["status"] not in ACTIVE

        await wait_for(finished, timeout=10)
        # An answer asked by ``viewer``.
        r = await self.request("viewer", "POST", "/-/llm-rag/news/ask.json", {"q": "road budget"})
        assert r.status_code == 200, r.text
        self.ids["answer"] = r.json()["answer_id"]
        # An answer root got from rows of ``secret`` too: its permalink is root's alone.
        r = await self.request("root", "POST", "/-/llm-rag/news/ask.json", {"q": f"{SECRET_WORD} memo"})
        assert r.status_code == 200 and any(row["table"] == "secret" for row in r.json()["rows"]), r.text
        self.ids["secret_answer"] = r.json()["answer_id"]

    def fill(self, path: str) -> str:
        for key, value in self.ids.items():
            path = path.replace("{" + key + "}", value)
        return path


@dataclass
class Cell:
    route: str  # the regex exactly as registered ("" for Datasette's own pages)
    method: str
    path: str  # concrete path; {run} and {answer} are filled from the seeded world
    expect: str  # statuses for anon nobody viewer extractor root
    body: dict | None = None
    bug: str | None = None  # a known, reported bug: checked by test_known_bugs (strict xfail)

    def statuses(self) -> dict[str, int]:
        codes = [int(c) for c in self.expect.split()]
        assert len(codes) == len(ACTORS), self
        return dict(zip(ACTORS, codes, strict=True))


def suite_routes(ds) -> list[str]:
    found = []
    for impl in pm.hook.register_routes.get_hookimpls():
        module = getattr(impl.plugin, "__name__", "")
        if not module.startswith(SUITE_MODULES):
            continue
        kwargs = {name: ds for name in impl.argnames if name == "datasette"}
        for route in impl.function(**kwargs) or []:
            found.append(route[0])
    return found



X = "/-/llm-extract"
RUN = r"(?P<run_id>[0-9a-f]{16})"
SEG = r"[^/]+"
ACTIONS_RE = r"(?P<action>insert|cancel|undo|resume|discard)"
TARGET = {"database": "news", "table": "target", "text": "Acme paid 12"}
JOB = r"(?P<job_id>[0-9a-f]{16})"
NO_JOB = "0123456789abcdef"
ENRICH = {"database": "news", "table": "target", "source_columns": ["name"], "columns": [{"name": "note"}],
          "estimate_only": True}

#                      route regex (as registered)                             method  path                                   anon nobody viewer extractor root
MATRIX: list[Cell] = [
    Cell(rf"^{X}/?$", "GET", X, "403 403 403 200 200"),
    Cell(rf"^{X}/new/(?P<database>{SEG})$", "GET", f"{X}/new/news", "403 403 403 403 200"),
    Cell(rf"^{X}/into/(?P<database>{SEG})/(?P<table>{SEG})$", "GET", f"{X}/into/news/target", "403 403 403 200 200"),
    Cell(rf"^{X}/into/(?P<database>{SEG})/(?P<table>{SEG})$", "GET", f"{X}/into/news/public", "403 403 403 403 200"),
    Cell(rf"^{X}/into/(?P<database>{SEG})/(?P<table>{SEG})$", "GET", f"{X}/into/news/secret", "403 403 403 403 200"),
    Cell(rf"^{X}/estimate$", "POST", f"{X}/estimate", "403 403 403 200 200", TARGET),
    Cell(rf"^{X}/runs/{RUN}$", "GET", f"{X}/runs/{{run}}", "404 404 404 200 200"),
    Cell(rf"^{X}/runs/{RUN}/events$", "GET", f"{X}/runs/{{run}}/events", "404 404 404 200 200"),
    Cell(rf"^{X}/runs/{RUN}/{ACTIONS_RE}$", "POST", f"{X}/runs/{{run}}/cancel", "404 404 404 409 409"),
    Cell(rf"^{X}/runs/{RUN}/{ACTIONS_RE}$", "POST", f"{X}/runs/{{run}}/undo", "404 404 404 409 409"),
    Cell(rf"^{X}/api/runs$", "POST", f"{X}/api/runs", "403 403 403 201 201", TARGET),
    Cell(rf"^{X}/api/runs$", "POST", f"{X}/api/runs", "403 403 403 403 201", {**TARGET, "table": "secret"}),
    Cell(rf"^{X}/api/runs$", "POST", f"{X}/api/runs", "403 403 403 403 201",
         {**TARGET, "table": "fresh", "create": True, "schema": {"columns": [{"name": "name"}]}}),
    Cell(rf"^{X}/api/runs/{RUN}$", "GET", f"{X}/api/runs/{{run}}", "404 404 404 200 200"),
    Cell(rf"^{X}/api/runs/{RUN}/{ACTIONS_RE}$", "POST", f"{X}/api/runs/{{run}}/cancel", "404 404 404 409 409", {}),
    Cell(rf"^{X}/api/runs/{RUN}/{ACTIONS_RE}$", "POST", f"{X}/api/runs/{{run}}/discard", "404 404 404 200 409", {}),
    Cell(rf"^{X}/examples/(?P<database>{SEG})/(?P<table>{SEG})\.jsonl$", "GET", f"{X}/examples/news/target.jsonl", "403 403 403 200 200"),
    Cell(rf"^{X}/examples/(?P<database>{SEG})/(?P<table>{SEG})\.jsonl$", "GET", f"{X}/examples/news/secret.jsonl", "403 403 403 403 200"),
    # extractor holds a table-level grant: enough to save templates (issue 10, item 17)
    Cell(rf"^{X}/templates$", "POST", f"{X}/templates", "403 403 403 201 201", {"name": "t", "schema": {"columns": [{"name": "a"}]}}),
    Cell(rf"^{X}/templates/(?P<template_id>[0-9]{{1,18}})/delete$", "POST", f"{X}/templates/999999/delete", "403 404 404 404 404", {}),
    # a text document has no page image; rows of target were not extracted: no provenance card
    # (tests/test_extract_pages.py covers these routes with images, PDFs and inserted rows)
    Cell(rf"^{X}/runs/{RUN}/documents/(?P<document>\d+)/pages/(?P<page>\d+)$", "GET",
         f"{X}/runs/{{run}}/documents/0/pages/0", "404 404 404 404 404"),
    Cell(rf"^{X}/provenance/(?P<database>{SEG})/(?P<table>{SEG})/(?P<pks>[^/]+?)(\.(?P<format>json))?$", "GET",
         f"{X}/provenance/news/target/1", "404 404 404 404 404"),
    Cell(rf"^{X}/provenance/(?P<database>{SEG})/(?P<table>{SEG})/(?P<pks>[^/]+)/page$", "GET",
         f"{X}/provenance/news/target/1/page", "404 404 404 404 404"),
    # enrichment jobs (extract into new columns): llm-extract on the table plus update-row, which
    # 1.0 grants extractor nowhere here (0.65 has no such action: the llm-extract grant decides)
    Cell(rf"^{X}/enrich/new/(?P<database>{SEG})/(?P<table>{SEG})$", "GET", f"{X}/enrich/new/news/target",
         "403 403 403 403 200" if V1 else "403 403 403 200 200"),
    Cell(rf"^{X}/enrich/new/(?P<database>{SEG})/(?P<table>{SEG})$", "GET", f"{X}/enrich/new/news/secret",
         "403 403 403 403 200"),
    Cell(rf"^{X}/enrich/api/jobs$", "POST", f"{X}/enrich/api/jobs",
         "403 403 403 403 200" if V1 else "403 403 403 200 200", ENRICH),
    Cell(rf"^{X}/enrich/api/jobs$", "POST", f"{X}/enrich/api/jobs", "403 403 403 403 200",
         {**ENRICH, "table": "secret", "source_columns": ["body"]}),
    Cell(rf"^{X}/enrich/banner/(?P<database>[^/]+)/(?P<table>[^/]+)$", "GET", f"{X}/enrich/banner/news/target",
         "403 403 403 200 200"),
    Cell(rf"^{X}/enrich/banner/(?P<database>[^/]+)/(?P<table>[^/]+)$", "GET", f"{X}/enrich/banner/news/secret",
         "403 403 403 403 200"),
    Cell(rf"^{X}/enrich/jobs/{JOB}$", "GET", f"{X}/enrich/jobs/{NO_JOB}", "404 404 404 404 404"),
    Cell(rf"^{X}/enrich/jobs/{JOB}\.json$", "GET", f"{X}/enrich/jobs/{NO_JOB}.json", "404 404 404 404 404"),
    Cell(rf"^{X}/enrich/jobs/{JOB}/(?P<action>pause|resume|cancel|rest|review|write|undo)$", "POST",
         f"{X}/enrich/jobs/{NO_JOB}/undo", "404 404 404 404 404", {}),
    Cell(r"^/-/llm-ask$", "GET", "/-/llm-ask", "200 200 200 200 200"),
    Cell(r"^/-/llm-ask/(?P<database>[^/]+)$", "GET", "/-/llm-ask/news", "403 403 200 200 200"),
    Cell(r"^/-/llm-ask/(?P<database>[^/]+)$", "GET", "/-/llm-ask/news?q=budget", "403 403 200 200 200"),
    Cell(r"^/-/llm-ask/(?P<database>[^/]+)$", "GET", "/-/llm-ask/nosuchdb", "404 404 404 404 404"),
    Cell(r"^/-/llm-rag/feedback\.json$", "POST", "/-/llm-rag/feedback.json", "403 403 200 403 200", {"answer_id": "{answer}", "rating": "up"}),
    Cell(r"^/-/llm-rag/answers/(?P<answer_id>rag-[0-9a-f]{32})(?:\.(?P<format>json))?$", "GET",
         "/-/llm-rag/answers/{answer}", "403 403 200 200 200"),
    Cell(r"^/-/llm-rag/answers/(?P<answer_id>rag-[0-9a-f]{32})(?:\.(?P<format>json))?$", "GET",
         "/-/llm-rag/answers/{answer}.json", "403 403 200 200 200"),
    Cell(r"^/-/llm-rag/answers/(?P<answer_id>rag-[0-9a-f]{32})(?:\.(?P<format>json))?$", "GET",
         "/-/llm-rag/answers/{secret_answer}.json", "403 403 403 403 200"),
    Cell(r"^/-/llm-rag/answers/(?P<answer_id>rag-[0-9a-f]{32})(?:\.(?P<format>json))?$", "GET",
         "/-/llm-rag/answers/rag-00000000000000000000000000000000", "404 404 404 404 404"),
    Cell(r"^/-/llm-rag/limits(?:\.(?P<format>json))?$", "GET", "/-/llm-rag/limits", "403 403 403 403 200"),
    Cell(r"^/-/llm-rag/limits(?:\.(?P<format>json))?$", "GET", "/-/llm-rag/limits.json", "403 403 403 403 200"),
    Cell(r"^/-/llm-rag/index$", "GET", "/-/llm-rag/index", "403 403 403 403 200"),
    Cell(r"^/-/llm-rag/index/(?P<database>[^/]+?)\.json$", "GET", "/-/llm-rag/index/news.json", "403 403 403 403 200"),
    Cell(r"^/-/llm-rag/index/(?P<database>[^/]+)$", "GET", "/-/llm-rag/index/news", "403 403 403 403 200"),
    Cell(r"^/-/llm-rag/similar/(?P<database>[^/]+)/(?P<table>[^/]+)/(?P<pks>[^/]+?)(?:\.(?P<format>json))?$",
         "GET", "/-/llm-rag/similar/news/public/1", "403 403 200 200 200"),
    Cell(r"^/-/llm-rag/similar/(?P<database>[^/]+)/(?P<table>[^/]+)/(?P<pks>[^/]+?)(?:\.(?P<format>json))?$",
         "GET", "/-/llm-rag/similar/news/public/1.json", "403 403 200 200 200"),
    Cell(r"^/-/llm-rag/similar/(?P<database>[^/]+)/(?P<table>[^/]+)/(?P<pks>[^/]+?)(?:\.(?P<format>json))?$",
         "GET", "/-/llm-rag/similar/news/secret/1.json", "403 403 404 404 200"),
    Cell(r"^/-/llm-rag/similar/(?P<database>[^/]+)/(?P<table>[^/]+)/(?P<pks>[^/]+?)(?:\.(?P<format>json))?$",
         "GET", "/-/llm-rag/similar/news/secret/1", "403 403 404 404 200"),
    Cell(r"^/-/llm-rag/(?P<database>[^/]+)/search\.json$", "GET", "/-/llm-rag/news/search.json?q=budget", "403 403 200 200 200"),
    Cell(r"^/-/llm-rag/(?P<database>[^/]+)/ask\.json$", "POST", "/-/llm-rag/news/ask.json", "403 403 200 200 200", {"q": "road budget"}),
    Cell(r"^/-/llm-models$", "GET", "/-/llm-models", "403 403 403 403 200"),
    Cell(r"^/-/llm-models/test$", "POST", "/-/llm-models/test", "403 403 403 403 200", {"model_id": "scripted"}),
    # Datasette's own pages over the state database: call log, runs, answers, feedback.
    # Everyone's pasted documents live there: root too needs an explicit llm-view-log grant (#10.3).
    Cell("", "GET", "/llm_newsroom", "403 403 403 403 403"),
    Cell("", "GET", "/llm_newsroom/llm_calls.json", "403 403 403 403 403"),
    Cell("", "GET", "/llm_newsroom/llm_feedback.json", "403 403 403 403 403"),
    Cell("", "GET", "/llm_newsroom/llm_extract_runs.json", "403 403 403 403 403"),
    Cell("", "GET", ("/llm_newsroom/-/query.json" if V1 else "/llm_newsroom.json") + "?sql=select+*+from+llm_calls",
         "403 403 403 403 403"),
    Cell("", "GET", "/news/secret.json", "403 403 403 403 200"),
]


def _cell_id(cell: Cell) -> str:
    return f"{cell.method} {cell.path}"


async def run_cell(world, cell: Cell) -> dict[str, int]:
    import asyncio

    got = {}
    for name in ACTORS:
        body = json.loads(world.fill(json.dumps(cell.body))) if cell.body is not None else None
        response = await asyncio.wait_for(world.request(name, cell.method, world.fill(cell.path), body), 15)
        got[name] = response.status_code
        if response.status_code < 300 and name in ("anon", "nobody", "viewer"):
            assert SECRET_WORD not in response.text, (cell.path, name)
    return got


async def test_every_suite_route_is_in_the_matrix(world):
    registered = set(suite_routes(world.ds))
    assert len(registered) >= 15
    covered = {cell.route for cell in MATRIX}
    missing = sorted(registered - covered)
    assert not missing, "routes missing from the permission matrix (add one line each): " + ", ".join(missing)
    stale = sorted(covered - registered - {""})
    assert not stale, "matrix lines for routes that no longer exist: " + ", ".join(stale)


async def test_permission_matrix(world):
    cells = [c for c in MATRIX if c.bug is None]
    mismatches = []
    for cell in cells:
        got = await run_cell(world, cell)
        want = cell.statuses()
        if got != want:
            mismatches.append(f"{_cell_id(cell)}: want {want}, got {got}")
    assert not mismatches, "\n".join(mismatches)
    checked = len(cells) * len(ACTORS)
    assert checked >= 150


@pytest.mark.parametrize("cell", [c for c in MATRIX if c.bug], ids=_cell_id)
@pytest.mark.xfail(strict=True, reason="known bug, reported to the integrator")
async def test_known_bugs(world, cell):
    assert await run_cell(world, cell) == cell.statuses(), cell.bug


def _prompt_text(request) -> str:
    parts = [request.system or ""]
    for message in request.messages:
        parts += [getattr(p, "text", "") for p in message.parts]
    return "\n".join(parts)


async def _leak_probe(world, actor_name: str, question: str, tables) -> list[str]:
    """Bodies of every way ``actor_name`` can ask ``question``."""
    from urllib.parse import urlencode

    bodies = []
    params = [("q", question)] + [("table", t) for t in (tables or [])]
    for method, path, body in [
        ("GET", "/-/llm-rag/news/search.json?" + urlencode(params), None),
        ("GET", "/-/llm-ask/news?" + urlencode(params), None),
        ("POST", "/-/llm-rag/news/ask.json", {"q": question, "tables": tables}),
        ("POST", "/-/llm-rag/news/ask.json", {"q": question, "tables": tables, "stream": True}),
    ]:
        response = await world.request(actor_name, method, path, body)
        assert response.status_code in (200, 400, 404), (path, response.status_code, response.text[:300])
        bodies.append(response.text)
        if path.endswith("search.json") and response.status_code == 200:
            assert {row["table"] for row in response.json()["rows"]} <= {"public"}
    return bodies


@pytest.mark.parametrize("tables", [None, ["secret"], ["public", "secret"]])
@pytest.mark.parametrize("actor_name", ["viewer", "extractor"])
async def test_question_box_never_leaks_rows_the_actor_cannot_view(world, scripted_model, actor_name, tables):
    seen = len(scripted_model.requests)
    for question in (f"{SECRET_WORD} memo", "road budget cut", f"what does the {SECRET_WORD} memo say?"):
        for body in await _leak_probe(world, actor_name, question, tables):
            # The question itself may be echoed back; no row of ``secret`` may be.
            assert body.replace(SECRET_WORD + " memo", "").replace(f"the {SECRET_WORD}", "").count(SECRET_WORD) == 0
            assert "/news/secret/" not in body
    for request in scripted_model.requests[seen:]:
        data_part = _prompt_text(request).split("Question (")[0]
        assert SECRET_WORD not in data_part, "a row of an unviewable table reached the model"


async def test_root_does_retrieve_the_secret_rows(world):
    """Guards the leak test: the secret rows are retrievable for someone who may view them."""
    response = await world.request("root", "GET", f"/-/llm-rag/news/search.json?q={SECRET_WORD}+memo")
    assert response.status_code == 200
    assert "secret" in {row["table"] for row in response.json()["rows"]}


async def test_one_users_run_is_invisible_to_another_extractor(world, tmp_path):
    # A second actor with exactly the same grants as the owner still cannot see the run.
    run_id = world.ids["run"]
    cookies = {"ds_actor": world.ds.sign({"a": {"id": "extractor2"}}, "actor")}
    allowed_page = await world.ds.client.get("/-/llm-extract/into/news/target", cookies=cookies)
    assert allowed_page.status_code == 200  # the same grants as the owner
    for path in (f"/-/llm-extract/runs/{run_id}", f"/-/llm-extract/api/runs/{run_id}",
                 f"/-/llm-extract/runs/{run_id}/events"):
        response = await world.ds.client.get(path, cookies=cookies)
        assert response.status_code in (403, 404)
        assert "Acme" not in response.text


#: The suite's CLI commands. They run as the operator, with the file-system
#: access of whoever starts them: there is no actor to check. Each still
#: refuses to do anything without its arguments.
CLI_COMMANDS = {
    ("llm-extract", "run"): "operator: extracts files from a folder into a table of a database file",
    ("llm-extract", "evaluate"): "operator: scores extraction against a gold file",
    ("llm-extract", "enrich"): "operator: fills new columns of a table's rows in a database file",
    ("llm-rag", "index"): "operator: builds/verifies a sidecar next to a database file",
    ("llm-rag", "evaluate"): "operator: retrieval benchmark over BEIR files",
}


def suite_cli_commands() -> set[tuple[str, str]]:
    import click

    group = click.Group()
    for impl in pm.hook.register_commands.get_hookimpls():
        if getattr(impl.plugin, "__name__", "").startswith(SUITE_MODULES):
            impl.function(cli=group)
    found = set()
    for name, command in group.commands.items():
        subs = getattr(command, "commands", None)
        if subs:
            found |= {(name, sub) for sub in subs}
        else:
            found.add((name, ""))
    return found


def test_every_cli_command_is_listed_and_needs_its_arguments():
    from click.testing import CliRunner
    from datasette.cli import cli

    found = suite_cli_commands()
    assert found == set(CLI_COMMANDS), f"CLI commands changed: {sorted(found ^ set(CLI_COMMANDS))}"
    runner = CliRunner()
    for group, command in CLI_COMMANDS:
        result = runner.invoke(cli, [group, command])
        assert result.exit_code == 2, (group, command, result.output)
        assert "Missing argument" in result.output
