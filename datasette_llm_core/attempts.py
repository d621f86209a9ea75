"""One gateway call as a series of attempts, each with its call-log row.

``CallPlan.attempts()`` walks the models of a call (the primary, then its
fallbacks) and the retries of each. Every ``Attempt`` owns one ``llm_calls``
row and one budget reservation; the gateway wraps the model call in
``async with attempt:``, which logs how it ended:

- the budget refuses it: ``refused``, and ``BudgetError`` is raised before
  anything is sent;
- it succeeds: the caller reports usage with ``await attempt.succeed(...)``;
- the caller went away (``GeneratorExit`` from ``aclose()``, or
  ``asyncio.CancelledError``): ``cancelled`` with the tokens and latency
  known so far, written without waiting, and the exception goes on;
- ``ConfigError`` / ``CapabilityError``: nothing logged, raised as is;
- any other error: ``retry`` (after the backoff) or ``fallback``, and
  ``attempt.failed`` is true so the caller moves on to the next attempt; or
  ``error`` and the call's final ``ModelError``. A stream that has already
  emitted text never retries: ``error`` and a "broke off" ``ModelError``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

from . import calllog
from .budget import Budget, price
from .calllog import CallRecord, write_call, write_call_soon
from .errors import BudgetError, CapabilityError, ConfigError, ModelError
from .types import Usage

if TYPE_CHECKING:  # pragma: no cover
    from .gateway import Gateway

#: ``estimate(model) -> (input_tokens, output_tokens_guess, cost_usd or None)``
Estimate = Callable[[object], "tuple[int, int, float | None]"]


def actor_id(actor: dict | None) -> str | None:
    if actor and actor.get("id") is not None:
        return str(actor["id"])
    return None


def ms(start: float) -> int:
    return int((time.monotonic() - start) * 1000)


def describe(error: BaseException) -> tuple[str, str]:
    """(error_class, message) for any failure of an attempt."""
    if isinstance(error, ModelError):
        return error.error_class, str(error)
    if isinstance(error, (asyncio.TimeoutError, TimeoutError)):
        return "timeout", "the model did not answer in time"
    return type(error).__name__, str(error) or type(error).__name__


def _char_tokens(chars: int) -> int:
    return -(-chars // 4)


@dataclass
class CallPlan:
    """The attempts of one gateway call; they share one ``call_group``."""

    gateway: "Gateway"
    chain: list  # the models to try, in order
    kind: str  # chat or embed
    purpose: str
    prompt_version: str | None
    actor: dict | None
    ref: str | None
    budget: Budget | None
    timeout: float | None
    streamed: bool = False
    group: str = field(default_factory=calllog.new_id)
    failures: list[tuple[str, BaseException]] = field(default_factory=list)
    attempt_no: int = 0

    def attempts(self, estimate: Estimate, *, what: str, items: int | None = None) -> Iterator["Attempt"]:
        """The retries of each model of the chain in turn (the caller stops at success)."""
        for index, model in enumerate(self.chain):
            has_next = index + 1 < len(self.chain)
            for number in range(1, self.gateway.settings.retries.max_attempts + 1):
                self.attempt_no += 1
                attempt = Attempt(self, model, number, has_next, estimate(model), what, items)
                yield attempt
                if attempt.record.outcome != "retry":
                    break  # fell back: next model


class Attempt:
    """One request to one model; ``async with`` it around the request."""

    def __init__(self, plan: CallPlan, model, number: int, has_next: bool, estimate, what: str,
                 items: int | None):
        self.plan = plan
        self.model = model
        self.number = number
        self.has_next = has_next
        self.in_tokens, self.out_guess, self.cost_guess = estimate
        self.what = what
        self.record = CallRecord(
            kind=plan.kind,
            outcome="ok",
            call_group=plan.group,
            ref=plan.ref,
            purpose=plan.purpose,
            provider=getattr(model, "provider", None),
            model_id=model.model_id,
            actor_id=actor_id(plan.actor),
            prompt_version=plan.prompt_version,
            attempt=plan.attempt_no,
            streamed=1 if plan.streamed else 0,
            items=items,
        )
        self.limit: float = plan.gateway._timeout(model, plan.timeout)
        self.reservation: int | None = None
        self.start = time.monotonic()
        #: Streamed text seen so far.
        self.chars = 0
        self.emitted = False
        #: True after a failure that was logged and leads to another attempt.
        self.failed = False

    # --- what the caller reports ----------------------------------------
    def saw_text(self, text: str) -> None:
        """A streamed delta reached the caller."""
        if not self.emitted:
            self.record.first_token_ms = ms(self.start)
        self.emitted = True
        self.chars += len(text)

    def streamed_usage(self) -> Usage:
        """Usage estimated from the text streamed so far."""
        return Usage(self.in_tokens, _char_tokens(self.chars))

    async def succeed(self, usage: Usage, *, estimated: bool, finish_reason: str | None = None) -> str:
        """Log the successful attempt; returns its call id."""
        record = self.record
        record.input_tokens = usage.input_tokens
        record.output_tokens = usage.output_tokens
        record.tokens_estimated = 1 if estimated else 0
        record.cost_usd = price(self.model, usage.input_tokens, usage.output_tokens)
        record.finish_reason = finish_reason
        record.latency_ms = ms(self.start)
        self._settle()
        await self._write()
        return record.id

    # --- the guard -------------------------------------------------------
    async def __aenter__(self) -> "Attempt":
        budget = self.plan.budget
        if budget is not None:
            try:
                self.reservation = budget.reserve(
                    self.in_tokens + self.out_guess, self.cost_guess, what=self.what
                )
            except BudgetError as e:
                record = self.record
                record.outcome = "refused"
                record.error_class = "budget"
                record.error_message = str(e)
                record.input_tokens = record.output_tokens = 0
                await self._write()
                raise
        self.start = time.monotonic()
        return self

    async def __aexit__(self, exc_type, error, tb) -> bool:
        if error is None:
            return False
        if isinstance(error, (GeneratorExit, asyncio.CancelledError)):
            self._cancelled()
            return False
        if not isinstance(error, Exception):
            return False
        self._release()
        if isinstance(error, (ConfigError, CapabilityError)):
            return False
        await self._failed(error)  # raises unless another attempt follows
        self.failed = True
        return True

    # --- internals -------------------------------------------------------
    def _release(self) -> None:
        if self.plan.budget is not None:
            self.plan.budget.release(self.reservation)

    def _settle(self) -> None:
        if self.plan.budget is not None:
            record = self.record
            self.plan.budget.settle(
                self.reservation, record.input_tokens + record.output_tokens, record.cost_usd
            )

    async def _write(self) -> None:
        await write_call(self.plan.gateway.datasette, self.record, self.plan.gateway.secrets)

    def _cancelled(self) -> None:
        """The consumer went away (page closed, task cancelled): log without waiting."""
        record = self.record
        record.outcome = "cancelled"
        record.error_class = "cancelled"
        record.latency_ms = ms(self.start)
        if self.plan.streamed:
            usage = self.streamed_usage()
            record.input_tokens = usage.input_tokens
            record.output_tokens = usage.output_tokens
            record.tokens_estimated = 1
            record.cost_usd = price(self.model, usage.input_tokens, usage.output_tokens)
            self._settle()
        else:
            self._release()
        write_call_soon(self.plan.gateway.datasette, record, self.plan.gateway.secrets)

    async def _failed(self, error: Exception) -> None:
        gateway, record, model_id = self.plan.gateway, self.record, self.model.model_id
        error_class, message = describe(error)
        record.error_class = error_class
        record.error_message = message
        record.latency_ms = ms(self.start)
        if self.plan.kind == "chat":
            record.input_tokens = self.in_tokens if self.emitted else 0
            record.output_tokens = _char_tokens(self.chars)
            record.tokens_estimated = 1 if self.plan.streamed else 0
        if self.emitted:
            record.outcome = "error"
            await self._write()
            raise ModelError(
                gateway.redact(
                    f"The answer from {model_id} broke off after it had started "
                    f"({message}). The partial output is incomplete: run it again."
                ),
                status=getattr(error, "status", None),
                retryable=True,
                error_class=error_class,
                model_id=model_id,
            ) from error
        delay = gateway._retry_delay(error, self.number)
        if delay is not None:
            record.outcome = "retry"
            await self._write()
            await gateway.sleep(delay)
            return
        self.plan.failures.append((model_id, error))
        record.outcome = "fallback" if self.has_next else "error"
        await self._write()
        if not self.has_next:
            raise gateway._final_error(self.plan.purpose, self.plan.failures) from error
