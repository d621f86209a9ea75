"""A newsroom published read-only: database and sidecar on a read-only mount,
served with ``-i`` and ``state_database: ":memory:"`` (issue #12, item 1).

The files sit on a read-only bind mount, which stops root too; where this
machine cannot mount, the module is skipped with the reason.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from datasette_llm_rag import sidecar
from datasette_llm_rag.sidecar import open_sidecar

from .fake_openai_server import FakeOpenAIServer
from .publish_helpers import (
    MountUnavailable,
    PublicServer,
    config_flag,
    index_database,
    read_only_mount,
)

ARTICLES = [
    (1, "Bridge repairs delayed", "The council delayed the bridge repairs until spring."),
    (2, "Library hours", "The central library opens on Sundays from March."),
    (3, "School lunch prices", "School lunch prices rise by ten cents next year."),
]
ANSWER = "The council delayed the bridge repairs until spring [1]."


def make_documents(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "documents.db"
    conn = sqlite3.connect(db)
    conn.execute("create table articles (id integer primary key, title text, body text)")
    conn.executemany("insert into articles values (?, ?, ?)", ARTICLES)
    conn.commit()
    conn.close()
    return db


def plugin_config(base_url: str, **extra) -> dict:
    return {
        "state_database": ":memory:",
        "models": [{"id": "fake", "provider": "openai-compatible", "model": "fake-model",
                    "base_url": base_url, "supports": ["streaming"], "timeout": 30}],
        "embedding_models": [{"id": "fake-embed", "provider": "openai-compatible",
                              "model": "fake-embedding", "base_url": base_url, "dimensions": 64}],
        "defaults": {"answer": "fake", "embed": "fake-embed"},
        "permissions": {"databases": {"documents": {"llm-ask": True}}},
        "rag": {"embedding_model": "fake-embed", "min_score": -1,
                "databases": {"documents": {"tables": {
                    "articles": {"columns": ["title", "body"], "title_column": "title"}}}}},
        **extra,
    }


@pytest.fixture(scope="module")
def fake_model():
    with FakeOpenAIServer(default=ANSWER, token_delay=0.0, ttft=0.0) as fake:
        yield fake


@pytest.fixture(scope="module")
def published(tmp_path_factory, fake_model):
    """documents.db and its sidecar, built, then served from a read-only mount."""
    base = tmp_path_factory.mktemp("published")
    src = base / "build"
    db = make_documents(src)
    config = base / "config.json"
    config.write_text(json.dumps({"plugins": {"datasette-llm-newsroom":
                                              plugin_config(fake_model.base_url)}}))
    index_database(db, config)
    assert sorted(p.name for p in src.iterdir()) == ["documents.db", "documents.llm-rag.db"]
    try:
        with read_only_mount(src, base / "ro") as ro:
            server = PublicServer(["-i", str(ro / "documents.db"), config_flag(), str(config)],
                                  base / "server.log")
            with server:
                yield server, ro
    except MountUnavailable as e:
        pytest.skip(f"cannot make a read-only mount here: {e}")


def test_the_mount_really_is_read_only(published):
    _server, ro = published
    with pytest.raises(OSError):
        (ro / "probe").write_text("x")
    assert sidecar.read_only_location(str(ro / "documents.llm-rag.db"))


def test_anonymous_search_works_on_a_read_only_mount(published):
    server, ro = published
    status, body = server.json("GET", "/-/llm-rag/documents/search.json?q=bridge+repairs")
    assert status == 200, body
    assert body["rows"] and body["rows"][0]["title"] == "Bridge repairs delayed"
    # nothing was (or could be) written beside the files
    assert sorted(p.name for p in ro.iterdir()) == ["documents.db", "documents.llm-rag.db"]
    assert "Cannot write" not in server.log.read_text()


def test_anonymous_answer_works_on_a_read_only_mount(published):
    server, _ro = published
    status, body = server.json("POST", "/-/llm-rag/documents/ask.json",
                               {"q": "Why were the bridge repairs delayed?"})
    assert status == 200, body
    assert body["mode"] == "answer" and "spring" in body["answer"]
    assert body["cited_rows"][0]["title"] == "Bridge repairs delayed"


def test_the_ask_page_searches_on_a_read_only_mount(published):
    server, _ro = published
    status, html, _ = server.get("/-/llm-ask/documents?q=library")
    assert status == 200
    assert b"Library hours" in html and b"cannot be read" not in html


def test_index_page_shows_a_read_only_state_and_offers_no_refresh(published):
    server, _ro = published
    status, html, _ = server.get("/-/llm-rag/index/documents", root=True)
    text = html.decode()
    assert status == 200
    assert "Read-only" in text and "cannot be refreshed here" in text
    assert 'value="Refresh index"' not in text
    assert "Up to date" in text  # the counts were read through the read-only handle
    status, info = server.json("GET", "/-/llm-rag/index/documents.json", root=True)
    assert status == 200 and info["info"]["read_only"] is True
    assert info["info"]["error"] is None
    # a refresh asked for anyway is refused with a way out, and no job starts
    status, raw = server.csrf_post("/-/llm-rag/index/documents", "/-/llm-rag/index/documents",
                                   {}, headers={"accept": "application/json"})
    assert status == 409 and "datasette llm-rag index" in json.loads(raw)["error"]
    status, info = server.json("GET", "/-/llm-rag/index/documents.json", root=True)
    assert info["job"] is None


def test_check_for_changed_rows_works_read_only(published):
    server, _ro = published
    status, html, _ = server.get("/-/llm-rag/index/documents?verify=1", root=True)
    assert status == 200
    assert b"The index is up to date." in html, html.decode()[-3000:]


# --------------------------------------------------------------- the sidecar alone
def test_sidecar_with_unmerged_wal_on_read_only_mount_gets_a_clear_message(tmp_path):
    """A sidecar copied while its writer was open carries a -wal: read-only,
    SQLite cannot use it safely, so the message says how to publish it."""
    src = tmp_path / "build"
    src.mkdir()
    path = src / "news.llm-rag.db"
    writer = open_sidecar(str(path), create=True)
    writer.execute("pragma wal_autocheckpoint=0")
    writer.execute("insert into meta (key, value) values ('note', 'in the wal')")
    assert (src / "news.llm-rag.db-wal").stat().st_size > 0
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("news.llm-rag.db", "news.llm-rag.db-wal"):
        shutil.copy(src / name, copy / name)
    writer.close()
    try:
        with read_only_mount(copy, tmp_path / "ro") as ro:
            with pytest.raises(Exception) as info:
                open_sidecar(str(ro / "news.llm-rag.db"), readonly=True)
    except MountUnavailable as e:
        pytest.skip(f"cannot make a read-only mount here: {e}")
    message = str(info.value)
    assert "read-only" in message and "datasette llm-rag index" in message
    assert "Cannot write" not in message


def test_forgetting_state_database_on_a_read_only_image_says_what_to_set(published, fake_model):
    """With no state_database, the default file beside the server cannot be
    created on a read-only disk: the server stops with the setting to use."""
    import subprocess
    import sys

    from .publish_helpers import REPO

    _server, ro = published
    plugin = plugin_config(fake_model.base_url)
    del plugin["state_database"]
    config = ro.parent / "no-state.json"
    config.write_text(json.dumps({"plugins": {"datasette-llm-newsroom": plugin}}))
    env = {k: v for k, v in __import__("os").environ.items() if k != "DATASETTE_LLM_NEWSROOM_STATE"}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(
        [sys.executable, "-m", "datasette", "serve", "-i", "documents.db", config_flag(), str(config),
         "-h", "127.0.0.1", "-p", "0"],
        cwd=ro, env=env, capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert "read-only" in output and 'state_database: ":memory:"' in output, output[-2000:]


def test_a_writable_volume_for_the_state_keeps_permalinks_across_restarts(published, fake_model,
                                                                          tmp_path):
    """The image stays read-only; the state database lives on a volume named at run time."""
    _server, ro = published
    plugin = plugin_config(fake_model.base_url)
    del plugin["state_database"]
    config = tmp_path / "volume.json"
    config.write_text(json.dumps({"plugins": {"datasette-llm-newsroom": plugin}}))
    volume = tmp_path / "volume"
    env = {"DATASETTE_LLM_NEWSROOM_STATE": str(volume / "llm_newsroom.db")}
    args = ["-i", str(ro / "documents.db"), config_flag(), str(config)]
    with PublicServer(args, tmp_path / "first.log", cwd=ro, env=env) as server:
        status, body = server.json("POST", "/-/llm-rag/documents/ask.json",
                                   {"q": "Why were the bridge repairs delayed?"})
        assert status == 200 and body["answer"], body
    with PublicServer(args, tmp_path / "second.log", cwd=ro, env=env) as server:
        status, page = server.json("GET", body["permalink"] + ".json")
        assert status == 200 and page["answer"] == body["answer"]
    assert (volume / "llm_newsroom.db").exists()
