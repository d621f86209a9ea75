"""Responses shaped exactly like OpenAI's and Anthropic's, for transport-level fakes.

``VendorServer`` is an ``httpx2.MockTransport`` handler: tests queue the
responses the "vendor" will give, hand ``server.client()`` to the SDK as its
``http_client`` and read back every request the SDK sent.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import httpx2

CREATED = 1_763_700_000


# ---------------------------------------------------------------- OpenAI
def openai_usage(prompt: int, completion: int) -> dict:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def openai_completion(content: str, *, model="gpt-4.1-mini-2025-04-14", prompt=31, completion=9,
                      finish_reason="stop", refusal=None) -> dict:
    return {
        "id": "chatcmpl-CU7gq9x1VnZ0q3bq6b0Yk2P8Jm3Rt",
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "refusal": refusal,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": openai_usage(prompt, completion),
        "service_tier": "default",
        "system_fingerprint": "fp_6f2eabb9a5",
    }


def _openai_chunk(delta: dict, finish_reason=None, *, model, usage=None, choices=True) -> dict:
    return {
        "id": "chatcmpl-CU7h2bH5b0Q4mX9nV8r1c6Lk0aZpe",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "service_tier": "default",
        "system_fingerprint": "fp_6f2eabb9a5",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        if choices
        else [],
        "usage": usage,
    }


def openai_sse(pieces: list[str], *, model="gpt-4.1-mini-2025-04-14", prompt=31, completion=9,
               finish_reason="stop", usage_chunk=True, done=True) -> bytes:
    """A Chat Completions stream: role chunk, content chunks, finish chunk, usage chunk, [DONE]."""
    chunks = [_openai_chunk({"role": "assistant", "content": "", "refusal": None}, model=model)]
    chunks += [_openai_chunk({"content": p}, model=model) for p in pieces]
    chunks.append(_openai_chunk({}, finish_reason, model=model))
    if usage_chunk:
        chunks.append(_openai_chunk({}, model=model, usage=openai_usage(prompt, completion), choices=False))
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks)
    if done:
        body += "data: [DONE]\n\n"
    return body.encode()


def openai_error(message: str, *, type="invalid_request_error", code=None, param=None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def openai_embeddings(vectors: list[list[float]], *, model="text-embedding-3-small", prompt=12,
                      order=None) -> dict:
    order = order or list(range(len(vectors)))
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": vectors[i]} for i in order],
        "model": model,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }


# ---------------------------------------------------------------- Anthropic
def anthropic_usage(input_tokens: int, output_tokens: int) -> dict:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def anthropic_message(content: list[dict], *, model="claude-haiku-4-5-20251001", stop_reason="end_turn",
                      input_tokens=42, output_tokens=17) -> dict:
    return {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": anthropic_usage(input_tokens, output_tokens),
    }


def anthropic_text_block(text: str) -> dict:
    return {"type": "text", "text": text}


def anthropic_tool_block(name: str, data: dict) -> dict:
    return {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": name, "input": data}


def _event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


def anthropic_sse(pieces: list[str], *, tool: str | None = None, model="claude-haiku-4-5-20251001",
                  input_tokens=42, output_tokens=17, stop_reason=None, error: dict | None = None,
                  error_after: int | None = None) -> bytes:
    """A Messages stream; with ``tool`` the pieces are input_json_delta partial_json."""
    out = [
        _event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_014p7gG3wDgGV9EUtLvnow3U",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": anthropic_usage(input_tokens, 1),
                },
            },
        )
    ]
    if tool:
        block = {"type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": tool, "input": {}}
    else:
        block = {"type": "text", "text": ""}
    out.append(_event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}))
    out.append(_event("ping", {"type": "ping"}))
    if tool:
        out.append(_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                  "delta": {"type": "input_json_delta", "partial_json": ""}}))
    for i, piece in enumerate(pieces):
        if error is not None and error_after == i:
            out.append(_event("error", error))
            return "".join(out).encode()
        delta = (
            {"type": "input_json_delta", "partial_json": piece}
            if tool
            else {"type": "text_delta", "text": piece}
        )
        out.append(_event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}))
    out.append(_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
    out.append(
        _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason or ("tool_use" if tool else "end_turn"),
                          "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        )
    )
    out.append(_event("message_stop", {"type": "message_stop"}))
    return "".join(out).encode()


def anthropic_error(type: str, message: str) -> dict:
    return {"type": "error", "error": {"type": type, "message": message},
            "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}


# ---------------------------------------------------------------- fake server
@dataclass
class Reply:
    status: int = 200
    json: dict | None = None
    sse: bytes | None = None
    headers: dict = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    method: str
    url: str
    headers: dict
    body: dict | None


class VendorServer:
    """Replays queued ``Reply`` objects; records every request."""

    def __init__(self, vendor: str = "openai"):
        self.vendor = vendor
        self.replies: list[Reply] = []
        self.requests: list[Seen] = []

    def queue(self, *replies: Reply) -> "VendorServer":
        self.replies.extend(replies)
        return self

    async def handler(self, request: httpx2.Request) -> httpx2.Response:
        raw = await request.aread()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        self.requests.append(Seen(request.method, str(request.url), dict(request.headers), body))
        if not self.replies:
            raise AssertionError(f"unexpected request to {request.url}")
        reply = self.replies.pop(0)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        headers = dict(reply.headers)
        if self.vendor == "anthropic":
            headers.setdefault("request-id", "req_011CSHoEeqs5C35K2UUqR7Fy")
        else:
            headers.setdefault("x-request-id", "req_8f1d2c3b4a5e6f708192a3b4c5d6e7f8")
        if reply.sse is not None:
            headers["content-type"] = "text/event-stream; charset=utf-8"
            return httpx2.Response(reply.status, headers=headers, content=reply.sse)
        return httpx2.Response(reply.status, headers=headers, json=reply.json)

    def client(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(transport=httpx2.MockTransport(self.handler))
