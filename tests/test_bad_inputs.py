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
