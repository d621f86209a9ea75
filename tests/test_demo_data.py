"""The demo newsroom: build.py, metadata.yml, the homepage template, serve.py's model config."""

from __future__ import annotations

import importlib.util
import sqlite3
from pathlib import Path

import pytest
import sqlite_utils
import yaml
from datasette.app import Datasette

ROOT = Path(__file__).parent.parent
DEMO = ROOT / "demo_data"
DESCRIPTIVE_KEYS = ("title", "description", "source", "source_url", "license", "license_url")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"demo_{name}", DEMO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load("build")
serve = _load("serve")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    return build.build(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def metadata() -> dict:
    return yaml.safe_load((ROOT / "metadata.yml").read_text(encoding="utf-8"))


def test_build_creates_tables_with_primary_keys_and_fts(built):
    congress = sqlite_utils.Database(built["congress"])
    documents = sqlite_utils.Database(built["documents"])
    expected = {
        congress: {"legislators": ["bioguide_id"], "terms": ["bioguide_id", "start"],
                   "committees": ["id"], "committee_memberships": ["committee_id", "bioguide_id"]},
        documents: {"sotu_addresses": ["id"], "sotu_passages": ["id"],
                    "trump_lawsuits": ["docketNumber"], "special_investigations": ["id"],
                    "clemency_pages": ["filename"], "receipts": ["id"]},
    }
    for db, tables in expected.items():
        for table, pks in tables.items():
            assert db[table].exists(), table
            assert db[table].pks == pks, table
            assert db[table].count > 0, table
    assert documents["sotu_addresses"].count == 25
    assert documents["clemency_pages"].count == len(list((DEMO / "raw" / "clemency").glob("*.txt")))
    # full-text search works on the long texts
    hits = documents.execute(
        "select count(*) from sotu_passages_fts where sotu_passages_fts match 'immigration'"
    ).fetchone()[0]
    assert hits > 0
    # foreign keys hold: every membership points at a real legislator and committee
    orphans = congress.execute(
        "select count(*) from committee_memberships m left join legislators l"
        " on m.bioguide_id = l.bioguide_id where l.bioguide_id is null"
    ).fetchone()[0]
    assert orphans == 0
    # newsroom.db is an empty, valid database for extraction to write into
    assert sqlite3.connect(built["newsroom"]).execute("pragma schema_version").fetchone()


def test_build_is_idempotent(built, tmp_path):
    again = build.build(built["congress"].parent)
    for name in ("congress", "documents"):
        first = sqlite_utils.Database(built[name])
        second = sqlite_utils.Database(again[name])
        assert {t.name: t.count for t in first.tables} == {t.name: t.count for t in second.tables}


def test_passages_are_whole_sentences_under_the_limit():
    text = " ".join(f"Sentence number {i} ends here." for i in range(300))
    passages = build.split_passages(text, max_chars=200)
    assert len(passages) > 10
    assert all(len(p) <= 200 for p in passages)
    assert all(p.endswith(".") for p in passages)
    assert " ".join(passages) == text


def test_raw_material_is_small_and_licensed():
    raw = DEMO / "raw"
    total = sum(p.stat().st_size for p in raw.rglob("*") if p.is_file())
    assert total < 5_000_000
    licenses = (raw / "LICENSES.md").read_text(encoding="utf-8")
    for folder in sorted(p.name for p in raw.iterdir() if p.is_dir()):
        assert f"`{folder}/" in licenses, f"{folder} is not listed in LICENSES.md"


def test_every_database_and_table_is_described(metadata, built):
    for db_name, db_meta in metadata["databases"].items():
        missing = [k for k in DESCRIPTIVE_KEYS if not db_meta.get(k)]
        assert not missing, f"{db_name} lacks {missing}"
        for table, table_meta in (db_meta.get("tables") or {}).items():
            missing = [k for k in DESCRIPTIVE_KEYS if not table_meta.get(k)]
            assert not missing, f"{db_name}.{table} lacks {missing}"
    for name in ("congress", "documents"):
        described = set(metadata["databases"][name]["tables"])
        actual = {t for t in sqlite_utils.Database(built[name]).table_names()
                  if "_fts" not in t}
        assert described == actual


def test_plugin_config_parses(metadata, built):
    from datasette_llm_core.config import parse_settings
    from datasette_llm_extract.schema import validate_table_spec
    from datasette_llm_rag.ragconfig import parse_rag_config

    settings = parse_settings(metadata["plugins"]["datasette-llm-newsroom"])
    rag = parse_rag_config(settings.rag)
    for db_name, db_config in rag.databases.items():
        columns_by_table = {
            t.name: set(t.columns_dict) for t in sqlite_utils.Database(built[db_name]).tables
        }
        for table, table_config in db_config.tables.items():
            assert table in columns_by_table, f"rag indexes missing table {db_name}.{table}"
            used = set(table_config.text_columns() or []) | {table_config.title_column}
            assert used <= columns_by_table[table], (table, used - columns_by_table[table])
    templates = settings.extract["templates"]
    assert {t["name"] for t in templates} == {"Clemency grants", "Receipts"}
    for template in templates:
        spec = validate_table_spec({"columns": template["columns"],
                                    "key_columns": template["key_columns"]})
        assert spec.column_names()


async def test_metadata_and_homepage_template_load(metadata, built):
    ds = Datasette(
        [str(built[n]) for n in ("congress", "documents", "newsroom")],
        metadata={**metadata, "plugins": {"datasette-llm-newsroom": {
            **metadata["plugins"]["datasette-llm-newsroom"], "state_database": ":memory:"}}},
        template_dir=str(ROOT / "templates"),
    )
    await ds.invoke_startup()
    home = await ds.client.get("/")
    assert home.status_code == 200
    assert "This is the demo newsroom" in home.text
    assert "/documents/clemency_pages" in home.text
    table = await ds.client.get("/documents/trump_lawsuits")
    assert table.status_code == 200
    assert "Lawsuits involving Donald Trump" in table.text
    assert "CC BY 4.0" in table.text


def test_model_status_reports_what_the_environment_provides():
    assert "none configured" in serve.model_status({})
    status = serve.model_status({
        "OPENAI_API_KEY": "sk-secret",
        "DATASETTE_LLM_BASE_URL": "http://127.0.0.1:11434/v1",
        "DATASETTE_LLM_MODEL": "llama3.2",
    })
    assert "openai" in status and "llama3.2" in status and "http://127.0.0.1:11434/v1" in status
    assert "sk-secret" not in status


def test_serve_indexes_the_configured_databases():
    assert serve.indexed_databases(ROOT / "metadata.yml") == ["documents", "congress"]
