import io
import json
import re
import sqlite3

import pytest
from click.testing import CliRunner
from datasette.cli import cli
from PIL import Image

from datasette_llm_core.errors import ModelError
from datasette_llm_extract.prompts import PROMPT_VERSION

from .extract_responders import document_text
from .fakes import Scripted

SCHEMA = {"columns": [{"name": "name", "nullable": False}, {"name": "age", "type": "integer"}],
          "key_columns": ["name"], "instructions": "People and their ages."}


def people_responder(request):
    text = document_text(request)
    rows = [{"name": m.group(1), "age": m.group(2), "source_quote": m.group(0)}
            for m in re.finditer(r"(\w+) is (\w+) years old", text)]
    return json.dumps({"rows": rows})


@pytest.fixture
def setup(tmp_path, fake_models, scripted_model):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("Ann is 40 years old. Bob is 3 years old.")
    (folder / "b.txt").write_text("Cy is 7 years old. Ann is 40 years old.")  # Ann again: not duplicated
    (folder / "c.txt").write_text("Dee is nine years old.")  # invalid age: re-asked, stays invalid
    (folder / "empty.txt").write_bytes(b"")
    (folder / ".hidden").write_text("Zed is 1 years old.")
    config = tmp_path / "datasette.yaml"
    config.write_text(json.dumps({"plugins": {"datasette-llm-newsroom": {
        "state_database": str(tmp_path / "state.db"), "defaults": {"extract": "scripted"}}}}))
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    scripted_model.responder = people_responder
    return tmp_path, folder, config, schema, scripted_model


def invoke(*args):
    return CliRunner().invoke(cli, ["llm-extract", *map(str, args)], catch_exceptions=False)


def test_run_extracts_folder_and_resumes(setup):
    tmp_path, folder, config, schema, model = setup
    db = tmp_path / "out.db"

    def flaky(request):
        if "Cy is" in document_text(request):
            return Scripted(error=ModelError("server overloaded", status=400, retryable=False))
        return people_responder(request)

    model.responder = flaky
    result = invoke("run", db, "people", folder, "--schema", schema, "-c", config)
    assert result.exit_code == 1, result.output
    assert "1 failed" in result.output and "server overloaded" in result.output
    assert "empty.txt" in result.output and "is empty" in result.output
    conn = sqlite3.connect(db)
    assert sorted(r[0] for r in conn.execute("select name from people")) == ["Ann", "Bob"]
    first_run = conn.execute("select distinct _llm_run from people").fetchall()
    assert len(first_run) == 1
    instructions = conn.execute("select instructions, model_id, prompt_version from _llm_extract_cli_runs").fetchone()
    assert instructions == ("People and their ages.", "scripted", PROMPT_VERSION)

    # Re-run: done files are skipped, the failed one is retried, nothing is duplicated.
    model.responder = people_responder
    model.requests.clear()
    result = invoke("run", db, "people", folder, "--schema", schema, "-c", config)
    assert result.exit_code == 0, result.output
    assert "1 file(s) extracted, 3 already done" in result.output
    asked = [document_text(r) for r in model.requests]
    assert all("Cy is" in t for t in asked)  # only b.txt was sent again
    names = sorted(r[0] for r in conn.execute("select name from people"))
    assert names == ["Ann", "Bob", "Cy"]
    ages = dict(conn.execute("select name, age from people"))
    assert ages == {"Ann": 40, "Bob": 3, "Cy": 7}
    quotes = conn.execute(
        "select q.source_quote, q.quote_found, q.path from _llm_extract_quotes q "
        "join people p on p.rowid = q.row_rowid where p.name = 'Cy'").fetchone()
    assert quotes == ("Cy is 7 years old", 1, "b.txt")
    status = dict(conn.execute("select path, status from _llm_extract_files"))
    assert status == {"a.txt": "done", "b.txt": "done", "c.txt": "done", "empty.txt": "refused"}

    # Third run: everything is done, the model is not called.
    model.requests.clear()
    result = invoke("run", db, "people", folder, "-c", config)  # schema read back from the table
    assert result.exit_code == 0 and "0 file(s) extracted, 4 already done" in result.output
    assert model.requests == []


def test_run_images_and_changed_files(setup):
    tmp_path, folder, config, schema, model = setup
    buf = io.BytesIO()
    Image.new("RGB", (10, 10)).save(buf, "PNG")
    (folder / "scan.png").write_bytes(buf.getvalue())
    model.responder = lambda request: (
        json.dumps({"rows": [{"name": "Img", "age": 1, "source_quote": "x"}]})
        if not document_text(request) else people_responder(request))
    db = tmp_path / "out.db"
    result = invoke("run", db, "people", folder, "--schema", schema, "-c", config)
    assert result.exit_code == 0, result.output
    conn = sqlite3.connect(db)
    assert ("Img",) in conn.execute("select name from people").fetchall()
    (folder / "a.txt").write_text("Eve is 5 years old.")  # changed content: extracted again
    model.requests.clear()
    result = invoke("run", db, "people", folder, "--schema", schema, "-c", config)
    assert "1 file(s) extracted" in result.output and len(model.requests) == 1
    assert ("Eve",) in conn.execute("select name from people").fetchall()


def test_run_errors_are_clear(setup):
    tmp_path, folder, config, schema, model = setup
    result = CliRunner().invoke(cli, ["llm-extract", "run", str(tmp_path / "x.db"), "t", str(folder), "-c", str(config)])
    assert result.exit_code != 0 and "does not exist yet" in result.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"columns": [{"name": "a", "type": "money"}]}))
    result = CliRunner().invoke(cli, ["llm-extract", "run", str(tmp_path / "x.db"), "t", str(folder),
                                      "--schema", str(bad), "-c", str(config)])
    assert result.exit_code != 0 and "unknown type 'money'" in result.output
    result = CliRunner().invoke(cli, ["llm-extract", "run", str(tmp_path / "x.db"), "t", str(folder),
                                      "--schema", str(schema), "-c", str(config), "--model", "nope"])
    assert result.exit_code != 0 and "Unknown chat model 'nope'" in result.output


def test_evaluate_command(setup):
    tmp_path, folder, config, schema, model = setup
    gold = tmp_path / "gold.jsonl"
    gold.write_text(
        json.dumps({"id": 1, "text": "Ann is 40 years old.", "gold": {"name": "Ann", "age": 40}}) + "\n"
        + json.dumps({"id": 2, "text": "Bob is 3 years old.", "gold": {"name": "Bob", "age": 4}}) + "\n")
    result = invoke("evaluate", gold, "--schema", schema, "-c", config, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["fields"]["name"]["precision"] == 1.0
    assert report["fields"]["age"]["precision"] == 0.5 and report["fields"]["age"]["recall"] == 0.5
    result = invoke("evaluate", gold, "--schema", schema, "-c", config)
    assert re.search(r"age\s+0\.500\s+0\.500\s+0\.500", result.output)


def test_run_estimate_calls_no_model(setup):
    tmp_path, folder, config, schema, model = setup
    result = invoke("run", tmp_path / "out.db", "people", folder, "--schema", schema, "-c", config, "--estimate")
    assert result.exit_code == 0, result.output
    assert "3 file(s) to extract" in result.output and "input" in result.output and "$" in result.output
    assert "empty.txt" in result.output
    assert model.requests == []
    assert not sqlite3.connect(tmp_path / "out.db").execute(
        "select 1 from sqlite_master where name = 'people'").fetchone()


def test_evaluate_with_images(setup):
    tmp_path, folder, config, schema, model = setup
    (tmp_path / "data" / "img").mkdir(parents=True)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG")
    (tmp_path / "data" / "img" / "1.jpg").write_bytes(buf.getvalue())
    gold = tmp_path / "data" / "gold.jsonl"
    gold.write_text(
        json.dumps({"id": 1, "image": "data/img/1.jpg", "text": "", "gold": {"name": "Ann", "age": 40}}) + "\n"
        + json.dumps({"id": 2, "image": "data/img/missing.jpg", "text": "", "gold": {"name": "B", "age": 1}}) + "\n")
    model.responder = lambda request: json.dumps({"rows": [{"name": "Ann", "age": 41, "source_quote": ""}]})
    result = invoke("evaluate", gold, "--schema", schema, "-c", config, "--images", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["documents"] == 1
    assert report["fields"]["name"]["precision"] == 1.0 and report["fields"]["age"]["precision"] == 0.0
    from datasette_llm_core.types import ImagePart
    assert any(isinstance(p, ImagePart) for p in model.requests[0].messages[-1].parts)


def test_evaluate_with_local_ocr_scores_a_text_model_on_scans(setup):
    from .test_extract_pages import scan_png

    tmp_path, folder, config, schema, model = setup
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "ann.png").write_bytes(scan_png(["Ann is 40 years old"], size=(560, 120)))
    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"id": "ann", "image": "scans/ann.png", "text": "",
                                "gold": {"name": "Ann", "age": 40}}) + "\n")
    model.supports_images = model.supports_pdfs = False  # a text-only model
    model.responder = people_responder  # copies "<name> is <age> years old" from what it is shown
    result = invoke("evaluate", gold, "--schema", schema, "-c", config, "--ocr", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["fields"]["name"]["f1"] == 1.0 and report["fields"]["age"]["f1"] == 1.0, report
    assert report["quotes_found"] == 1
    assert "Ann is 40 years old" in document_text(model.requests[0])  # the OCR text, as text


def test_files_run_side_by_side_within_the_limit(setup):
    tmp_path, folder, config, schema, model = setup
    for i in range(8):
        (folder / f"p{i}.txt").write_text(f"Person{i} is {i} years old. Ann is 40 years old.")
    state = {"active": 0, "peak": 0}
    original = type(model).stream

    async def counting(request, *, timeout=None):
        state["active"] += 1
        state["peak"] = max(state["peak"], state["active"])
        try:
            async for event in original(model, request, timeout=timeout):
                yield event
        finally:
            state["active"] -= 1

    model.stream = counting
    model.responder = lambda request: Scripted(people_responder(request), chunks=4, delay=0.02)
    db = tmp_path / "out.db"
    result = invoke("run", db, "people", folder, "--schema", schema, "-c", config, "--concurrency", "3")
    assert result.exit_code == 0, result.output
    assert state["peak"] == 3
    names = [r[0] for r in sqlite3.connect(db).execute("select name from people")]
    assert names.count("Ann") == 1  # found in many files at once, written once
    assert sorted(n for n in names if n.startswith("Person")) == [f"Person{i}" for i in range(8)]
