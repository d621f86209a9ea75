"""Token and cost estimates, and a small per-run budget.

Pure logic: imports nothing from Datasette or a vendor SDK.

``estimate(request, model)`` guesses tokens as characters / 4 (plus a flat
allowance per image and per PDF page) and prices them with the model's
``input_cost_per_mtok`` / ``output_cost_per_mtok``. A ``Budget`` reserves
that estimate before a call is sent (refusing with ``BudgetError`` when the
run would go over) and replaces the reservation with the actual usage after.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from .errors import BudgetError
from .types import ChatRequest, ImagePart, ImageUrlPart, PdfPart, PdfUrlPart

CHARS_PER_TOKEN = 4
#: Rough allowance for one image (Anthropic ~1,600 for a 1.15 MP image, OpenAI ~800-1,100).
TOKENS_PER_IMAGE = 1_500
#: Rough allowance for one PDF page (text plus page image on Anthropic).
TOKENS_PER_PDF_PAGE = 2_000
#: Smallest output guess, so tiny prompts do not estimate as free.
MIN_OUTPUT_GUESS = 256

_PAGE = re.compile(rb"/Type\s*/Page(?!s)")


def text_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def pdf_pages(data: bytes) -> int:
    return max(1, len(_PAGE.findall(data)))


def price(model, input_tokens: int, output_tokens: int) -> float | None:
    """USD for these tokens at the model's prices, None when prices are unknown."""
    inp = getattr(model, "input_cost_per_mtok", None)
    out = getattr(model, "output_cost_per_mtok", None)
    if inp is None:
        return None
    return (input_tokens * inp + output_tokens * (out or 0.0)) / 1_000_000


def estimate(request: ChatRequest, model) -> tuple[int, int, float | None]:
    """``(input_tokens, output_tokens_guess, cost_usd or None)`` for a chat request.

    The output guess is the input size (extraction and answers are rarely
    longer than what they read) clamped to ``[256, request.max_tokens]``.
    """
    input_tokens = math.ceil(request.text_length() / CHARS_PER_TOKEN) + 8 * len(request.messages)
    for message in request.messages:
        for part in message.parts:
            if isinstance(part, (ImagePart, ImageUrlPart)):
                input_tokens += TOKENS_PER_IMAGE
            elif isinstance(part, PdfPart):
                input_tokens += TOKENS_PER_PDF_PAGE * pdf_pages(part.data)
            elif isinstance(part, PdfUrlPart):  # never fetched here: counted as one page
                input_tokens += TOKENS_PER_PDF_PAGE
    if request.json_schema is not None:
        input_tokens += text_tokens(str(request.json_schema))
    output_guess = min(request.max_tokens, max(MIN_OUTPUT_GUESS, input_tokens))
    return input_tokens, output_guess, price(model, input_tokens, output_guess)


def estimate_embedding(texts: list[str], model) -> tuple[int, float | None]:
    tokens = sum(text_tokens(t) for t in texts)
    return tokens, price(model, tokens, 0)


@dataclass
class Budget:
    """A cap on tokens and/or USD for one run (an extraction, a question...).

    Pass the same ``Budget`` as ``budget=`` to every gateway call of the run.
    Costs can only be enforced for models with known prices.
    """

    max_cost: float | None = None
    max_tokens: int | None = None
    spent_cost: float = 0.0
    spent_tokens: int = 0
    calls: int = 0
    _reserved: dict[int, tuple[int, float]] = field(default_factory=dict, repr=False)
    _next: int = field(default=0, repr=False)

    def _reserved_totals(self) -> tuple[int, float]:
        tokens = sum(t for t, _ in self._reserved.values())
        cost = sum(c for _, c in self._reserved.values())
        return tokens, cost

    def reserve(self, tokens: int, cost: float | None, *, what: str = "this call") -> int:
        """Hold ``tokens``/``cost`` for a call about to be sent, or raise ``BudgetError``."""
        held_tokens, held_cost = self._reserved_totals()
        if self.max_tokens is not None and self.spent_tokens + held_tokens + tokens > self.max_tokens:
            raise BudgetError(
                f"Token budget exceeded: {what} needs about {tokens:,} tokens and this run has "
                f"{max(0, self.max_tokens - self.spent_tokens - held_tokens):,} of "
                f"{self.max_tokens:,} left. Shorten the input, split it, or raise "
                "budgets: max_tokens_per_run."
            )
        if self.max_cost is not None and cost is not None and (
            self.spent_cost + held_cost + cost > self.max_cost
        ):
            raise BudgetError(
                f"Cost budget exceeded: {what} would cost about ${cost:.4f} and this run has "
                f"${max(0.0, self.max_cost - self.spent_cost - held_cost):.4f} of "
                f"${self.max_cost:.4f} left. Shorten the input, pick a cheaper model, or raise "
                "budgets: max_cost_per_run."
            )
        self._next += 1
        self._reserved[self._next] = (tokens, cost or 0.0)
        return self._next

    def settle(self, reservation: int | None, tokens: int, cost: float | None) -> None:
        """Replace a reservation with what the call actually used."""
        if reservation is not None:
            self._reserved.pop(reservation, None)
        self.spent_tokens += tokens
        self.spent_cost += cost or 0.0
        self.calls += 1

    def release(self, reservation: int | None) -> None:
        """Drop a reservation for a call that used nothing."""
        if reservation is not None:
            self._reserved.pop(reservation, None)
