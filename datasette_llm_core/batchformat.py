"""Pure pieces of the batch APIs: request lines, splitting, result parsing, prices.

Nothing here talks to a vendor or imports Datasette; ``batches.py`` does the
SDK calls. Shapes follow the vendors' documentation:

- OpenAI Batch API: a JSONL input file, one ``{"custom_id", "method": "POST",
  "url": "/v1/chat/completions", "body"}`` per line; output and error files
  with one ``{"id", "custom_id", "response": {"status_code", "request_id",
  "body"} | null, "error": {"code", "message"} | null}`` per line, in any
  order. At most 50,000 requests and 200 MB per input file.
- Anthropic Message Batches: ``{"custom_id", "params"}`` requests; results as
  JSONL lines ``{"custom_id", "result": {"type": "succeeded" | "errored" |
  "canceled" | "expired", ...}}`` in any order. At most 100,000 requests and
  256 MB per batch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from .calllog import redact
from .providers import pricing
from .providers.anthropic_models import json_in_text

#: Batch calls cost half the list price at both vendors.
BATCH_DISCOUNT = 0.5

#: (requests, bytes) per batch. Bytes in decimal megabytes, the smaller
#: reading of the vendors' "200 MB" / "256 MB".
LIMITS = {
    "openai": (50_000, 200_000_000),
    "anthropic": (100_000, 256_000_000),
}
#: Room left in each byte limit for the envelope around the requests.
ENVELOPE_BYTES = 4_096

#: Both vendors match results by custom_id; Anthropic allows only these.
CUSTOM_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

#: What a request's error says, quoted at most this long.
QUOTE_CHARS = 300


@dataclass(frozen=True)
class BatchRequest:
    """One model call of a batch: a system prompt, one user message, an optional schema."""

    custom_id: str
    system: str
    user: str
    json_schema: dict | None
    max_tokens: int
    #: Name given to the schema (OpenAI ``json_schema.name``, Anthropic tool name).
    schema_name: str = "output"


@dataclass(frozen=True)
class BatchResult:
    """The outcome of one request: ``text`` (JSON when a schema was given) or ``error``."""

    custom_id: str
    text: str | None
    error: str | None
    input_tokens: int = 0
    output_tokens: int = 0
    #: Short class of the error: expired, cancelled, not_json, cut_off, refusal,
    #: missing, batch_failed, request_error, or the vendor's error type.
    error_class: str | None = None
    finish_reason: str | None = None
    #: USD at the batch price (half the list price), None when prices are unknown.
    cost_usd: float | None = None


def check_requests(requests: list[BatchRequest]) -> None:
    """Refuse what neither vendor would accept, before anything is sent."""
    if not requests:
        raise ValueError("A batch needs at least one request.")
    seen: set[str] = set()
    for request in requests:
        if not isinstance(request.custom_id, str) or not CUSTOM_ID.match(request.custom_id):
            raise ValueError(
                f"Batch custom_id {request.custom_id!r} is not usable: use 1-64 letters, digits, "
                "'_' or '-' (what both vendors accept), e.g. 'row-123'."
            )
        if request.custom_id in seen:
            raise ValueError(
                f"Batch custom_id {request.custom_id!r} appears twice: every request needs its "
                "own id, or its results cannot be told apart."
            )
        seen.add(request.custom_id)
        if not isinstance(request.max_tokens, int) or request.max_tokens < 1:
            raise ValueError(f"Batch request {request.custom_id!r}: max_tokens must be a positive "
                             f"whole number (got {request.max_tokens!r}).")


def split(sizes: list[int], max_requests: int, max_bytes: int) -> list[range]:
    """Consecutive index ranges of at most ``max_requests`` items and ``max_bytes`` bytes."""
    budget = max_bytes - ENVELOPE_BYTES
    parts: list[range] = []
    start = used = 0
    for i, size in enumerate(sizes):
        if size > budget:
            raise ValueError(
                f"Batch request number {i + 1} is {size:,} bytes, more than one batch may hold "
                f"({budget:,}): send less text in it."
            )
        if i > start and (i - start >= max_requests or used + size > budget):
            parts.append(range(start, i))
            start, used = i, 0
        used += size
    parts.append(range(start, len(sizes)))
    return parts


def openai_line(custom_id: str, body: dict) -> bytes:
    """One line of an OpenAI batch input file (with its newline)."""
    line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    return (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def anthropic_item(custom_id: str, params: dict) -> tuple[dict, int]:
    """One Message Batches request and its size in the request body (bytes)."""
    item = {"custom_id": custom_id, "params": params}
    return item, len(json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode("utf-8")) + 1


# ------------------------------------------------------------------ prices
def prices(provider_config: dict, model_name: str) -> tuple[float | None, float | None]:
    """List prices (USD per million input, output tokens): configured, else known."""
    info = pricing.chat_info(model_name)
    inp = provider_config.get("input_cost_per_mtok")
    out = provider_config.get("output_cost_per_mtok")
    if inp is None and info is not None:
        inp = info.input_cost_per_mtok
    if out is None and info is not None:
        out = info.output_cost_per_mtok
    return inp, out


def batch_cost(provider_config: dict, model_name: str, input_tokens: int,
               output_tokens: int) -> float | None:
    """USD for these tokens at the batch price (``BATCH_DISCOUNT`` of the list price)."""
    inp, out = prices(provider_config, model_name)
    if inp is None:
        return None
    return (input_tokens * inp + output_tokens * (out or 0.0)) / 1_000_000 * BATCH_DISCOUNT


# ------------------------------------------------------------------ results
def _quote(text: str) -> str:
    text = " ".join(text.split())
    return json.dumps(text[:QUOTE_CHARS] + ("…" if len(text) > QUOTE_CHARS else ""), ensure_ascii=False)


def structured_text(text: str, *, cut_off: bool, max_tokens_hint: str) -> tuple[str | None, str | None, str | None]:
    """``(json_text, error, error_class)`` for an answer that should be a JSON object."""
    stripped = text.strip()
    try:
        value = json.loads(stripped) if stripped else None
    except ValueError:
        value = None
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False), None, None
    if cut_off:
        return None, (f"the answer was cut off at max_tokens before its JSON ended; raise "
                      f"{max_tokens_hint} or send less text per row"), "cut_off"
    found = json_in_text(text)
    if found is not None:
        return found, None, None
    said = f": it said {_quote(text)}" if stripped else " and said nothing"
    return None, f"the model answered in prose, not the JSON object asked for{said}", "not_json"


def _usage(usage: Any, *names: str) -> int:
    if not isinstance(usage, dict):
        return 0
    return sum(int(usage.get(name) or 0) for name in names)


def parse_openai_line(line: dict, *, structured: bool, secrets: Iterable[str]) -> BatchResult:
    """One line of an OpenAI output or error file."""
    custom_id = str(line.get("custom_id"))
    error = line.get("error")
    response = line.get("response") if isinstance(line.get("response"), dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or "request_error")
        message = str(error.get("message") or code)
        error_class = {"batch_expired": "expired", "batch_cancelled": "cancelled"}.get(code, code)
        return BatchResult(custom_id, None, redact(message, secrets), error_class=error_class)
    if response is None:
        return BatchResult(custom_id, None, "the result line holds neither a response nor an error",
                           error_class="invalid_result")
    body = response.get("body") if isinstance(response.get("body"), dict) else {}
    status = response.get("status_code")
    usage = body.get("usage")
    tokens = (_usage(usage, "prompt_tokens"), _usage(usage, "completion_tokens"))
    if status != 200:
        inner = body.get("error") if isinstance(body.get("error"), dict) else {}
        message = inner.get("message") or f"status {status}"
        return BatchResult(custom_id, None, redact(f"the request was refused ({status}): {message}", secrets),
                           *tokens, error_class=str(inner.get("type") or inner.get("code") or "request_error"))
    choices = body.get("choices") or []
    message = (choices[0].get("message") or {}) if choices and isinstance(choices[0], dict) else {}
    finish = choices[0].get("finish_reason") if choices and isinstance(choices[0], dict) else None
    text = message.get("content") or ""
    if message.get("refusal") and not text:
        return BatchResult(custom_id, None, f"the model declined: {_quote(message['refusal'])}", *tokens,
                           error_class="refusal", finish_reason=finish)
    return _finish(custom_id, text, tokens, finish, cut_off=finish == "length", structured=structured,
                   hint="max_tokens")


def _finish(custom_id, text, tokens, finish, *, cut_off, structured, hint) -> BatchResult:
    if structured:
        json_text, error, error_class = structured_text(text, cut_off=cut_off, max_tokens_hint=hint)
        return BatchResult(custom_id, json_text, error, *tokens, error_class=error_class,
                           finish_reason=finish)
    if cut_off:
        return BatchResult(custom_id, text, None, *tokens, finish_reason="length")
    return BatchResult(custom_id, text, None, *tokens, finish_reason=finish)


def parse_anthropic_result(custom_id: str, result: dict, *, structured: str | None,
                           secrets: Iterable[str]) -> BatchResult:
    """One Message Batches result (``structured``: None, "tool" or "native")."""
    kind = result.get("type")
    if kind == "expired":
        return BatchResult(custom_id, None, "the batch's 24 h window ended before this request ran",
                           error_class="expired")
    if kind == "canceled":
        return BatchResult(custom_id, None, "the batch was cancelled before this request ran",
                           error_class="cancelled")
    if kind == "errored":
        outer = result.get("error") if isinstance(result.get("error"), dict) else {}
        inner = outer.get("error") if isinstance(outer.get("error"), dict) else outer
        message = inner.get("message") or "no message"
        return BatchResult(custom_id, None, redact(f"the request failed: {message}", secrets),
                           error_class=str(inner.get("type") or "request_error"))
    if kind != "succeeded" or not isinstance(result.get("message"), dict):
        return BatchResult(custom_id, None, f"unknown result type {kind!r}", error_class="invalid_result")
    message = result["message"]
    usage = message.get("usage")
    tokens = (_usage(usage, "input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"),
              _usage(usage, "output_tokens"))
    stop = message.get("stop_reason")
    finish = {"end_turn": "stop", "tool_use": "stop", "stop_sequence": "stop",
              "max_tokens": "length"}.get(stop, stop)
    blocks = [b for b in message.get("content") or [] if isinstance(b, dict)]
    said = "".join(str(b.get("text") or "") for b in blocks if b.get("type") == "text")
    if stop == "refusal":
        return BatchResult(custom_id, None, f"the model declined: {_quote(said)}", *tokens,
                           error_class="refusal", finish_reason=finish)
    if structured == "tool":
        tool_inputs = [b.get("input") for b in blocks if b.get("type") == "tool_use"]
        if tool_inputs and isinstance(tool_inputs[0], dict) and stop != "max_tokens":
            return BatchResult(custom_id, json.dumps(tool_inputs[0], ensure_ascii=False), None, *tokens,
                               finish_reason=finish)
    return _finish(custom_id, said, tokens, finish, cut_off=stop == "max_tokens",
                   structured=structured is not None, hint="max_tokens")


def missing(custom_ids: Iterable[str], why: str, error_class: str) -> Iterator[BatchResult]:
    for custom_id in custom_ids:
        yield BatchResult(custom_id, None, why, error_class=error_class)
