"""Plugin configuration, parsed and validated in one place.

Everything lives under ``plugins: datasette-llm-newsroom:`` in metadata.yml
(Datasette 0.65) or datasette.yaml (1.0; 1.0 also moves ``plugins`` found in
metadata into config). Secrets come from environment variables via
``{"$env": "NAME"}`` (resolved by Datasette) or ``api_key_env: NAME``.
The ``extract`` and ``rag`` sections belong to those plugins and are kept as
plain dicts here; each plugin validates its own section.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError

PLUGIN_NAME = "datasette-llm-newsroom"

Purpose = Literal["extract", "answer", "embed"]


class SecretRef(BaseModel):
    """``api_key: {secret: NAME}``: a key an admin sets with datasette-secrets
    (the environment variable NAME wins when it is set; see secrets.py)."""

    model_config = ConfigDict(extra="forbid")

    secret: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Id used in defaults, fallbacks and the model picker")
    provider: Literal["openai", "anthropic", "openai-compatible", "llm"]
    model: str | None = Field(None, description="Vendor model name (for llm: its model id or alias); defaults to id")
    label: str | None = None
    api_key: str | SecretRef | None = Field(
        None, description='Usually {"$env": "OPENAI_API_KEY"} or {"secret": "OPENAI_API_KEY"}'
    )
    api_key_env: str | None = Field(None, description="Environment variable holding the key")
    base_url: str | None = None
    supports: list[Literal["streaming", "schema", "images", "pdfs"]] | None = None
    input_cost_per_mtok: float | None = None
    output_cost_per_mtok: float | None = None
    context_tokens: int | None = Field(
        None, ge=256, description="Context window in tokens (for a llama.cpp server: its per-slot n_ctx)"
    )
    max_output_tokens: int | None = Field(
        None, ge=16, description="Output tokens asked for per request (default: from the context)"
    )
    concurrency: int | None = Field(
        None, ge=1, le=256, description="Requests this model may have in flight at once "
        "(a llama.cpp server: its number of slots, -np)",
    )
    timeout: float | None = None
    first_byte_timeout: float | None = Field(
        None, gt=0, description="Seconds to wait for the first token (connect, queue, prompt reading)"
    )
    dimensions: int | None = None  # embedding models only
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] | None = Field(
        None, description="OpenAI-format models: which parameter carries max_tokens"
    )
    batch_size: int | None = Field(None, ge=1, le=2048, description="Embedding models: texts per call")
    accepts_urls: bool | None = Field(
        None,
        description="Images and PDFs given by https URL are sent as URL parts for the provider to "
        "fetch (the suite never fetches them): default true for openai (images only: Chat "
        "Completions takes no PDF URL) and anthropic without base_url, false otherwise; set "
        "true for a server at base_url that fetches URLs itself",
    )
    structured_output: Literal["tool", "native"] | None = Field(
        None,
        description="Anthropic: a forced output-only tool (default, every model) or the "
        "native output_config json_schema format (models that support it)",
    )


class RetryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(3, ge=1, le=10)
    backoff: float = Field(0.5, ge=0)
    max_backoff: float = Field(30.0, ge=0)


class BudgetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_cost_per_run: float | None = None
    max_tokens_per_run: int | None = None


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state_database: str | None = None
    models: list[ModelConfig] = []
    embedding_models: list[ModelConfig] = []
    defaults: dict[str, str] = {}
    fallback: dict[str, list[str]] | list[str] = {}
    retries: RetryConfig = RetryConfig()
    timeout: float = Field(60.0, gt=0)
    first_byte_timeout: float | None = Field(
        None, gt=0,
        description="Seconds a streamed answer may take to start (connecting, waiting in the "
        "server's queue, reading the prompt); default 300 s, or timeout if that is longer",
    )
    budgets: BudgetConfig = BudgetConfig()
    auto_models: bool = Field(
        True,
        description="With no models configured, register defaults for OPENAI_API_KEY, "
        "ANTHROPIC_API_KEY and DATASETTE_LLM_BASE_URL when they are set",
    )
    llm_models: bool = Field(
        False,
        description="Also register every chat and embedding model the llm package knows "
        "(pip install 'datasette-llm-newsroom[llm]'), under llm's model ids",
    )
    lease_seconds: float | None = Field(
        None, gt=0,
        description="Seconds after its last heartbeat before another server process "
        "takes a background run or index job for dead (default 45)",
    )
    call_log_retention_days: float | None = Field(
        90, ge=0,
        description="Days llm_calls rows (and daily search totals) are kept; 0 or null keeps them all",
    )
    permissions: dict[str, Any] = {}
    limits: dict[str, Any] = Field(
        {}, description="Spending limits per visitor and for the instance (limits.py)")
    extract: dict[str, Any] = {}
    rag: dict[str, Any] = {}

    def fallback_chain(self, purpose: str) -> list[str]:
        if isinstance(self.fallback, list):
            return list(self.fallback)
        return list(self.fallback.get(purpose, []))


def parse_settings(raw: dict | None) -> Settings:
    try:
        return Settings.model_validate(raw or {})
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in e.errors()
        )
        raise ConfigError(
            f"Invalid configuration under plugins: {PLUGIN_NAME}: {problems}. "
            "See the Configuration section of the README."
        ) from None


def plugin_settings(datasette) -> Settings:
    """Parsed settings for this Datasette instance (raises ``ConfigError``)."""
    return parse_settings(datasette.plugin_config(PLUGIN_NAME))
