"""What every vendor provider shares: key resolution and error mapping.

A *provider* owns the authenticated SDK client (API key, base URL, HTTP
client, timeout); *models* (``openai_models.py``, ``anthropic_models.py``)
own the request/response format. SDK clients are built with
``max_retries=0``: the gateway does the retrying, so that every attempt is
logged and Retry-After is honoured in one place.
"""

from __future__ import annotations

import datetime as dt
import email.utils
from typing import Any

from ..calllog import redact, redact_url
from ..errors import ConfigError, ModelError

#: Retry-After values past this are ignored as nonsense (seconds).
MAX_RETRY_AFTER = 3600.0


class Provider:
    """Holds one lazily built SDK client for a vendor endpoint."""

    #: Vendor name used in messages and the call log.
    name = ""
    #: Environment variable conventionally holding this vendor's key.
    default_key_env: str | None = None
    #: Whether a key is required (OpenAI-compatible local servers need none).
    key_required = True
    #: ``api_key: {secret: NAME}``: the datasette-secrets secret holding the key
    #: (the environment variable NAME wins; see ``datasette_llm_core.secrets``).
    secret_name: str | None = None

    def __init__(
        self,
        *,
        api_key: str | None = None,
        api_key_env: str | None = None,
        base_url: str | None = None,
        timeout: float | None = None,
        http_client: Any = None,
        environ: dict | None = None,
    ) -> None:
        import os

        self._explicit_key = api_key
        self.api_key_env = api_key_env or (self.default_key_env if api_key is None else None)
        self.base_url = base_url
        self.timeout = timeout
        self.http_client = http_client
        self._environ = os.environ if environ is None else environ
        self._client = None

    def client_kwargs(self, api_key: str | None) -> dict[str, Any]:
        """Arguments every vendor SDK client takes alike. ``max_retries=0``:
        the gateway does the retrying, with backoff and fallback."""
        kwargs: dict[str, Any] = {"api_key": api_key, "max_retries": 0}
        if self.base_url:
            kwargs["base_url"] = self.base_url
        if self.timeout:
            kwargs["timeout"] = self.timeout
        if self.http_client is not None:
            kwargs["http_client"] = self.http_client
        return kwargs

    # --- keys -----------------------------------------------------------
    def set_secret_key(self, value: str | None) -> None:
        """The key read from datasette-secrets for this request (None: use the environment)."""
        if value != self._explicit_key:
            self._explicit_key = value
            self._client = None

    @property
    def key_hint(self) -> str:
        """What to check when authentication fails, never the key itself."""
        if self.secret_name:
            return (f"check the secret {self.secret_name} (set at /-/secrets) or the "
                    f"{self.secret_name} environment variable")
        if self.api_key_env:
            return f"check the {self.api_key_env} environment variable"
        return "check the api_key configured for this model"

    def api_key(self, model_id: str) -> str | None:
        if self._explicit_key:
            return self._explicit_key
        if self.api_key_env and self._environ.get(self.api_key_env):
            return self._environ[self.api_key_env]
        if not self.key_required and not (self.api_key_env and self.api_key_env != self.default_key_env):
            return None
        if self.secret_name:
            raise ConfigError(
                f"Model {model_id!r} ({self.name}) needs an API key: an admin can set the secret "
                f"{self.secret_name} at /-/secrets/{self.secret_name} (datasette-secrets), or "
                f"set the {self.secret_name} environment variable."
            )
        env = self.api_key_env or self.default_key_env or "the provider's key variable"
        raise ConfigError(
            f"Model {model_id!r} ({self.name}) needs an API key: set the {env} environment "
            f'variable, or add api_key: {{"$env": "{env}"}} to its entry under '
            "plugins: datasette-llm-newsroom: models."
        )

    def secrets(self) -> list[str]:
        values = []
        if self._explicit_key:
            values.append(self._explicit_key)
        if self.api_key_env and self._environ.get(self.api_key_env):
            values.append(self._environ[self.api_key_env])
        return values

    def client(self, model_id: str):
        """The SDK client (built on first use); ``ConfigError`` if the key is missing."""
        if self._client is None:
            key = self.api_key(model_id)
            self._client = self.build_client(key)
        return self._client

    def build_client(self, api_key: str | None):  # pragma: no cover - abstract
        raise NotImplementedError

    # --- errors ---------------------------------------------------------
    def model_error(self, error: Exception, model_id: str) -> ModelError:
        """Translate an SDK exception into the suite's ``ModelError``."""
        return map_error(error, provider=self.name, model_id=model_id, key_hint=self.key_hint,
                         secrets=self.secrets(), base_url=self.base_url)


def connection_lost(provider: Provider, model_id: str, error: Exception, *, seconds: float,
                    chars: int) -> ModelError:
    """A connection that broke after the answer had started: the server stopped or crashed
    (it was reached, so "could not connect" would send the reader the wrong way)."""
    where = f" at {provider.base_url}" if provider.base_url else ""
    return ModelError(
        redact(
            f"The connection to {provider.name}{where} closed in the middle of the answer from "
            f"{model_id!r} ({seconds:.0f} s and {chars:,} characters in): the server stopped, "
            f"crashed or dropped the request. Check the server (its log, whether it is still "
            f"running) and run it again. ({type(error).__name__})",
            provider.secrets(),
        ),
        retryable=True,
        error_class="connection_lost",
        model_id=model_id,
    )


def timeout_kwargs(timeout: float | None) -> dict:
    """``{"timeout": t}`` for an SDK call, or nothing (an explicit None disables timeouts)."""
    return {"timeout": timeout} if timeout else {}


def parse_retry_after(headers) -> float | None:
    """Seconds asked for by ``retry-after-ms`` or ``retry-after`` (seconds or HTTP date)."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            seconds = float(value) / 1000
            if 0 <= seconds <= MAX_RETRY_AFTER:
                return seconds
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        seconds = (when - dt.datetime.now(dt.timezone.utc)).total_seconds()
        seconds = max(0.0, seconds)
    if 0 <= seconds <= MAX_RETRY_AFTER:
        return seconds
    return None


def _vendor_detail(body) -> tuple[str | None, str | None, str | None]:
    """(message, type, code) from an OpenAI or Anthropic error body."""
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        message = inner.get("message")
        return (
            str(message) if message else None,
            inner.get("type") if isinstance(inner.get("type"), str) else None,
            inner.get("code") if isinstance(inner.get("code"), str) else None,
        )
    if isinstance(body, str):
        return body[:500], None, None
    return None, None, None


# Mid-stream errors arrive on a 200 response: classify them by their type.
_TYPE_STATUS = {
    "overloaded_error": 529,
    "rate_limit_error": 429,
    "api_error": 500,
    "server_error": 500,
    "timeout_error": 504,
}


def map_error(
    error: Exception,
    *,
    provider: str,
    model_id: str,
    key_hint: str,
    secrets: list[str],
    base_url: str | None = None,
) -> ModelError:
    """One place that turns any vendor SDK exception into ``ModelError``."""
    kind = type(error).__name__
    status = getattr(error, "status_code", None)
    response = getattr(error, "response", None)
    who = f"{provider} model {model_id!r}"

    def make(message, *, retryable, error_class, status=status, retry_after=None):
        return ModelError(
            redact(message, secrets),
            status=status,
            retryable=retryable,
            retry_after=retry_after,
            error_class=error_class,
            model_id=model_id,
        )

    if "Timeout" in kind:
        return make(f"{who} did not answer in time", retryable=True, error_class="timeout")
    if status is None:
        if "Connection" in kind:
            where = f" at {redact_url(base_url)}" if base_url else ""
            return make(
                f"could not connect to {provider}{where} for {model_id!r}: check the network "
                "and, for a local server, that it is running",
                retryable=True,
                error_class="connection",
            )
        detail = redact(str(error), secrets) or kind
        return make(f"{who} returned something unexpected ({detail})", retryable=False,
                    error_class="invalid_response")

    body = getattr(error, "body", None)
    message, err_type, code = _vendor_detail(body)
    if err_type == "exceed_context_size_error" or code == "context_length_exceeded":
        inner = body.get("error", body) if isinstance(body, dict) else {}
        n_ctx = inner.get("n_ctx") if isinstance(inner, dict) else None
        size = f" of {n_ctx:,} tokens" if isinstance(n_ctx, int) else ""
        hint = f"context_tokens: {n_ctx}" if isinstance(n_ctx, int) else "context_tokens"
        return make(
            f"{who} refused the request: the prompt is larger than its context{size} ({status}). "
            f"Set {hint} for this model (a llama.cpp server: its per-slot context) so requests "
            "are sized to fit, or send less text at once",
            retryable=False,
            error_class="context_exceeded",
        )
    if 200 <= status < 300 and err_type in _TYPE_STATUS:
        status = _TYPE_STATUS[err_type]
    headers = getattr(response, "headers", None)
    retry_after = parse_retry_after(headers)
    should_retry = headers.get("x-should-retry") if headers is not None else None
    detail = f": {message}" if message else ""

    if status == 401:
        return make(
            f"{provider} rejected the API key for {model_id!r} (401): {key_hint}",
            retryable=False,
            error_class="auth",
        )
    if status == 403:
        return make(
            f"{who} is not allowed for this key (403){detail}. {key_hint[0].upper()}{key_hint[1:]} "
            "and the account's access to this model",
            retryable=False,
            error_class="permission",
        )
    if status == 404:
        return make(
            f"{who} was not found (404){detail}. Check the model name (model:) and base_url",
            retryable=False,
            error_class="not_found",
        )
    if status == 429:
        if code == "insufficient_quota" or err_type == "insufficient_quota":
            return make(
                f"{provider} quota exhausted for {model_id!r} (429){detail}. Check the account's "
                "billing or use another model",
                retryable=False,
                error_class="quota",
            )
        return make(
            f"{who} is rate limited (429){detail}",
            retryable=should_retry != "false",
            error_class="rate_limit",
            retry_after=retry_after,
        )
    if status == 529:
        return make(f"{who} is overloaded (529){detail}", retryable=True,
                    error_class="overloaded", retry_after=retry_after)
    if status in (408, 504):
        return make(f"{who} timed out ({status}){detail}", retryable=True,
                    error_class="timeout", retry_after=retry_after)
    if status == 409:
        return make(f"{who} reported a conflict (409){detail}", retryable=True,
                    error_class="conflict", retry_after=retry_after)
    if status >= 500:
        return make(f"{who} had a server error ({status}){detail}",
                    retryable=should_retry != "false", error_class="server_error",
                    retry_after=retry_after)
    if status == 413:
        return make(f"the request to {who} is too large (413){detail}. Send less text or "
                    "fewer pages", retryable=False, error_class="too_large")
    return make(
        f"{who} refused the request ({status}){detail}",
        retryable=should_retry == "true",
        error_class="bad_request",
        retry_after=retry_after,
    )
