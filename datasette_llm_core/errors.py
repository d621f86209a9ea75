"""The suite's own small set of exceptions.

Vendor SDK exceptions are wrapped in these with ``raise ... from e`` so that
views and the CLI only ever handle one vocabulary. Messages must never carry
an API key or any other secret.
"""

from __future__ import annotations


class LLMSuiteError(Exception):
    """Base class for every error the suite raises on purpose."""


class ConfigError(LLMSuiteError):
    """An operator mistake: bad plugin configuration, missing key, unknown model.

    The message says what to change, e.g. which environment variable to set.
    """


class CapabilityError(LLMSuiteError):
    """A request needs something the chosen model cannot do (images, PDFs, schema).

    Raised before any request is sent.
    """


class BudgetError(LLMSuiteError):
    """A call or run would go over a configured token or cost cap."""


class ModelError(LLMSuiteError):
    """A provider failed to answer.

    ``status`` is the HTTP status when there was one, ``retryable`` says whether
    trying again may help (429, 5xx, timeouts, dropped connections) and
    ``retry_after`` carries the provider's ``Retry-After`` in seconds, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        error_class: str | None = None,
        model_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.error_class = error_class or type(self).__name__
        self.model_id = model_id


class OutputError(ModelError):
    """The model answered, but not in the shape asked for (not JSON, cut off)."""
