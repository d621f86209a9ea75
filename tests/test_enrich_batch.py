"""Enrichment through the providers' batch APIs, against ``tests/fake_batch_api.py``
(OpenAI's Batch API and Anthropic's Message Batches as the vendors document them)
through the real SDKs: the command's ``--batch`` (submit, then collect on a later
run) and a background job whose server is killed while the batch is out (the
restarted server polls the same batch: never submitted twice)."""

from __future__ import annotations

import json
import sqlite3

import pytest
from click.testing import CliRunner

from .enrich_helpers import COLUMNS, EnrichServer, answer, make_db, table_rows
from .fake_batch_api import FakeBatchAPI, Outcome
from .fake_openai_server import FakeOpenAIServer


def batch_answer(custom_id: str, request: dict) -> Outcome:
    if custom_id.split("-")[1] == "9":  # answered with a date that fails validation: re-asked by a direct call
        return Outcome("ok", {"rows": [{"reported": "sometime", "fine": 5, "source_quote": "no heat"}]})
    return Outcome("ok", json.loads(answer(request).content))


def config_for(tmp_path, provider: str, fake: FakeBatchAPI, chat: FakeOpenAIServer | None = None) -> dict:
    """The vendor's model on the fake batch API; a re-ask (a direct call, which the batch fake
    does not serve) falls back to the scripted chat server, as a configured fallback would."""
    base = fake.openai_base_url if provider == "openai" else fake.anthropic_base_url
    models = [{"id": "vendor", "provider": provider, "model": "gpt-4.1-mini" if provider == "openai"
               else "claude-haiku-4-5", "base_url": base, "api_key": "test-key", "timeout": 10}]
    if chat is not None:
        models.append({"id": "fake", "provider": "openai-compatible", "model": "fake-model",
                       "base_url": chat.base_url, "supports": ["streaming", "schema"]})
    return {"plugins": {"datasette-llm-newsroom": {
        "state_database": str(tmp_path / "state.db"), "lease_seconds": 1, "models": models,
        "defaults": {"extract": "vendor"}, "retries": {"max_attempts": 1},
        "fallback": {"extract": ["fake"]} if chat is not None else {},
        "extract": {"batch_poll_seconds": 0.2}}}}


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_batch_command_submits_then_collects_with_the_same_validation(tmp_path, provider):
    from datasette.cli import cli

    db = tmp_path / "news.db"
    make_db(db, rows=12)
    schema = tmp_path / "fines.json"
    schema.write_text(json.dumps({"columns": COLUMNS}))
    with FakeBatchAPI(polls_to_finish=2, answer=batch_answer) as fake, \
            FakeOpenAIServer(handler=answer) as chat:
        config = tmp_path / "config.json"
        config.write_text(json.dumps(config_for(tmp_path, provider, fake, chat)))
        args = ["llm-extract", "enrich", str(db), "complaints", "--source", "narrative", "--schema", str(schema),
                "-c", str(config), "--batch"]
        first = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert first.exit_code == 0, first.output
        assert "Submitted 12 row(s) as batch" in first.output
        assert table_rows(db, "select count(*) from complaints where rowid < 0") == [(0,)]
        outputs = []
        for _ in range(5):
            result = CliRunner().invoke(cli, args, catch_exceptions=False)
            assert result.exit_code == 0, result.output
            outputs.append(result.output)
            if "answered" in result.output:
                break
        assert "12 row(s) answered, 0 failed, 12 written" in outputs[-1], outputs
        reasks = [r for r in chat.chat_requests() if "failed validation" in str(r)]
        assert len(reasks) == 3 == len(chat.chat_requests())  # rows 3, 9 and 10, nothing else
    creates = fake.calls("POST", r"/v1/batches") + fake.calls("POST", r"/v1/messages/batches")
    assert creates == 1
    rows = dict(table_rows(db, "select id, fine from complaints"))
    assert rows[9] == 200  # the re-ask's correction
    assert all(rows[i] in (100 + i, 200) for i in rows)
    state = sqlite3.connect(tmp_path / "state.db")
    quotes = state.execute("select records_json from llm_enrich_items where row_id in (1, 2)").fetchall()
    state.close()
    assert all(json.loads(q[0])[0]["quote_found"] for q in quotes)


def test_server_killed_while_a_batch_is_out_polls_the_same_batch_after_restart(tmp_path):
    db = tmp_path / "news.db"
    make_db(db, rows=9)
    with FakeBatchAPI(polls_to_finish=60, answer=batch_answer) as fake, \
            FakeOpenAIServer(handler=answer) as chat:
        server = EnrichServer(tmp_path, db, chat.base_url)
        config = json.loads(server.config.read_text())
        config["plugins"]["datasette-llm-newsroom"]["models"].append(
            config_for(tmp_path, "openai", fake)["plugins"]["datasette-llm-newsroom"]["models"][0])
        config["plugins"]["datasette-llm-newsroom"]["extract"]["batch_poll_seconds"] = 0.2
        server.config.write_text(json.dumps(config))
        server.start()
        try:
            status, data = server.request("POST", "/-/llm-extract/enrich/api/jobs", {
                "database": "news", "table": "complaints", "source_columns": ["narrative"], "columns": COLUMNS,
                "model": "vendor", "batch": True, "sample_size": 0, "write_mode": "direct"})
            assert status == 201, data
            job_id = data["id"]
            server.wait_job(job_id, lambda j: j["batch_id"])
            server.kill()
            assert len(fake.openai) == 1
            fake.polls_to_finish = 1  # it ends while the server is down
            server.start()
            job = server.wait_job(job_id, lambda j: j["status"] not in ("pending", "running"), timeout=60)
        finally:
            server.stop()
    assert job["status"] == "done", job
    assert len(fake.openai) == 1  # polled again, never submitted twice
    # rows 3 and 9 fail validation and their re-ask (no fallback here) fails: held back, not written
    assert job["rows_done"] == 9 and job["rows_written"] == 7
    rows = dict(table_rows(db, "select id, fine from complaints"))
    assert rows[3] is None and rows[9] is None
    assert all(rows[i] == 100 + i for i in rows if i not in (3, 9))


def test_a_crash_while_submitting_stops_the_job_instead_of_paying_twice(tmp_path):
    from datasette.cli import cli

    db = tmp_path / "news.db"
    make_db(db, rows=3)
    schema = tmp_path / "fines.json"
    schema.write_text(json.dumps({"columns": COLUMNS}))
    with FakeBatchAPI(answer=batch_answer) as fake:
        config = tmp_path / "config.json"
        config.write_text(json.dumps(config_for(tmp_path, "openai", fake)))
        args = ["llm-extract", "enrich", str(db), "complaints", "--source", "narrative", "--schema", str(schema),
                "-c", str(config), "--batch"]
        assert CliRunner().invoke(cli, args, catch_exceptions=False).exit_code == 0
        # as if the process died after the vendor created the batch, before its id was stored
        state = sqlite3.connect(tmp_path / "state.db")
        state.execute("""update llm_enrich_jobs set batch_json = '{"submitting": 1}'""")
        state.commit()
        state.close()
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 1
    assert "a batch may have been created at the provider" in result.output
    assert len(fake.openai) == 1
