"""Bad inputs: every case gets a clear error that says what to do, and writes nothing.

Cases are data (one line each). Pure-logic cases call the suite's
validators directly; page/API cases go through Datasette and hash the
database files before and after to prove nothing was written.
"""

from __future__ import annotations

import struct
import zlib

import pytest
from datasette.app import Datasette

from datasette_llm_core.config import parse_settings
from datasette_llm_core.errors import ConfigError
from datasette_llm_core.permissions import parse_grants
from datasette_llm_extract.documents import InputError, load_upload
from datasette_llm_extract.schema import SchemaError, validate_table_spec


def png(width: int, height: int, *, damaged: bool = False) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = b"\x89PNG\r\n\x1a\n"
    if damaged:
        return header + b"\x00\x00garbage that is not a PNG chunk"
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return header + ihdr + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


PDF_BYTES = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
HEIC_BYTES = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64

# (id, filename, declared content type, bytes, max_bytes, [phrases the message must contain])
UPLOAD_CASES = [
    ("zero-byte-text", "notes.txt", "text/plain", b"", None, ["empty", "choose the file again"]),
    ("zero-byte-image", "scan.png", "image/png", b"", None, ["empty"]),
    ("oversized", "big.txt", "text/plain", b"a" * 5000, 1000, ["limit", "Split"]),
    ("png-labelled-text", "receipt.txt", "text/plain", png(10, 10), None, ["really image/png", "rename"]),
    ("pdf-labelled-jpeg", "photo.jpg", "image/jpeg", PDF_BYTES, None, ["really application/pdf"]),
    ("text-labelled-png", "chart.png", "image/png", b"just some words", None, ["labelled image/png", "right file"]),
    ("text-labelled-pdf", "report.pdf", "application/pdf", b"plain words, no pdf", None, ["not a pdf"]),
    ("image-bomb-64mp", "bomb.png", "image/png", png(8000, 8000), None, ["megapixels", "Resize"]),
    ("image-bomb-400mp", "bomb2.png", "image/png", png(20000, 20000), None, ["megapixels", "Resize"]),
    ("image-bomb-10gp", "bomb3.png", "image/png", png(100000, 100000), None, ["megapixels", "Resize"]),
    ("invalid-utf8", "latin1.txt", "text/plain", "café déjà".encode("latin-1"), None, ["UTF-8", "save it"]),
    ("binary-nul", "blob.bin", "application/octet-stream", b"\x00\x01\x02" * 50, None, ["not a supported file type"]),
    ("heic-photo", "IMG_0001.HEIC", "image/heic", HEIC_BYTES, None, ["HEIC", "convert it to JPEG"]),
    ("damaged-png", "broken.png", "image/png", png(1, 1, damaged=True), None, ["could not be read", "save it again"]),
    ("damaged-pdf", "broken.pdf", "application/pdf", b"%PDF-1.7\n\x00garbage", None, ["could not be read", "try again"]),
]


@pytest.mark.parametrize(
    "filename,content_type,data,max_bytes,phrases",
    [case[1:] for case in UPLOAD_CASES],
    ids=[case[0] for case in UPLOAD_CASES],
)
def test_bad_upload_is_refused_with_advice(filename, content_type, data, max_bytes, phrases):
    kwargs = {"max_bytes": max_bytes} if max_bytes else {}
    with pytest.raises(InputError) as info:
        load_upload(filename, content_type, data, **kwargs)
    message = str(info.value)
    for phrase in phrases:
        assert phrase.lower() in message.lower(), (phrase, message)


def test_upload_name_cannot_traverse_paths():
    doc = load_upload("../../etc/passwd.txt", "text/plain", b"hello")
    assert doc.name == "passwd.txt"
    doc = load_upload("..\\..\\boot.ini.txt", "text/plain", b"hello")
    assert "\\" not in doc.name and "/" not in doc.name


def _cols(*names):
    return {"columns": [{"name": n} for n in names]}


# (id, spec, [phrases the message must contain])
SCHEMA_CASES = [
    ("not-an-object", "name, date", ["must be an object"]),
    ("no-columns", {"columns": []}, ["no columns", "add at least one"]),
    ("empty-name", _cols(""), ["no name", "give every column a name"]),
    ("leading-space", _cols(" name"), ["space", "remove it"]),
    ("nul-in-name", _cols("na\x00me"), ["control characters"]),
    ("newline-in-name", _cols("na\nme"), ["control characters"]),
    ("rtl-override-name", _cols("evil\u202ename"), ["control characters"]),
    ("too-long-name", _cols("x" * 65), ["longer than", "shorten it"]),
    ("reserved-llm-prefix", _cols("_llm_run_id"), ["reserved", "rename it"]),
    ("reserved-rowid", _cols("rowid"), ["reserved", "rename it"]),
    ("reserved-source-quote", _cols("source_quote"), ["reserved", "rename it"]),
    ("duplicate-columns", _cols("Name", "name"), ["used twice", "rename one"]),
    ("unknown-type", {"columns": [{"name": "n", "type": "blob"}]}, ["unknown type", "use one of"]),
    ("choice-without-choices", {"columns": [{"name": "c", "type": "choice"}]}, ["without choices", "list the allowed"]),
    ("duplicate-choices", {"columns": [{"name": "c", "type": "choice", "choices": ["a", "a"]}]}, ["same choice twice"]),
    ("key-not-a-column", {**_cols("a"), "key_columns": ["b"]}, ["not one of the columns"]),
    ("unknown-schema-field", {**_cols("a"), "table": "users"}, ["unknown schema fields", "remove them"]),
    ("too-many-columns", _cols(*[f"c{i}" for i in range(101)]), ["limit is 100"]),
    ("column-not-object", {"columns": [5]}, ["not an object"]),
]


@pytest.mark.parametrize("spec,phrases", [c[1:] for c in SCHEMA_CASES], ids=[c[0] for c in SCHEMA_CASES])
def test_bad_schema_is_refused_with_advice(spec, phrases):
    with pytest.raises(SchemaError) as info:
        validate_table_spec(spec)
    message = str(info.value)
    assert message.startswith("Please fix the schema") or "schema" in message.lower()
    for phrase in phrases:
        assert phrase.lower() in message.lower(), (phrase, message)


# (id, plugin config, [phrases])
CONFIG_CASES = [
    ("unknown-key", {"modles": []}, ["modles", "README"]),
    ("unknown-provider", {"models": [{"id": "m", "provider": "openia"}]}, ["provider", "README"]),
    ("model-without-id", {"models": [{"provider": "openai"}]}, ["id", "README"]),
    ("zero-attempts", {"retries": {"max_attempts": 0}}, ["max_attempts"]),
    ("negative-timeout", {"timeout": -5}, ["timeout"]),
    ("not-a-mapping", ["models"], ["Invalid configuration"]),
]


@pytest.mark.parametrize("raw,phrases", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_plugin_config_is_refused_with_advice(raw, phrases):
    with pytest.raises(ConfigError) as info:
        parse_settings(raw)
    for phrase in phrases:
        assert phrase in str(info.value), (phrase, str(info.value))


async def test_bad_plugin_config_stops_startup_with_the_same_message():
    ds = Datasette(memory=True, metadata={"plugins": {"datasette-llm-newsroom": {"state_database": ":memory:", "modles": []}}})
    with pytest.raises(ConfigError) as info:
        await ds.invoke_startup()
    assert "modles" in str(info.value) and "README" in str(info.value)


GRANT_CASES = [
    ("unknown-action", {"llm-everything": True}, ["Unknown action", "Use one of"]),
    ("log-on-database", {"databases": {"news": {"llm-view-log": True}}}, ["cannot be granted", "instance level"]),
    ("ask-on-table", {"databases": {"news": {"tables": {"t": {"llm-ask": True}}}}}, ["cannot be granted", "on a database"]),
    ("database-not-mapping", {"databases": {"news": ["llm-ask"]}}, ["must be a mapping"]),
    ("permissions-not-mapping", "llm-ask", ["must be a mapping"]),
]


@pytest.mark.parametrize("raw,phrases", [c[1:] for c in GRANT_CASES], ids=[c[0] for c in GRANT_CASES])
def test_bad_permissions_config_is_refused_with_advice(raw, phrases):
    with pytest.raises(ConfigError) as info:
        parse_grants(raw)
    for phrase in phrases:
        assert phrase in str(info.value), (phrase, str(info.value))


# --- search index (sidecar) ---------------------------------------------------

import hashlib  # noqa: E402
import sqlite3  # noqa: E402
from pathlib import Path  # noqa: E402

from datasette_llm_rag.indexer import refresh_index, verify  # noqa: E402
from datasette_llm_rag.sidecar import SidecarError  # noqa: E402

from .fakes import HashEmbeddingModel  # noqa: E402

RAG = {"databases": {"news": {"tables": {"articles": {"columns": ["body"], "title_column": "title"}}}}}


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "absent"


def hashes(*paths: Path) -> dict:
    return {p.name: file_hash(p) for p in paths}


def make_source(tmp_path: Path) -> Path:
    db = tmp_path / "news.db"
    conn = sqlite3.connect(db)
    conn.execute("create table articles (id integer primary key, title text, body text)")
    conn.executemany("insert into articles values (?, ?, ?)", [(i, f"t{i}", f"budget story {i}") for i in range(1, 30)])
    conn.commit()
    conn.close()
    return db


def _garbage(side: Path) -> None:
    side.write_bytes(b"this is not an index" * 100)


def _truncated(side: Path) -> None:
    data = side.read_bytes()
    side.write_bytes(data[: len(data) // 3])


def _tables_dropped(side: Path) -> None:
    conn = sqlite3.connect(side)
    conn.execute("drop table vectors")
    conn.commit()
    conn.close()


# (id, how to damage the sidecar, [phrases])
SIDECAR_CASES = [
    ("garbage-bytes", _garbage, ["rebuild"]),
    ("truncated-file", _truncated, ["rebuild"]),
    ("table-dropped", _tables_dropped, ["missing tables", "rebuild"]),
]


@pytest.mark.parametrize("damage,phrases", [c[1:] for c in SIDECAR_CASES], ids=[c[0] for c in SIDECAR_CASES])
async def test_corrupt_sidecar_gives_rebuild_advice_and_leaves_files_alone(tmp_path, damage, phrases):
    db = make_source(tmp_path)
    side = tmp_path / "news.llm-rag.db"
    await refresh_index(str(db), "news", RAG, HashEmbeddingModel(), sidecar=str(side))
    for suffix in ("-wal", "-shm"):
        Path(str(side) + suffix).unlink(missing_ok=True)
    damage(side)
    before = hashes(db, side)
    with pytest.raises(SidecarError) as info:
        await verify(str(db), "news", RAG, HashEmbeddingModel(), sidecar=str(side))
    message = str(info.value)
    assert str(side) in message
    for phrase in phrases:
        assert phrase.lower() in message.lower(), (phrase, message)
    assert hashes(db, side) == before


async def test_index_built_with_another_model_is_refused_not_mixed(tmp_path):
    db = make_source(tmp_path)
    side = tmp_path / "news.llm-rag.db"
    await refresh_index(str(db), "news", RAG, HashEmbeddingModel(), sidecar=str(side))
    conn = sqlite3.connect(side)
    entries_before = conn.execute("select count(*) from entries").fetchone()[0]
    conn.close()
    other = HashEmbeddingModel(model_id="other-embed", dimensions=32)
    from datasette_llm_rag.sidecar import ModelMismatchError

    with pytest.raises(ModelMismatchError) as info:
        await refresh_index(str(db), "news", RAG, other, sidecar=str(side))
    assert "--rebuild" in str(info.value)
    conn = sqlite3.connect(side)
    assert conn.execute("select count(*) from entries").fetchone()[0] == entries_before
    assert dict(conn.execute("select key, value from meta"))["embedding_model"] == "hash-embed"
    conn.close()


async def test_unknown_table_in_rag_config_is_a_clear_error(tmp_path):
    db = make_source(tmp_path)
    side = tmp_path / "news.llm-rag.db"
    before = hashes(db)
    bad = {"databases": {"news": {"tables": {"artciles": {"columns": ["body"]}}}}}
    with pytest.raises(ConfigError) as info:
        await refresh_index(str(db), "news", bad, HashEmbeddingModel(), sidecar=str(side))
    assert "artciles" in str(info.value) and "Available tables: articles" in str(info.value)
    assert hashes(db) == before


async def test_unknown_column_in_rag_config_is_a_clear_error(tmp_path):
    db = make_source(tmp_path)
    side = tmp_path / "news.llm-rag.db"
    before = hashes(db)
    bad = {"databases": {"news": {"tables": {"articles": {"columns": ["bdy"]}}}}}
    with pytest.raises(ConfigError) as info:
        await refresh_index(str(db), "news", bad, HashEmbeddingModel(), sidecar=str(side))
    assert "bdy" in str(info.value) and "Available columns" in str(info.value)
    assert hashes(db) == before


# --- pages and JSON APIs of a running Datasette -----------------------------------
# Each case is one request as root (who may do everything, so only the input
# is wrong). The source database, its search index and the state database are
# hashed before and after: a refused request writes nothing.

import json as _json  # noqa: E402

from datasette_llm_core import permissions as _P  # noqa: E402

WEB_RAG = {"articles": {"columns": ["title", "body"], "title_column": "title"}}
BIG = 2_000_001


@pytest.fixture
async def site(tmp_path, fake_models, scripted_model):
    news = tmp_path / "news.db"
    conn = sqlite3.connect(news)
    conn.execute("create table target (id integer primary key, name text, amount integer)")
    conn.execute("create table articles (id integer primary key, title text, body text)")
    conn.executemany("insert into articles values (?, ?, ?)", [(i, f"t{i}", f"road budget {i}") for i in range(1, 9)])
    conn.commit()
    conn.close()
    side = tmp_path / "news.llm-rag.db"
    await refresh_index(str(news), "news", {"databases": {"news": {"tables": WEB_RAG}}}, HashEmbeddingModel(),
                        sidecar=str(side))
    for suffix in ("-wal", "-shm"):
        Path(str(side) + suffix).unlink(missing_ok=True)
    scripted_model.responder = lambda request: '{"rows": []}' if request.json_schema else "Nothing [1]."
    plugin = {
        "state_database": str(tmp_path / "state.db"),
        "defaults": {"extract": "scripted", "answer": "scripted", "embed": "hash-embed"},
        "extract": {"max_text_chars": BIG - 1},
        "rag": {"embedding_model": "hash-embed",
                "databases": {"news": {"sidecar": str(side), "tables": WEB_RAG}}},
    }
    config = {"plugins": {"datasette-llm-newsroom": plugin}}
    ds = Datasette([str(news)], config=config) if _P.IS_V1 else Datasette([str(news)], metadata=config)
    if _P.IS_V1:
        ds.root_enabled = True
    await ds.invoke_startup()
    # Settle the state database (migrations, WAL) before hashing it.
    await ds.client.get("/-/llm-ask/news", cookies=_root(ds))
    return ds, [news, side, tmp_path / "state.db"]


def _root(ds):
    return {"ds_actor": ds.sign({"a": {"id": "root"}}, "actor")}


async def _csrf(ds, jar) -> dict:
    page = await ds.client.get("/-/llm-extract/into/news/target", cookies=jar)
    token = page.cookies.get("ds_csrftoken")
    if token:
        jar["ds_csrftoken"] = token
        return {"x-csrftoken": token}
    return {}


def _db_hashes(paths) -> dict:
    return {p.name: file_hash(p) for p in paths}


TARGET_JSON = {"database": "news", "table": "target", "columns": ["name", "amount"], "text": "Acme paid 12."}
NEW_TABLE = {"database": "news", "create": True, "text": "Acme paid 12.", "schema": {"columns": [{"name": "name"}]}}
RUNS = "/-/llm-extract/api/runs"
ASK = "/-/llm-rag/news/ask.json"

# (id, method, path, json body or raw bytes, expected status, [phrases in the error])
WEB_CASES = [
    ("extract-unknown-database", "POST", RUNS, {**TARGET_JSON, "database": "nope"}, 404, ["no database called 'nope'"]),
    # root may not even view the state database without an explicit llm-view-log grant (#10.3)
    ("extract-state-database", "POST", RUNS, {**TARGET_JSON, "database": "llm_newsroom"}, 403, ["llm_newsroom"]),
    ("extract-unknown-table", "POST", RUNS, {**TARGET_JSON, "table": "nope"}, 404, ["nope"]),
    ("extract-unknown-model", "POST", RUNS, {**TARGET_JSON, "model": "gpt-9-ultra"}, 400, ["gpt-9-ultra", "available"]),
    ("extract-empty-text", "POST", RUNS, {**TARGET_JSON, "text": ""}, 400, ["paste some text"]),
    ("extract-huge-paste", "POST", RUNS, {**TARGET_JSON, "text": "x" * BIG}, 400, ["limit", "Split"]),
    ("extract-text-not-string", "POST", RUNS, {**TARGET_JSON, "text": 12}, 400, ["must be a string"]),
    ("extract-body-not-json", "POST", RUNS, b"{not json", 400, ["JSON"]),
    ("extract-body-array", "POST", RUNS, b"[1, 2]", 400, ["object"]),
    ("extract-body-bad-utf8", "POST", RUNS, b'{"database": "news", "text": "\xff\xfe"}', 400, []),
    ("new-table-exists", "POST", RUNS, {**NEW_TABLE, "table": "target"}, 400, ["already exists", "pick another name"]),
    ("new-table-no-name", "POST", RUNS, {**NEW_TABLE, "table": "  "}, 400, ["Give the new table a name"]),
    ("new-table-sqlite-prefix", "POST", RUNS, {**NEW_TABLE, "table": "sqlite_master"}, 400, ["reserved"]),
    ("new-table-llm-prefix", "POST", RUNS, {**NEW_TABLE, "table": "_llm_runs"}, 400, ["reserved"]),
    ("new-table-control-chars", "POST", RUNS, {**NEW_TABLE, "table": "bad\nname"}, 400, ["control characters"]),
    ("new-table-too-long", "POST", RUNS, {**NEW_TABLE, "table": "t" * 65}, 400, ["shorten it"]),
    ("new-table-duplicate-columns", "POST", RUNS,
     {**NEW_TABLE, "table": "fresh", "schema": {"columns": [{"name": "Name"}, {"name": "name"}]}}, 400, ["used twice"]),
    ("new-table-hostile-column", "POST", RUNS,
     {**NEW_TABLE, "table": "fresh", "schema": {"columns": [{"name": "a\x00b"}]}}, 400, ["control characters"]),
    ("new-table-no-schema", "POST", RUNS, {**NEW_TABLE, "table": "fresh", "schema": None}, 400, ["schema"]),
    ("unknown-run", "GET", f"{RUNS}/0123456789abcdef", None, 404, ["No such extraction run"]),
    ("unknown-run-action", "POST", f"{RUNS}/0123456789abcdef/insert", {"accept": "all_valid"}, 404, []),
    ("ask-unknown-database", "POST", "/-/llm-rag/nope/ask.json", {"q": "road"}, 404, ["not found"]),
    ("ask-q-not-string", "POST", ASK, {"q": ["road"]}, 400, ["q must be a string"]),
    ("ask-body-not-json", "POST", ASK, b"{nope", 400, ["not valid JSON"]),
    ("ask-body-array", "POST", ASK, b"[]", 400, ["must be an object"]),
    ("ask-huge-question", "POST", ASK, {"q": "road " * 5000}, 400, ["Shorten it"]),
    ("ask-empty-question", "POST", ASK, {"q": "   "}, 400, []),
    ("search-unknown-database", "GET", "/-/llm-rag/nope/search.json?q=road", None, 404, ["not found"]),
    ("similar-unknown-table", "GET", "/-/llm-rag/similar/news/nope/1.json", None, 404, ["nope"]),
    ("feedback-unknown-answer", "POST", "/-/llm-rag/feedback.json", {"answer_id": "rag-nope", "rating": "up"}, 404, ["Unknown answer_id"]),
    ("feedback-bad-rating", "POST", "/-/llm-rag/feedback.json", {"answer_id": "x", "rating": "meh"}, 400, ["rating"]),
    ("template-bad-schema", "POST", "/-/llm-extract/templates", {"name": "t", "schema": {"columns": []}}, 400, ["no columns"]),
]


@pytest.mark.parametrize("method,path,body,status,phrases", [c[1:] for c in WEB_CASES], ids=[c[0] for c in WEB_CASES])
async def test_bad_request_is_refused_clearly_and_writes_nothing(site, method, path, body, status, phrases):
    ds, files = site
    jar = _root(ds)
    headers = await _csrf(ds, jar)
    before = _db_hashes(files)
    kwargs = {"cookies": jar, "headers": dict(headers)}
    if isinstance(body, bytes):
        kwargs["content"] = body
        kwargs["headers"]["content-type"] = "application/json"
    elif body is not None:
        kwargs["json"] = body
    response = await ds.client.request(method, path, **kwargs)
    assert response.status_code == status, (response.status_code, response.text[:300])
    payload = response.json()
    assert payload.get("ok") is False
    message = payload.get("error") or ""
    assert message and "Traceback" not in message
    for phrase in phrases:
        assert phrase.lower() in message.lower(), (phrase, message)
    assert _db_hashes(files) == before


# (id, filename, content type, bytes, [phrases shown on the page])
FORM_UPLOADS = [
    ("form-zero-byte", "empty.txt", "text/plain", b"", ["empty"]),
    ("form-mislabelled", "receipt.txt", "text/plain", png(10, 10), ["really image/png"]),
    ("form-image-bomb", "bomb.png", "image/png", png(30000, 30000), ["megapixels"]),
    ("form-invalid-utf8", "notes.txt", "text/plain", "déjà vu".encode("latin-1"), ["UTF-8"]),
    ("form-heic", "IMG_1.heic", "image/heic", HEIC_BYTES, ["convert it to JPEG"]),
]


@pytest.mark.parametrize("filename,ctype,data,phrases", [c[1:] for c in FORM_UPLOADS], ids=[c[0] for c in FORM_UPLOADS])
async def test_bad_upload_through_the_form_is_shown_and_writes_nothing(site, filename, ctype, data, phrases):
    import html as html_lib

    ds, files = site
    jar = _root(ds)
    headers = await _csrf(ds, jar)
    fields = {"col-0-name": "name", "col-0-type": "text", "col-1-name": "amount", "col-1-type": "integer",
              "text": "", "instructions": ""}
    if "x-csrftoken" in headers:
        fields["csrftoken"] = headers["x-csrftoken"]
    before = _db_hashes(files)
    response = await ds.client.post(
        "/-/llm-extract/into/news/target", cookies=jar, data=fields,
        files={"files": (filename, data, ctype)},
    )
    assert response.status_code == 400, (response.status_code, response.text[-500:])
    text = html_lib.unescape(response.text)
    for phrase in phrases:
        assert phrase in text, phrase
    assert _db_hashes(files) == before


async def test_broken_rag_config_gives_a_page_with_the_fix_not_a_traceback(tmp_path, fake_models):
    news = tmp_path / "news.db"
    sqlite3.connect(news).close()
    plugin = {"state_database": ":memory:", "rag": {"databases": {"news": {"tables": {"t": {"colums": ["x"]}}}}}}
    config = {"plugins": {"datasette-llm-newsroom": plugin}}
    ds = Datasette([str(news)], config=config) if _P.IS_V1 else Datasette([str(news)], metadata=config)
    await ds.invoke_startup()
    response = await ds.client.get("/-/llm-ask", cookies=_root(ds))
    assert response.status_code == 500
    assert "colums" in response.text and "rag" in response.text
    assert "Traceback" not in response.text


# --- the command line ------------------------------------------------------------

def _cli(args):
    from click.testing import CliRunner
    from datasette.cli import cli

    return CliRunner().invoke(cli, args)


def test_cli_index_missing_database_file(tmp_path):
    result = _cli(["llm-rag", "index", str(tmp_path / "nope.db")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_cli_index_broken_metadata_file(tmp_path):
    db = make_source(tmp_path)
    bad = tmp_path / "metadata.yml"
    bad.write_text("plugins:\n  datasette-llm-newsroom: [unclosed\n")
    before = hashes(db)
    result = _cli(["llm-rag", "index", str(db), "-m", str(bad)])
    assert result.exit_code == 1
    assert "Cannot read" in result.output and "Fix its syntax" in result.output
    assert "Traceback" not in result.output
    assert hashes(db) == before
    assert not (tmp_path / "news.llm-rag.db").exists()


def test_cli_verify_corrupt_sidecar_says_rebuild(tmp_path):
    db = make_source(tmp_path)
    meta = tmp_path / "metadata.json"
    meta.write_text(_json.dumps({"plugins": {"datasette-llm-newsroom": {
        "state_database": str(tmp_path / "state.db"),
        "rag": {"databases": {"news": {"tables": RAG["databases"]["news"]["tables"]}}}}}}))
    side = tmp_path / "news.llm-rag.db"
    side.write_bytes(b"garbage" * 500)
    before = hashes(db, side)
    flag = "-c" if _P.IS_V1 else "-m"
    result = _cli(["llm-rag", "index", str(db), flag, str(meta), "--verify"])
    assert result.exit_code == 1, result.output
    assert "rebuild" in result.output and "damaged" in result.output
    assert "Traceback" not in result.output
    assert hashes(db, side) == before


def test_cli_extract_run_missing_folder(tmp_path):
    result = _cli(["llm-extract", "run", str(tmp_path / "news.db"), "target", str(tmp_path / "nope")])
    assert result.exit_code == 2


async def test_hostile_but_legal_names_round_trip_through_the_site(site, scripted_model):
    """Names full of SQL are accepted as names: the new table gets exactly them, nothing else changes."""
    from datasette_llm_extract.runs import ACTIVE

    from .conftest import wait_for

    ds, files = site
    table = 'x"; DROP TABLE target;--'
    columns = ['a"b', "[c]", "select", "d'); DELETE FROM articles;--", "é 名"]
    values = {name: f"v{i}" for i, name in enumerate(columns)}
    scripted_model.responder = lambda request: _json.dumps({"rows": [{**values, "source_quote": "Acme"}]})
    jar = _root(ds)
    headers = await _csrf(ds, jar)
    r = await ds.client.post(RUNS, cookies=jar, headers=headers, json={
        **NEW_TABLE, "table": table, "schema": {"columns": [{"name": n} for n in columns]}})
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]

    async def finished():
        got = (await ds.client.get(f"{RUNS}/{run_id}", cookies=jar)).json()
        return got if got["status"] not in ACTIVE else None

    run = await wait_for(finished, timeout=10)
    assert [row["values"] for row in run["rows"]] == [values]
    r = await ds.client.post(f"{RUNS}/{run_id}/insert", cookies=jar, headers=headers, json={"accept": "all_valid"})
    assert r.status_code == 200, r.text
    conn = sqlite3.connect(files[0])
    try:
        tables = {row[0] for row in conn.execute("select name from sqlite_master where type = 'table'")}
        assert {"target", "articles", table} <= tables
        stored = [row[1] for row in conn.execute("pragma table_info(" + '"' + table.replace('"', '""') + '")')]
        assert stored[: len(columns)] == columns
        assert conn.execute("select count(*) from articles").fetchone()[0] == 8
    finally:
        conn.close()
    page = await ds.client.get(f"/-/llm-extract/runs/{run_id}", cookies=jar)
    assert page.status_code == 200
