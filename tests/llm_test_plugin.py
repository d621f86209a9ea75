"""An ``llm`` model plugin of our own, registered through llm's real plugin manager.

``register()`` adds this module to ``llm.plugins.pm`` (exactly what llm does
with an installed plugin's entry point); its ``register_models`` and
``register_embedding_models`` hooks then add:

- ``scripted-sync``: a sync ``llm.Model`` (streams, schemas, PNG/JPEG images);
  the gateway must run it in a worker thread;
- ``scripted-async``: an ``llm.AsyncKeyModel`` (with its sync twin) that needs
  the key ``scripted`` (``SCRIPTED_LLM_KEY``), streams and reads PDFs;
- ``plain-llm``: a sync, single-turn model that cannot stream, has no schemas and no attachments;
- ``claude-haiku-4-5-test``: like ``scripted-sync``, under an id whose price the suite knows;
- ``scripted-embed``: an embedding model (8 dimensions, hashed words).

Each call takes the next entry of ``SCRIPT`` (or ``DEFAULT``): text chunks,
usage, an optional exception raised after some chunks (an ``httpx2``
429/500 with Retry-After, as llm plugins built on httpx raise it, optionally
wrapped in ``llm.ModelError``), a delay per chunk. ``CALLS`` records what
each call received (prompt, system, schema, attachments, key, options, thread).
For a server process, ``tests/llm_plugins_dir/`` registers it at startup.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field

import httpx2
import llm
from pydantic import Field

PLUGIN_NAME = "datasette-llm-newsroom-test-models"


@dataclass
class Turn:
    chunks: list[str] = field(default_factory=lambda: ["Hello ", "from ", "llm."])
    input_tokens: int | None = 11
    output_tokens: int | None = 3
    #: HTTP status to fail with (429, 500...), after ``fail_after`` chunks.
    fail_status: int | None = None
    fail_after: int = 0
    retry_after: float | None = None
    #: Raise ``llm.ModelError`` from the httpx2 error, as some plugins do.
    wrap: bool = False
    error: Exception | None = None
    delay: float = 0.0
    stop_reason: str | None = "end_turn"
    #: Yielded first as a ``StreamEvent(type="reasoning")``: not part of the answer.
    reasoning: str | None = None


SCRIPT: list[Turn] = []
DEFAULT = Turn()
CALLS: list[dict] = []


def reset() -> None:
    SCRIPT.clear()
    CALLS.clear()


def _next_turn() -> Turn:
    """The next scripted turn: from ``SCRIPT``, or (in a server process) from the JSON
    list of Turn fields in the file named by LLM_TEST_PLUGIN_SCRIPT, consumed in order."""
    if SCRIPT:
        return SCRIPT.pop(0)
    path = os.environ.get("LLM_TEST_PLUGIN_SCRIPT")
    if path and os.path.exists(path):
        with open(path) as f:
            turns = json.load(f)
        if turns:
            with open(path, "w") as f:
                json.dump(turns[1:], f)
            return Turn(**turns[0])
    return DEFAULT


def _failure(turn: Turn) -> Exception:
    if turn.error is not None:
        return turn.error
    request = httpx2.Request("POST", "http://127.0.0.1:9/v1/generate")
    headers = {"retry-after": f"{turn.retry_after:g}"} if turn.retry_after is not None else {}
    kind = "rate_limit_error" if turn.fail_status == 429 else "api_error"
    response = httpx2.Response(turn.fail_status, headers=headers, request=request,
                               json={"error": {"message": f"scripted {turn.fail_status}", "type": kind}})
    try:
        response.raise_for_status()
    except httpx2.HTTPStatusError as e:
        if turn.wrap:
            try:
                raise llm.ModelError(f"The API said no ({turn.fail_status})") from e
            except llm.ModelError as wrapped:
                return wrapped
        return e
    raise AssertionError("unreachable")


def _record(model, prompt, key=None) -> dict:
    call = {
        "model": model.model_id,
        "prompt": prompt.prompt,
        "system": prompt.system,
        "schema": prompt.schema,
        "attachments": [(a.type, len(a.content or b"")) for a in prompt.attachments],
        "messages": [(m.role, len(m.parts)) for m in prompt.messages],
        "options": prompt.options.model_dump(exclude_none=True),
        "key": key,
        "thread": threading.current_thread().name,
    }
    CALLS.append(call)
    return call


class _Options(llm.Options):
    max_tokens: int | None = Field(None, description="Output cap", le=1000)
    temperature: float | None = Field(None, description="Sampling temperature")


class ScriptedSync(llm.Model):
    model_id = "scripted-sync"
    can_stream = True
    supports_schema = True
    attachment_types = {"image/png", "image/jpeg"}
    Options = _Options

    def execute(self, prompt, stream, response, conversation):
        call = _record(self, prompt)
        turn = _next_turn()
        try:
            if turn.reasoning:
                from llm.parts import StreamEvent

                yield StreamEvent(type="reasoning", chunk=turn.reasoning)
            for index, chunk in enumerate(turn.chunks):
                if turn.fail_status or turn.error:
                    if index == turn.fail_after:
                        raise _failure(turn)
                if turn.delay:
                    time.sleep(turn.delay)
                yield chunk
        finally:
            call["closed"] = True  # finished, failed, or closed by the reader
        if (turn.fail_status or turn.error) and turn.fail_after >= len(turn.chunks):
            raise _failure(turn)
        response.set_usage(input=turn.input_tokens, output=turn.output_tokens)
        response.response_json = {"stop_reason": turn.stop_reason}


class PricedSync(ScriptedSync):
    """An id in the family of a model whose list price the suite knows."""

    model_id = "claude-haiku-4-5-test"


class PlainSync(llm.Model):
    model_id = "plain-llm"
    can_stream = False
    supports_conversation = False  # single-turn: llm refuses assistant messages

    def execute(self, prompt, stream, response, conversation):
        _record(self, prompt)
        turn = _next_turn()
        if turn.fail_status or turn.error:
            raise _failure(turn)
        yield "".join(turn.chunks)
        response.set_usage(input=turn.input_tokens, output=turn.output_tokens)


class ScriptedKeySync(llm.KeyModel):
    model_id = "scripted-async"
    needs_key = "scripted"
    key_env_var = "SCRIPTED_LLM_KEY"
    can_stream = True
    attachment_types = {"application/pdf"}
    Options = _Options

    def execute(self, prompt, stream, response, conversation, key):
        raise AssertionError("the gateway must use the async model when there is one")


class ScriptedAsync(llm.AsyncKeyModel):
    model_id = "scripted-async"
    needs_key = "scripted"
    key_env_var = "SCRIPTED_LLM_KEY"
    can_stream = True
    attachment_types = {"application/pdf"}
    Options = _Options

    async def execute(self, prompt, stream, response, conversation, key):
        _record(self, prompt, key)
        turn = _next_turn()
        for index, chunk in enumerate(turn.chunks):
            if (turn.fail_status or turn.error) and index == turn.fail_after:
                raise _failure(turn)
            if turn.delay:
                await asyncio.sleep(turn.delay)
            yield chunk
        if (turn.fail_status or turn.error) and turn.fail_after >= len(turn.chunks):
            raise _failure(turn)
        response.set_usage(input=turn.input_tokens, output=turn.output_tokens)


class ScriptedEmbedding(llm.EmbeddingModel):
    model_id = "scripted-embed"
    batch_size = 4

    def embed_batch(self, items, *, key=None):
        CALLS.append({"model": self.model_id, "items": list(items),
                      "thread": threading.current_thread().name})
        for text in CALLS[-1]["items"]:
            vector = [0.0] * 8
            for word in str(text).lower().split():
                vector[hashlib.md5(word.encode()).digest()[0] % 8] += 1.0
            yield vector


@llm.hookimpl
def register_models(register):
    register(ScriptedSync())
    register(ScriptedKeySync(), ScriptedAsync(), aliases=["scripted-alias"])
    register(PlainSync())
    register(PricedSync())


@llm.hookimpl
def register_embedding_models(register):
    register(ScriptedEmbedding())


def register() -> None:
    """Add this plugin to llm's plugin manager, as llm does for an installed plugin."""
    import sys

    from llm.plugins import pm

    module = sys.modules[__name__]
    if not pm.is_registered(module):
        pm.register(module, name=PLUGIN_NAME)


def unregister() -> None:
    import sys

    from llm.plugins import pm

    module = sys.modules[__name__]
    if pm.is_registered(module):
        pm.unregister(module)
