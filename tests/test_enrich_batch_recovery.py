"""A batch submit cut off between the vendor creating the batch and the job storing its
handle (kill -9, a 5xx sent after the batch was made): the next step finds the batch and
adopts it (OpenAI by the submission id in its metadata, Anthropic by its results' custom
ids once it has ended), so the vendor runs the rows once and each result is applied once;
when the vendor has no batch of that submission, the rows are submitted again.

Through the real SDKs against ``tests/fake_batch_api.py``; the kill is a real
``datasette llm-extract enrich --batch`` process killing itself at the test point
``batch-created`` (``datasette_llm_core/testpoints.py``)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from .enrich_helpers import COLUMNS, answer, make_db, table_rows
from .fake_batch_api import FakeBatchAPI
from .fake_openai_server import FakeOpenAIServer
from .test_enrich_batch import batch_answer, config_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = 8


def creates(fake: FakeBatchAPI) -> int:
    return len(fake.openai) + len(fake.anthropic)


def job_state(tmp_path) -> tuple[dict, dict]:
    """(the job's batch_json, {row_id: (status, number of records)})"""
    conn = sqlite3.connect(tmp_path / "state.db")
    try:
        (batch_json,) = conn.execute("select batch_json from llm_enrich_jobs").fetchone()
        items = {r: (s, len(json.loads(j)) if j else 0) for r, s, j in
                 conn.execute("select row_id, status, records_json from llm_enrich_items")}
    finally:
        conn.close()
    return (json.loads(batch_json) if batch_json else None), items


@pytest.fixture
def setup(tmp_path):
    db = tmp_path / "news.db"
    make_db(db, rows=ROWS)
    schema = tmp_path / "fines.json"
    schema.write_text(json.dumps({"columns": COLUMNS}))

    def args(config):
        return ["llm-extract", "enrich", str(db), "complaints", "--source", "narrative", "--schema",
                str(schema), "-c", str(config), "--batch"]

    return db, args


def write_config(tmp_path, provider, fake, chat):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(config_for(tmp_path, provider, fake, chat)))
    return config


def cli(args):
    from datasette.cli import cli as datasette_cli

    return CliRunner().invoke(datasette_cli, args, catch_exceptions=False)


def assert_applied_once(tmp_path, db, fake):
    batch, items = job_state(tmp_path)
    assert batch is None  # collected: the job holds no batch any more
    assert items == {i: ("done", 1) for i in range(1, ROWS + 1)}
    rows = dict(table_rows(db, "select id, fine from complaints"))
    assert all(rows[i] in (100 + i, 200) for i in rows), rows
    state = sqlite3.connect(tmp_path / "state.db")
    logged = state.execute("select count(*) from llm_calls where call_group like 'batch:%'").fetchone()[0]
    state.close()
    assert logged == ROWS  # each vendor result logged (and paid) once


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_killed_after_the_vendor_created_the_batch_the_next_run_adopts_it(tmp_path, setup, provider):
    db, args = setup
    with FakeBatchAPI(polls_to_finish=1, answer=batch_answer) as fake, FakeOpenAIServer(handler=answer) as chat:
        config = write_config(tmp_path, provider, fake, chat)
        env = dict(os.environ, DATASETTE_LLM_TEST_POINT="batch-created:kill")
        proc = subprocess.run([sys.executable, "-m", "datasette", *args(config)], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
        mark, items = job_state(tmp_path)
        assert "submitting" in mark and "batch_id" not in mark, mark  # the handle was never stored
        assert creates(fake) == 1 and set(items.values()) == {("pending", 0)}
        if provider == "anthropic":
            # a Message Batch names its requests only in its results, once it has ended
            waiting = cli(args(config))
            assert waiting.exit_code == 0, waiting.output
            assert "may hold this submission's requests" in waiting.output
            assert "Nothing is submitted" in waiting.output
            assert creates(fake) == 1
            fake.tick()  # the vendor finishes it
        result = cli(args(config))
        assert result.exit_code == 0, result.output
        assert "was found at" in result.output and "adopted" in result.output, result.output
        assert f"{ROWS} row(s) answered, 0 failed, {ROWS} written" in result.output, result.output
    assert creates(fake) == 1
    assert_applied_once(tmp_path, db, fake)


def test_anthropic_500_after_creating_the_batch_is_recovered_not_resubmitted(tmp_path, setup):
    """Anthropic's create is not retried after a 5xx (no metadata to look for): the mark
    stays, and the next run finds the batch by its results."""
    db, args = setup
    with FakeBatchAPI(polls_to_finish=1, answer=batch_answer) as fake, FakeOpenAIServer(handler=answer) as chat:
        config = write_config(tmp_path, "anthropic", fake, chat)
        fake.fail_next("POST", r"/v1/messages/batches", 500, after=True)
        first = cli(args(config))
        assert first.exit_code == 1 and "may have been created" in first.output, first.output
        assert creates(fake) == 1
        fake.tick()
        result = cli(args(config))
        assert result.exit_code == 0, result.output
        assert "adopted" in result.output and f"{ROWS} row(s) answered" in result.output, result.output
    assert creates(fake) == 1
    assert_applied_once(tmp_path, db, fake)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_no_batch_at_the_vendor_means_the_rows_are_submitted_again(tmp_path, setup, provider):
    """Killed before the vendor created anything (a 5xx that created nothing, for Anthropic,
    with someone else's batch created meanwhile that must not be taken for ours)."""
    from datasette_llm_core.batches import BatchRequest, submit_batch

    db, args = setup
    with FakeBatchAPI(polls_to_finish=1, answer=batch_answer) as fake, FakeOpenAIServer(handler=answer) as chat:
        config = write_config(tmp_path, provider, fake, chat)
        base = fake.openai_base_url if provider == "openai" else fake.anthropic_base_url
        if provider == "anthropic":
            fake.fail_next("POST", r"/v1/messages/batches", 503)  # refused: nothing created
            first = cli(args(config))
            assert first.exit_code == 1, first.output
        else:
            fake.fail_next("POST", r"/v1/batches", 400)  # the upload went, the create was refused...
            first = cli(args(config))
            assert first.exit_code == 1, first.output
            # ...which clears the mark: put back the one a kill before the create leaves
            conn = sqlite3.connect(tmp_path / "state.db")
            conn.execute("update llm_enrich_jobs set batch_json = ?",
                         [json.dumps({"submitting": time.time() - 5, "submission_id": "0123456789ab"})])
            conn.commit()
            conn.close()
        mark, _ = job_state(tmp_path)
        assert mark.get("submission_id") and "batch_id" not in mark, mark
        assert creates(fake) == 0
        # another job of the same account, created after the mark, with ids that look alike
        other = {"id": "other", "provider": provider, "model": "m", "base_url": base, "api_key": "test-key"}
        asyncio.run(submit_batch(other, "m", [BatchRequest(custom_id=f"row-{i}-ffffffffffff", system="", user="x", json_schema=None,
                                                           max_tokens=10) for i in range(1, 4)]))
        fake.tick()
        result = cli(args(config))
        assert result.exit_code == 0, result.output
        assert "has no batch of it: the rows are submitted again" in result.output, result.output
        assert f"Submitted {ROWS} row(s)" in result.output
        assert creates(fake) == 2  # the other job's and ours
        collected = cli(args(config))
        assert f"{ROWS} row(s) answered, 0 failed, {ROWS} written" in collected.output, collected.output
    assert_applied_once(tmp_path, db, fake)


# ------------------------------------------------------------------ find_batch, Anthropic, pure
async def test_find_batch_anthropic_by_results_across_parts(fake_api_keys):
    """Three parts (a limit of 3 requests), another submission beside them: found only once
    ended, parts in order with their ids; a part that never reached the vendor is reported
    in ``missing_ids``; batches created before the mark (less the clock skew) are not looked at."""
    from datasette_llm_core.batches import (
        CLOCK_SKEW,
        BatchRequest,
        fetch_batch_results,
        find_batch,
        submit_batch,
    )
    from datasette_llm_core.errors import ModelError

    schema = {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"],
              "additionalProperties": False}
    ids = [f"row-{i}-abc123abc123" for i in range(1, 9)]
    with FakeBatchAPI(polls_to_finish=1) as fake:
        config = {"id": "vendor", "provider": "anthropic", "model": "claude-haiku-4-5",
                  "base_url": fake.anthropic_base_url, "api_key": "test-key"}
        mark = time.time()
        lost = await submit_batch(config, "vendor", [BatchRequest(i, "", f"Document {i}.", schema, 64) for i in ids],
                                  max_requests=3)
        await submit_batch(config, "vendor", [BatchRequest(f"row-{i}-ffffffffffff", "", "x", schema, 64)
                                              for i in range(1, 3)])
        assert len(lost["parts"]) == 3
        with pytest.raises(ModelError, match="may hold this submission's requests") as caught:
            await find_batch(config, "vendor", "abc123abc123", custom_ids=ids, created_after=mark)
        assert caught.value.error_class == "batch_unconfirmed" and caught.value.retryable
        fake.tick()
        found = await find_batch(config, "vendor", "abc123abc123", custom_ids=ids, created_after=mark)
        assert [(p["batch_id"], sorted(p["custom_ids"])) for p in found["parts"]] == [
            (p["batch_id"], sorted(p["custom_ids"])) for p in lost["parts"]]
        assert found["total"] == 8 and found["missing_ids"] == []
        results = [r async for r in fetch_batch_results(config, found)]
        assert sorted(r.custom_id for r in results) == sorted(ids) and not any(r.error for r in results)
        # the process died before part 3 was created
        del fake.anthropic[lost["parts"][2]["batch_id"]]
        partial = await find_batch(config, "vendor", "abc123abc123", custom_ids=ids, created_after=mark)
        assert partial["missing_ids"] == lost["parts"][2]["custom_ids"] and partial["total"] == 6
        # created well before the mark: not ours, whatever it holds
        assert await find_batch(config, "vendor", "abc123abc123", custom_ids=ids,
                                created_after=time.time() + CLOCK_SKEW + 60) is None


def test_server_killed_while_submitting_adopts_the_batch_after_restart(tmp_path, monkeypatch):
    """A background job on ``datasette serve``: the server kills itself after OpenAI created the
    batch; the restarted server takes the job over, finds the batch and writes its results."""
    from .enrich_helpers import EnrichServer

    db = tmp_path / "news.db"
    make_db(db, rows=ROWS)
    with FakeBatchAPI(polls_to_finish=1, answer=batch_answer) as fake, \
            FakeOpenAIServer(handler=answer) as chat:
        server = EnrichServer(tmp_path, db, chat.base_url)
        config = json.loads(server.config.read_text())
        plugin = config["plugins"]["datasette-llm-newsroom"]
        plugin["models"].append(config_for(tmp_path, "openai", fake)["plugins"]["datasette-llm-newsroom"]["models"][0])
        plugin["extract"]["batch_poll_seconds"] = 0.2
        plugin["fallback"] = {"extract": ["fake"]}
        server.config.write_text(json.dumps(config))
        monkeypatch.setenv("DATASETTE_LLM_TEST_POINT", "batch-created:kill")
        server.start()
        try:
            status, data = server.request("POST", "/-/llm-extract/enrich/api/jobs", {
                "database": "news", "table": "complaints", "source_columns": ["narrative"], "columns": COLUMNS,
                "model": "vendor", "batch": True, "sample_size": 0, "write_mode": "direct"})
            assert status == 201, data
            server.proc.wait(timeout=30)
            assert server.proc.returncode == -signal.SIGKILL
            assert creates(fake) == 1
            mark, _ = job_state(tmp_path)
            assert mark.get("submission_id") and "batch_id" not in mark, mark
            monkeypatch.delenv("DATASETTE_LLM_TEST_POINT")
            server.start()
            job = server.wait_job(data["id"], lambda j: j["status"] not in ("pending", "running", "batch"),
                                  timeout=60)
        finally:
            server.stop()
    assert job["status"] == "done", job
    assert creates(fake) == 1
    assert job["rows_done"] == ROWS and job["rows_written"] == ROWS
    assert_applied_once(tmp_path, db, fake)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_submit_cut_off_between_parts_adopts_those_made_and_submits_the_rest(tmp_path, setup, provider,
                                                                                monkeypatch):
    """8 rows in parts of 3 (a vendor limit of 3 requests); the process dies after parts 1 and 2
    were created, before part 3: the next run adopts parts 1-2 and collects their 6 rows, then
    submits the 2 rows no batch held, alone."""
    from datasette.cli import cli as datasette_cli

    from datasette_llm_core import batches
    from datasette_llm_extract import enrich_batch

    db, args = setup
    real = batches.submit_batch

    async def cut_off(config, model, requests, **kw):
        handle = await real(config, model, requests, max_requests=3, **kw)
        lost = handle["parts"][2]["batch_id"]
        (fake.openai if provider == "openai" else fake.anthropic).pop(lost)  # never created
        raise RuntimeError("the process died here")  # before the handle was stored

    with FakeBatchAPI(polls_to_finish=1, answer=batch_answer) as fake, FakeOpenAIServer(handler=answer) as chat:
        config = write_config(tmp_path, provider, fake, chat)
        monkeypatch.setattr(enrich_batch, "submit_batch", cut_off)
        first = CliRunner().invoke(datasette_cli, args(config))
        assert isinstance(first.exception, RuntimeError)
        monkeypatch.setattr(enrich_batch, "submit_batch", real)
        assert creates(fake) == 2
        if provider == "anthropic":
            fake.tick()
        adopted = cli(args(config))
        assert "adopted" in adopted.output, adopted.output
        assert "6 row(s) answered, 0 failed, 6 written" in adopted.output, adopted.output
        assert "2 row(s) were not run by the batch found: they are submitted next" in adopted.output
        rest = cli(args(config))
        assert "Submitted 2 row(s)" in rest.output, rest.output
        collected = cli(args(config))
        assert "2 row(s) answered, 0 failed, 2 written" in collected.output, collected.output
    assert creates(fake) == 3
    assert_applied_once(tmp_path, db, fake)


def test_parts_our_submit_cancelled_keep_their_answers_and_rerun_the_rest(tmp_path, setup, monkeypatch):
    """Anthropic, parts of 3: part 2's create answers 500 after creating it, so submit_batch
    cancels part 1 (the mark notes it) and the error may leave part 2 running. The next run
    adopts both: part 1's answered row and part 2's rows are kept, part 1's cancelled rows and
    the rows of part 3 (never made) are submitted again, alone."""
    from datasette.cli import cli as datasette_cli

    from datasette_llm_core import batches
    from datasette_llm_core.errors import ModelError
    from datasette_llm_extract import enrich_batch

    db, args = setup
    real_submit, real_part = batches.submit_batch, batches._submit_anthropic
    made = []

    async def three_a_part(config, model, requests, **kw):
        return await real_submit(config, model, requests, max_requests=3, **kw)

    async def second_fails_after_creating(*a, **kw):
        part = await real_part(*a, **kw)
        made.append(part["batch_id"])
        if len(made) == 2:
            raise ModelError("Creating the Anthropic message batch: server error (500)", status=500,
                             retryable=True, error_class="server_error")
        return part

    # 3 steps to finish: the retrieve submit_batch makes before cancelling part 1 does not end it
    with FakeBatchAPI(polls_to_finish=3, answer=batch_answer) as fake, FakeOpenAIServer(handler=answer) as chat:
        config = write_config(tmp_path, "anthropic", fake, chat)
        monkeypatch.setattr(enrich_batch, "submit_batch", three_a_part)
        monkeypatch.setattr(batches, "_submit_anthropic", second_fails_after_creating)
        first = CliRunner().invoke(datasette_cli, args(config))
        assert first.exit_code == 1 and "were cancelled" in first.output, first.output
        monkeypatch.setattr(enrich_batch, "submit_batch", real_submit)
        monkeypatch.setattr(batches, "_submit_anthropic", real_part)
        mark, _ = job_state(tmp_path)
        assert mark["cancelled"] == made[:1] and "batch_id" not in mark, mark
        for _ in range(3):  # part 1 ends cancelled (1 of its 3 requests answered first), part 2 ends
            fake.tick()
        adopted = cli(args(config))
        assert "adopted" in adopted.output, adopted.output
        assert "4 row(s) answered, 0 failed, 4 written" in adopted.output, adopted.output
        assert "4 row(s) were not run by the batch found: they are submitted next" in adopted.output
        assert "Submitted 4 row(s)" in cli(args(config)).output
        for _ in range(3):
            fake.tick()
        collected = cli(args(config))
        assert "4 row(s) answered, 0 failed, 4 written" in collected.output, collected.output
    assert creates(fake) == 3
    _, items = job_state(tmp_path)
    assert items == {i: ("done", 1) for i in range(1, ROWS + 1)}
    state = sqlite3.connect(tmp_path / "state.db")
    answered = state.execute("select count(*) from llm_calls where call_group like 'batch:%' and outcome = 'ok'"
                             ).fetchone()[0]
    state.close()
    assert answered == ROWS  # no row answered (and paid) twice
