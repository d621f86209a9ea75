"""Provider batch APIs through the real OpenAI and Anthropic SDKs, against a fake of both.

``tests/fake_batch_api.py`` runs as a real HTTP server on 127.0.0.1 (one per
module) and misbehaves as the vendors can: results out of order, requests
errored, expired or missing, prose instead of JSON, answers cut off,
whole batches that expire or fail validation, 429/5xx on submit, an error
sent after the batch was created. The module under test needs no Datasette;
only the call-log test builds one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from datasette_llm_core import batchformat
from datasette_llm_core.batches import (
    BATCH_DISCOUNT,
    BatchRequest,
    BatchResult,
    batch_cost,
    cancel_batch,
    estimate_batch,
    fetch_batch_results,
    find_batch,
    poll_batch,
    submit_batch,
    supports_batch,
)
from datasette_llm_core.errors import ConfigError, ModelError

from .conftest import FAKE_API_KEYS, SECRET_MARKER
from .fake_batch_api import FakeBatchAPI, Outcome

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = {
    "type": "object",
    "properties": {"id": {"type": "string"}, "ok": {"type": "boolean"}},
    "required": ["id", "ok"],
    "additionalProperties": False,
}
MODELS = {"openai": "gpt-4.1-mini", "anthropic": "claude-haiku-4-5"}
VENDORS = ["openai", "anthropic"]


@pytest.fixture(scope="module")
def server():
    with FakeBatchAPI(polls_to_finish=2) as fake:
        yield fake


@pytest.fixture
def fake(server, fake_api_keys):
    """The module's server, reset for one test, requiring the test's fake keys."""
    server.outcomes.clear()
    server.faults.clear()
    server.log.clear()
    server.next_batch_fate = None
    server.expire_after = 1
    server.polls_to_finish = 2
    server.api_key = None
    for state in (server.openai, server.anthropic, server.files):
        state.clear()
    return server


def config_for(fake: FakeBatchAPI, vendor: str, **extra) -> dict:
    base = fake.openai_base_url if vendor == "openai" else fake.anthropic_base_url
    return {"id": f"{vendor}-batch", "provider": vendor, "model": MODELS[vendor], "base_url": base, **extra}


def requests_for(n: int, schema: dict | None = SCHEMA, prefix: str = "row") -> list[BatchRequest]:
    return [BatchRequest(f"{prefix}-{i}", "Extract the fields.", f"Document number {i}.", schema, 256)
            for i in range(n)]


class Sleeps(list):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


async def run_to_end(config: dict, handle: dict, limit: int = 20) -> dict:
    for _ in range(limit):
        status = await poll_batch(config, handle)
        if status["state"] != "in_progress":
            return status
    raise AssertionError(f"batch still running after {limit} polls")


async def fetch_all(config: dict, handle: dict, **kw) -> dict[str, BatchResult]:
    results: dict[str, BatchResult] = {}
    async for result in fetch_batch_results(config, handle, **kw):
        assert result.custom_id not in results, f"{result.custom_id} reported twice"
        results[result.custom_id] = result
    return results


# ------------------------------------------------------------------ round trip
@pytest.mark.parametrize("vendor", VENDORS)
async def test_results_out_of_order_with_every_kind_of_failure(fake, vendor):
    fake.outcomes.update({
        "row-1": Outcome("prose", "I could not find an id in this document, sorry."),
        "row-2": Outcome("missing"),
        "row-3": Outcome("error", message="This request was refused: bad image."),
        "row-4": Outcome("refusal", "I can't help with that document."),
        "row-5": Outcome("cut_off", {"id": "row-5", "ok": True, "note": "x" * 40}),
        "row-6": Outcome("ok", "Here you go:\n```json\n{\"id\": \"row-6\", \"ok\": false}\n```"),
        "row-7": Outcome("duplicate", {"id": "row-7", "ok": True}),
    })
    config = config_for(fake, vendor)
    requests = requests_for(10)
    handle = await submit_batch(config, config["id"], requests)
    assert json.loads(json.dumps(handle)) == handle  # storable as it is
    assert SECRET_MARKER not in json.dumps(handle)
    assert handle["provider"] == vendor and handle["batch_id"] and handle["total"] == 10
    assert (handle["input_file_id"] is not None) == (vendor == "openai")

    first = await poll_batch(config, handle)
    assert first["state"] == "in_progress" and first["total"] == 10
    status = await run_to_end(config, handle)
    assert status["state"] == "ended"

    if vendor == "openai":
        batch = fake.openai[handle["batch_id"]]
        written = [json.loads(x)["custom_id"] for x in fake.files[batch["output_file_id"]]["data"].splitlines()]
    else:
        written = [r["custom_id"] for r in fake.anthropic[handle["batch_id"]]["results"]]
    assert written.count("row-7") == 2 and "row-2" not in written
    order = [r.custom_id async for r in fetch_batch_results(config, handle)]
    assert sorted(order) == sorted(r.custom_id for r in requests)  # each once (row-7 twice in the file), none dropped
    assert order != [r.custom_id for r in requests]  # the vendor's order, not ours
    results = await fetch_all(config, handle)
    for i in (0, 7, 8, 9):
        assert json.loads(results[f"row-{i}"].text) == {"id": f"row-{i}", "ok": True}
        assert results[f"row-{i}"].error is None
        assert (results[f"row-{i}"].input_tokens, results[f"row-{i}"].output_tokens) == (120, 30)
    assert results["row-1"].text is None and results["row-1"].error_class == "not_json"
    assert "I could not find an id" in results["row-1"].error
    assert results["row-2"].error_class == "missing" and "without a result" in results["row-2"].error
    assert results["row-3"].error_class == "invalid_request_error" and "bad image" in results["row-3"].error
    assert results["row-4"].error_class == "refusal" and "can't help" in results["row-4"].error
    assert results["row-5"].error_class == "cut_off" and "max_tokens" in results["row-5"].error
    assert json.loads(results["row-6"].text) == {"id": "row-6", "ok": False}  # JSON inside prose is used
    # cost at the batch price: half the list price
    assert results["row-0"].cost_usd == pytest.approx(batch_cost(config, MODELS[vendor], 120, 30))


async def test_openai_input_file_is_shaped_as_documented(fake):
    config = config_for(fake, "openai")
    requests = requests_for(2) + [BatchRequest("plain-1", "", "Say hello.", None, 64)]
    handle = await submit_batch(config, config["id"], requests)
    lines = [json.loads(x) for x in fake.files[handle["input_file_id"]]["data"].splitlines()]
    assert [x["custom_id"] for x in lines] == ["row-0", "row-1", "plain-1"]
    assert {(x["method"], x["url"]) for x in lines} == {("POST", "/v1/chat/completions")}
    body = lines[0]["body"]
    assert body["model"] == "gpt-4.1-mini" and body["max_completion_tokens"] == 256
    assert body["messages"] == [{"role": "system", "content": "Extract the fields."},
                                {"role": "user", "content": "Document number 0."}]
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == SCHEMA
    assert body["response_format"]["json_schema"]["strict"] is True
    assert "response_format" not in lines[2]["body"] and lines[2]["body"]["messages"][0]["role"] == "user"
    assert fake.files[handle["input_file_id"]]["purpose"] == "batch"
    await run_to_end(config, handle)
    results = await fetch_all(config, handle)
    assert results["plain-1"].text == json.dumps({"id": "plain-1", "ok": True})  # plain text: as it came


async def test_anthropic_requests_use_the_forced_output_tool(fake):
    config = config_for(fake, "anthropic")
    handle = await submit_batch(config, config["id"], requests_for(2))
    params = fake.anthropic[handle["batch_id"]]["requests"][0]["params"]
    assert params["model"] == "claude-haiku-4-5" and params["max_tokens"] == 256
    assert params["system"] == "Extract the fields."
    assert params["tools"][0]["input_schema"] == SCHEMA
    assert params["tool_choice"] == {"type": "tool", "name": params["tools"][0]["name"]}
    native = config_for(fake, "anthropic", structured_output="native")
    handle = await submit_batch(native, native["id"], requests_for(1))
    params = fake.anthropic[handle["batch_id"]]["requests"][0]["params"]
    assert params["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}
    assert "tools" not in params
    await run_to_end(native, handle)
    results = await fetch_all(native, handle)
    assert json.loads(results["row-0"].text) == {"id": "row-0", "ok": True}


@pytest.mark.parametrize("vendor", VENDORS)
async def test_the_fake_speaks_the_sdks_own_types(fake, vendor):
    """Every object the fake sends validates against the SDK's model, with no invented field."""
    fake.outcomes.update({"row-1": Outcome("error"), "row-2": Outcome("prose", "No.")})
    config = config_for(fake, vendor)
    handle = await submit_batch(config, config["id"], requests_for(3))
    await run_to_end(config, handle)
    headers = {"host": "127.0.0.1"}

    def valid(model, obj):
        assert set(obj) <= set(model.model_fields), set(obj) - set(model.model_fields)
        missing_fields = {n for n, f in model.model_fields.items() if f.is_required()} - set(obj)
        assert not missing_fields, missing_fields
        model.model_validate(obj)

    if vendor == "openai":
        from openai.types import Batch, FileObject
        from openai.types.chat import ChatCompletion

        batch = fake.openai[handle["batch_id"]]
        valid(Batch, fake._openai_object(batch))
        valid(FileObject, fake._file_object(fake.files[batch["output_file_id"]]))
        for file_id in (batch["output_file_id"], batch["error_file_id"]):
            for raw in fake.files[file_id]["data"].splitlines():
                line = json.loads(raw)
                assert set(line) == {"id", "custom_id", "response", "error"}
                if line["response"] and line["response"]["status_code"] == 200:
                    valid(ChatCompletion, line["response"]["body"])
    else:
        from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse

        batch = fake.anthropic[handle["batch_id"]]
        valid(MessageBatch, fake._anthropic_object(batch, headers))
        for line in batch["results"]:
            MessageBatchIndividualResponse.model_validate(line)
            assert set(line) == {"custom_id", "result"}


# ------------------------------------------------------------------ whole batches
@pytest.mark.parametrize("vendor", VENDORS)
async def test_batch_that_expires_keeps_what_was_answered(fake, vendor):
    fake.next_batch_fate = "expire"
    fake.expire_after = 2
    config = config_for(fake, vendor)
    handle = await submit_batch(config, config["id"], requests_for(5))
    status = await run_to_end(config, handle)
    assert status["state"] == "expired"
    results = await fetch_all(config, handle)
    assert sorted(results) == [f"row-{i}" for i in range(5)]
    assert [r.error_class for _, r in sorted(results.items())] == [None, None, "expired", "expired", "expired"]
    assert "24 h" in results["row-4"].error or "completion window" in results["row-4"].error


async def test_openai_batch_that_fails_validation(fake):
    fake.next_batch_fate = "fail_validation"
    config = config_for(fake, "openai")
    handle = await submit_batch(config, config["id"], requests_for(3))
    status = await run_to_end(config, handle)
    assert status["state"] == "failed"
    assert "not supported with the Batch API" in status["errors"][0]
    results = await fetch_all(config, handle)
    assert {r.error_class for r in results.values()} == {"batch_failed"} and len(results) == 3
    assert "not supported with the Batch API" in results["row-0"].error


@pytest.mark.parametrize("vendor", VENDORS)
async def test_bad_requests_are_refused_before_anything_is_sent(fake, vendor):
    config = config_for(fake, vendor)
    cases = [
        ([], "at least one request"),
        (requests_for(2) + requests_for(1), "appears twice"),
        ([BatchRequest("row 1/2", "", "x", None, 10)], "1-64 letters"),
        ([BatchRequest("r", "", "x", None, 0)], "max_tokens"),
        ([BatchRequest("r", "", "x" * 3000, None, 10)], "more than one batch may hold"),
    ]
    for requests, message in cases:
        with pytest.raises(ValueError, match=message):
            await submit_batch(config, config["id"], requests, max_bytes=6000)
    assert fake.log == []


async def test_anthropic_refusal_of_the_batch_is_not_retried(fake):
    fake.fail_next("POST", "/v1/messages/batches", 400)
    config = config_for(fake, "anthropic")
    with pytest.raises(ModelError) as caught:
        await submit_batch(config, config["id"], requests_for(2), sleep=Sleeps())
    assert caught.value.error_class == "bad_request" and "Creating the Anthropic message batch" in str(caught.value)
    assert fake.calls("POST", "/v1/messages/batches") == 1


@pytest.mark.parametrize("vendor", VENDORS)
async def test_a_server_without_the_batch_api_gets_a_clear_error(fake, vendor):
    fake.fail_next("POST", "/v1/files" if vendor == "openai" else "/v1/messages/batches", 404)
    config = config_for(fake, vendor)
    with pytest.raises(ModelError, match="no batch API answers so too") as caught:
        await submit_batch(config, config["id"], requests_for(2))
    assert caught.value.error_class == "not_found" and fake.openai == {} and fake.anthropic == {}


# ------------------------------------------------------------------ limits
def test_split_at_the_vendors_real_limits():
    for vendor, (count, size) in batchformat.LIMITS.items():
        parts = batchformat.split([100] * (count + 1), count, size)
        assert [len(p) for p in parts] == [count, 1], vendor
    big = 90_000_000  # three 90 MB requests: two fit in 200 MB, not three
    assert [len(p) for p in batchformat.split([big] * 3, 50_000, 200_000_000)] == [2, 1]
    assert batchformat.LIMITS == {"openai": (50_000, 200_000_000), "anthropic": (100_000, 256_000_000)}


@pytest.mark.parametrize("vendor", VENDORS)
async def test_large_batch_is_split_and_read_back_as_one(fake, vendor):
    fake.outcomes["row-7"] = Outcome("missing")
    config = config_for(fake, vendor)
    handle = await submit_batch(config, config["id"], requests_for(12), max_requests=5)
    assert [len(p["custom_ids"]) for p in handle["parts"]] == [5, 5, 2]
    assert handle["batch_id"] == handle["parts"][0]["batch_id"]
    status = await run_to_end(config, handle)
    assert status["state"] == "ended" and status["total"] == 12 and len(status["parts"]) == 3
    results = await fetch_all(config, handle)
    assert sorted(results) == sorted(f"row-{i}" for i in range(12))
    assert [k for k, r in results.items() if r.error] == ["row-7"]
    # by size too: each part under the byte limit
    handle = await submit_batch(config, config["id"], requests_for(6), max_bytes=4096 + 1200)
    assert len(handle["parts"]) > 1


@pytest.mark.parametrize("vendor", VENDORS)
async def test_the_fake_refuses_a_batch_over_the_limit_as_the_vendor_does(fake, vendor, monkeypatch):
    from . import fake_batch_api

    monkeypatch.setattr(fake_batch_api, "OPENAI_MAX_REQUESTS", 5)
    monkeypatch.setattr(fake_batch_api, "ANTHROPIC_MAX_REQUESTS", 5)
    config = config_for(fake, vendor)
    if vendor == "openai":  # refused when validating the input file
        handle = await submit_batch(config, config["id"], requests_for(6))
        status = await run_to_end(config, handle)
        assert status["state"] == "failed" and "more than 5 requests" in status["errors"][0]
    else:  # refused at once
        with pytest.raises(ModelError, match="at most 5 requests"):
            await submit_batch(config, config["id"], requests_for(6))
    handle = await submit_batch(config, config["id"], requests_for(6), max_requests=5)
    assert (await run_to_end(config, handle))["state"] == "ended"
    assert len(await fetch_all(config, handle)) == 6


async def test_one_part_refused_cancels_the_parts_already_submitted(fake, monkeypatch):
    config = config_for(fake, "openai")
    create = fake._openai_create

    def refuse_the_second(body):
        if fake.openai:  # part 1 exists: refuse part 2 as the vendor would
            return fake._error(400, "Scripted refusal of part 2.", False)
        return create(body)

    monkeypatch.setattr(fake, "_openai_create", refuse_the_second)
    with pytest.raises(ModelError, match="already submitted were cancelled") as caught:
        await submit_batch(config, config["id"], requests_for(6), max_requests=3, sleep=Sleeps())
    assert "part 2 of 2" in str(caught.value) and "Scripted refusal" in str(caught.value)
    assert len(fake.openai) == 1
    assert next(iter(fake.openai.values()))["status"] == "cancelling"


# ------------------------------------------------------------------ faults on submit
@pytest.mark.parametrize("vendor", VENDORS)
async def test_submit_retries_429_and_5xx_honouring_retry_after(fake, vendor):
    path = "/v1/batches" if vendor == "openai" else "/v1/messages/batches"
    fake.fail_next("POST", path, 429, retry_after=7)
    fake.fail_next("POST", path, 529 if vendor == "anthropic" else 503)
    if vendor == "openai":
        fake.fail_next("POST", "/v1/files", 502)
    sleeps = Sleeps()
    config = config_for(fake, vendor)
    handle = await submit_batch(config, config["id"], requests_for(3), sleep=sleeps)
    assert fake.calls("POST", path) == 3
    assert 7 in sleeps and len(sleeps) == (3 if vendor == "openai" else 2)
    batches = fake.openai if vendor == "openai" else fake.anthropic
    assert handle["batch_id"] in batches and len(batches) == 1
    await run_to_end(config, handle)
    assert len(await fetch_all(config, handle)) == 3


async def test_openai_create_that_failed_after_creating_is_not_duplicated(fake):
    fake.fail_next("POST", "/v1/batches", 500, after=True)
    config = config_for(fake, "openai")
    handle = await submit_batch(config, config["id"], requests_for(3), sleep=Sleeps())
    assert len(fake.openai) == 1 and handle["batch_id"] in fake.openai
    assert fake.calls("GET", "/v1/batches") == 1 and fake.calls("POST", "/v1/batches") == 1


async def test_anthropic_create_that_may_have_worked_is_not_sent_twice(fake):
    fake.fail_next("POST", "/v1/messages/batches", 500, after=True)
    config = config_for(fake, "anthropic")
    with pytest.raises(ModelError, match="may have been created") as caught:
        await submit_batch(config, config["id"], requests_for(3), sleep=Sleeps())
    assert fake.calls("POST", "/v1/messages/batches") == 1 and len(fake.anthropic) == 1
    assert caught.value.error_class == "server_error"


@pytest.mark.parametrize("vendor", VENDORS)
async def test_gives_up_after_the_retries_with_a_clear_error(fake, vendor):
    path = "/v1/batches" if vendor == "openai" else "/v1/messages/batches"
    fake.fail_next("POST", path, 429, retry_after=1, times=5)
    config = config_for(fake, vendor)
    with pytest.raises(ModelError, match=r"after 5 attempts.*rate limited \(429\)"):
        await submit_batch(config, config["id"], requests_for(2), sleep=Sleeps())
    assert fake.calls("POST", path) == 5


# ------------------------------------------------------------------ restart, cancel, running
@pytest.mark.parametrize("vendor", VENDORS)
async def test_poll_and_fetch_after_a_process_restart_with_only_the_handle(fake, vendor, tmp_path):
    config = config_for(fake, vendor)
    script = tmp_path / "submit.py"
    script.write_text(
        "import asyncio, json, sys\n"
        "from datasette_llm_core.batches import BatchRequest, submit_batch\n"
        "config = json.loads(sys.argv[1])\n"
        "requests = [BatchRequest(f'row-{i}', 'Extract.', f'Doc {i}.', json.loads(sys.argv[2]), 100)"
        " for i in range(4)]\n"
        "print(json.dumps(asyncio.run(submit_batch(config, config['id'], requests))))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(script), json.dumps(config), json.dumps(SCHEMA)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert SECRET_MARKER not in done.stdout + done.stderr
    handle = json.loads(done.stdout)  # all that survives the submitting process
    status = await run_to_end(config, handle)
    assert status["state"] == "ended"
    results = await fetch_all(config, handle)
    assert sorted(results) == [f"row-{i}" for i in range(4)]
    assert all(json.loads(r.text)["ok"] for r in results.values())


@pytest.mark.parametrize("vendor", VENDORS)
async def test_a_handle_with_only_provider_and_batch_id(fake, vendor):
    """The smallest handle the interface promises: {"provider", "batch_id", "input_file_id"}."""
    fake.outcomes["row-2"] = Outcome("missing")
    config = config_for(fake, vendor)
    requests = requests_for(3) + [BatchRequest("plain-1", "", "Say hello.", None, 64)]
    full = await submit_batch(config, config["id"], requests)
    handle = {k: full[k] for k in ("provider", "batch_id", "input_file_id")}
    await run_to_end(config, handle)
    results = await fetch_all(config, handle)
    assert json.loads(results["row-0"].text) == {"id": "row-0", "ok": True}
    if vendor == "openai":  # the ids come from the input file: the missing one is reported
        assert sorted(results) == ["plain-1", "row-0", "row-1", "row-2"]
        assert results["row-2"].error_class == "missing"
        assert results["plain-1"].error is None  # sent without a schema: plain text is fine
    else:  # nothing to know the ids by: every result given, a missing one cannot be told
        assert sorted(results) == ["plain-1", "row-0", "row-1"]


async def test_a_lost_openai_handle_is_found_again_by_its_submission_id(fake):
    fake.outcomes["row-4"] = Outcome("missing")
    config = config_for(fake, "openai")
    requests = requests_for(5) + [BatchRequest("plain-1", "", "Say hello.", None, 64)]
    lost = await submit_batch(config, config["id"], requests, submission_id="enrich:7/a1", max_requests=4)
    await submit_batch(config, config["id"], requests_for(2), submission_id="another-job")
    found = await find_batch(config, config["id"], "enrich:7/a1")
    assert found["parts_expected"] == 2
    for key in ("provider", "batch_id", "input_file_id", "model", "total", "submission_id"):
        assert found[key] == lost[key], key
    assert [(p["batch_id"], p["custom_ids"], p["plain_ids"]) for p in found["parts"]] == [
        (p["batch_id"], p["custom_ids"], p["plain_ids"]) for p in lost["parts"]]
    await run_to_end(config, found)
    results = await fetch_all(config, found)
    assert len(results) == 6 and results["row-4"].error_class == "missing"
    assert results["plain-1"].error is None
    assert await find_batch(config, config["id"], "never-submitted") is None
    with pytest.raises(ConfigError, match=r"no\s+metadata"):
        await find_batch(config_for(fake, "anthropic"), "anthropic-batch", "enrich:7/a1")


@pytest.mark.parametrize("vendor", VENDORS)
async def test_cancel_keeps_the_answers_and_reports_the_rest(fake, vendor):
    fake.polls_to_finish = 10
    config = config_for(fake, vendor)
    handle = await submit_batch(config, config["id"], requests_for(6))
    assert (await poll_batch(config, handle))["state"] == "in_progress"
    with pytest.raises(ModelError, match="still running") as caught:
        await fetch_all(config, handle)
    assert caught.value.error_class == "batch_in_progress"
    await cancel_batch(config, handle)
    status = await run_to_end(config, handle)
    assert status["state"] == "cancelled"
    results = await fetch_all(config, handle)
    assert sorted(results) == [f"row-{i}" for i in range(6)]
    classes = sorted(str(r.error_class) for r in results.values())
    assert classes == ["None"] * 3 + ["cancelled"] * 3
    await cancel_batch(config, handle)  # a finished batch: nothing to do, no error


@pytest.mark.parametrize("vendor", VENDORS)
async def test_a_download_that_breaks_off_is_resumed_without_repeats(fake, vendor):
    config = config_for(fake, vendor)
    handle = await submit_batch(config, config["id"], requests_for(40))
    await run_to_end(config, handle)
    path = r"/v1/files/[^/]+/content" if vendor == "openai" else r"/v1/messages/batches/[^/]+/results"
    fake.fail_next("GET", path, 200, truncate=True)
    sleeps = Sleeps()
    results = await fetch_all(config, handle, sleep=sleeps)  # fails on a repeated custom_id
    assert sorted(results) == sorted(f"row-{i}" for i in range(40))
    assert all(r.error is None for r in results.values()) and len(sleeps) == 1
    assert fake.calls("GET", path) == 2
    fake.fail_next("GET", path, 200, truncate=True, times=3)
    with pytest.raises(ModelError, match="broke off 3 times"):
        await fetch_all(config, handle, sleep=sleeps, retries=3)


# ------------------------------------------------------------------ configuration, keys
def test_supports_batch():
    assert supports_batch({"provider": "openai"}) and supports_batch({"provider": "anthropic"})
    assert not supports_batch({"provider": "openai-compatible", "base_url": "http://127.0.0.1:1/v1"})
    assert not supports_batch({"provider": "llm"}) and not supports_batch({})


async def test_unsupported_provider_and_wrong_handle_are_config_errors(fake):
    with pytest.raises(ConfigError, match="no batch API"):
        await submit_batch({"id": "local", "provider": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"},
                           "local", requests_for(1))
    handle = await submit_batch(config_for(fake, "openai"), "openai-batch", requests_for(1))
    with pytest.raises(ConfigError, match="submitted to openai"):
        await poll_batch(config_for(fake, "anthropic"), handle)
    with pytest.raises(ConfigError, match="timeout: ") as caught:
        await submit_batch({"provider": "openai", "api_key": FAKE_API_KEYS["OPENAI_API_KEY"],
                            "timeout": FAKE_API_KEYS["OPENAI_API_KEY"]}, "gpt-4.1-mini", requests_for(1))
    assert SECRET_MARKER not in str(caught.value)
    with pytest.raises(ValueError, match="Not a batch handle"):
        await poll_batch(config_for(fake, "openai"), {"batch_id": "x"})


@pytest.mark.parametrize("vendor", VENDORS)
async def test_keys_never_appear_in_errors_or_results(fake, vendor, monkeypatch):
    key = FAKE_API_KEYS["OPENAI_API_KEY" if vendor == "openai" else "ANTHROPIC_API_KEY"]
    fake.api_key = key
    fake.outcomes["row-0"] = Outcome("error", message=f"Invalid request: the header said {key}")
    config = config_for(fake, vendor)
    handle = await submit_batch(config, config["id"], requests_for(2))
    await run_to_end(config, handle)
    results = await fetch_all(config, handle)
    assert key not in results["row-0"].error and "[REDACTED]" in results["row-0"].error
    monkeypatch.setenv("OPENAI_API_KEY" if vendor == "openai" else "ANTHROPIC_API_KEY", key + "-rotated-away")
    with pytest.raises(ModelError) as caught:
        await poll_batch(config, handle)
    assert caught.value.error_class == "auth" and SECRET_MARKER not in str(caught.value)
    assert fake.calls("GET", r".*batches/[^/]+") >= 1


def test_batch_cost_is_half_the_list_price():
    from datasette_llm_core.providers import pricing

    info = pricing.chat_info("gpt-4.1-mini")
    full = (1_000_000 * info.input_cost_per_mtok + 1_000_000 * info.output_cost_per_mtok) / 1_000_000
    assert BATCH_DISCOUNT == 0.5
    assert batch_cost({"provider": "openai"}, "gpt-4.1-mini", 1_000_000, 1_000_000) == pytest.approx(full / 2)
    assert batch_cost({"provider": "openai", "input_cost_per_mtok": 2.0, "output_cost_per_mtok": 4.0},
                      "local-thing", 1_000_000, 500_000) == pytest.approx(2.0)
    assert batch_cost({"provider": "openai"}, "unknown-model", 10, 10) is None


def test_estimate_is_the_live_estimate_at_half_price():
    from datasette_llm_core.budget import estimate
    from datasette_llm_core.config import ModelConfig
    from datasette_llm_core.providers.builtin import build_chat_model
    from datasette_llm_core.types import ChatRequest, Message

    model = build_chat_model(ModelConfig(id="gpt-4.1-mini", provider="openai", api_key="x" * 20))
    requests = requests_for(3) + [BatchRequest("long", "Extract.", "word " * 4000, SCHEMA, 500)]
    live = [estimate(ChatRequest([Message.user(r.user)], system=r.system, json_schema=r.json_schema,
                                 max_tokens=r.max_tokens), model) for r in requests]
    tokens_in, tokens_out, cost = estimate_batch({"provider": "openai"}, "gpt-4.1-mini", requests)
    assert tokens_out == sum(x[1] for x in live)
    assert abs(tokens_in - sum(x[0] for x in live)) <= 16 * len(requests)
    assert cost == pytest.approx(sum(x[2] for x in live) / 2, rel=0.05)


# ------------------------------------------------------------------ transports, call log
@pytest.mark.parametrize("vendor", VENDORS)
async def test_through_an_httpx2_mock_transport(vendor, fake_api_keys, monkeypatch):
    import httpx2

    from datasette_llm_core.providers import builtin

    fake = FakeBatchAPI(polls_to_finish=1)
    fake.outcomes["row-1"] = Outcome("prose", "No JSON here.")
    monkeypatch.setattr(builtin, "make_http_client",
                        lambda config: httpx2.AsyncClient(transport=fake.transport()))
    base = "http://batch-fake.invalid/v1" if vendor == "openai" else "http://batch-fake.invalid"
    config = {"id": "m", "provider": vendor, "model": MODELS[vendor], "base_url": base}
    handle = await submit_batch(config, "m", requests_for(3))
    assert (await poll_batch(config, handle))["state"] == "ended"
    results = await fetch_all(config, handle)
    assert results["row-1"].error_class == "not_json" and results["row-0"].error is None
    assert len(results) == 3


async def test_results_are_logged_in_the_call_log(fake):
    from datasette.app import Datasette

    from datasette_llm_core.calllog import calls_for_ref, usage_for_ref

    ds = Datasette(memory=True, metadata={"plugins": {"datasette-llm-newsroom": {"state_database": ":memory:"}}})
    await ds.invoke_startup()
    fake.outcomes["row-2"] = Outcome("error", message="refused")
    config = config_for(fake, "openai")
    handle = await submit_batch(config, config["id"], requests_for(3))
    await run_to_end(config, handle)
    results = await fetch_all(config, handle, datasette=ds, ref="enrich-job-1", purpose="enrich",
                              actor={"id": "maria"})
    rows = await calls_for_ref(ds, "enrich-job-1")
    assert len(rows) == 3
    assert {r["call_group"] for r in rows} == {f"batch:{handle['batch_id']}"}
    assert sorted(r["outcome"] for r in rows) == ["error", "ok", "ok"]
    assert {r["purpose"] for r in rows} == {"enrich"} and {r["actor_id"] for r in rows} == {"maria"}
    usage = await usage_for_ref(ds, "enrich-job-1")
    assert usage["input_tokens"] == 240 and usage["output_tokens"] == 60
    assert usage["cost_usd"] == pytest.approx(sum(r.cost_usd or 0 for r in results.values()))
    assert usage["cost_usd"] == pytest.approx(batch_cost(config, "gpt-4.1-mini", 240, 60))
