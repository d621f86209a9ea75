"""Known models: prices, context windows and capabilities.

Prices are USD per million tokens, list prices (standard tier) as published
by the vendors in 2025. They only feed estimates and the call log's
``cost_usd``; override them per model in configuration with
``input_cost_per_mtok`` / ``output_cost_per_mtok`` when they change.

Lookup is by vendor model name, longest matching prefix first, so dated
snapshots (``gpt-4.1-mini-2025-04-14``) find their family.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelInfo:
    input_cost_per_mtok: float
    output_cost_per_mtok: float
    context_tokens: int
    supports: frozenset[str]
    label: str = ""


ALL = frozenset({"streaming", "schema", "images", "pdfs"})
TEXT_SCHEMA = frozenset({"streaming", "schema"})

CHAT_MODELS: dict[str, ModelInfo] = {
    # OpenAI
    "gpt-4.1-nano": ModelInfo(0.10, 0.40, 1_047_576, ALL, "GPT-4.1 nano"),
    "gpt-4.1-mini": ModelInfo(0.40, 1.60, 1_047_576, ALL, "GPT-4.1 mini"),
    "gpt-4.1": ModelInfo(2.00, 8.00, 1_047_576, ALL, "GPT-4.1"),
    "gpt-4o-mini": ModelInfo(0.15, 0.60, 128_000, ALL, "GPT-4o mini"),
    "gpt-4o": ModelInfo(2.50, 10.00, 128_000, ALL, "GPT-4o"),
    "gpt-5-nano": ModelInfo(0.05, 0.40, 400_000, ALL, "GPT-5 nano"),
    "gpt-5-mini": ModelInfo(0.25, 2.00, 400_000, ALL, "GPT-5 mini"),
    "gpt-5": ModelInfo(1.25, 10.00, 400_000, ALL, "GPT-5"),
    # Anthropic
    "claude-haiku-4-5": ModelInfo(1.00, 5.00, 200_000, ALL, "Claude Haiku 4.5"),
    "claude-3-5-haiku": ModelInfo(0.80, 4.00, 200_000, ALL, "Claude Haiku 3.5"),
    "claude-sonnet-4-5": ModelInfo(3.00, 15.00, 200_000, ALL, "Claude Sonnet 4.5"),
    "claude-sonnet-4": ModelInfo(3.00, 15.00, 200_000, ALL, "Claude Sonnet 4"),
    "claude-opus-4-1": ModelInfo(15.00, 75.00, 200_000, ALL, "Claude Opus 4.1"),
}

EMBEDDING_MODELS: dict[str, tuple[float, int]] = {
    # name: (USD per million input tokens, dimensions)
    "text-embedding-3-small": (0.02, 1536),
    "text-embedding-3-large": (0.13, 3072),
    "text-embedding-ada-002": (0.10, 1536),
}

#: Auto-registered when the key is set and no ``models`` are configured:
#: the cheapest current model of each vendor that does structured output,
#: images and PDFs well.
DEFAULT_OPENAI_MODEL = "gpt-4.1-mini"
DEFAULT_ANTHROPIC_MODEL = "claude-haiku-4-5"
DEFAULT_OPENAI_EMBEDDING = "text-embedding-3-small"


def chat_info(name: str) -> ModelInfo | None:
    best = None
    for prefix, info in CHAT_MODELS.items():
        if name == prefix or name.startswith(prefix + "-"):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, info)
    return best[1] if best else None


def embedding_info(name: str) -> tuple[float, int] | None:
    return EMBEDDING_MODELS.get(name)
