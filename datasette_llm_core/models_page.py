"""The models page, ``/-/llm-models``, for operators (``llm-view-log`` holders).

It lists every chat and embedding model the gateway would see, with where it
came from (configuration, environment variables, the ``llm`` package, another
plugin's hook), what it can do, its prices (or "unknown"), whether it can be
called right now (and if not, why), the defaults and fallback chains, and a
"Test" button: ``POST /-/llm-models/test`` makes one tiny call through the
gateway (logged like any other, purpose ``model-test``; no retries and no
fallback, so the error shown is the model's own) and shows the exact error
when it fails. Nothing here prints a key: messages pass the gateway's
redaction, and the page shows only the names of environment variables and
secrets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from datasette import Forbidden, Response
from datasette.utils import await_me_maybe

from . import permissions
from .attempts import describe
from .calllog import redact, secret_values
from .config import PLUGIN_NAME, RetryConfig, SecretRef, Settings, plugin_settings
from .denied import denied_message
from .errors import ConfigError, LLMSuiteError, ModelError
from .gateway import DEFAULT_EMBEDDING_MODEL, Gateway
from .models import CAPABILITY_LABELS
from .types import ChatRequest, Message

PAGE = "/-/llm-models"
TEST_PROMPT = "Reply with the single word OK."
TEST_PROMPT_VERSION = "model-test-1"
CAPABILITY_ORDER = ("streaming", "schema", "images", "pdfs", "image_urls", "pdf_urls")


@dataclass
class Found:
    model: object
    source: str
    shadowed_by: str | None = None


def _impl_source(impl, settings: Settings, kind: str) -> str:
    """Where the models of one hook implementation come from, in words."""
    name = getattr(impl.function, "__name__", "")
    module = getattr(impl.plugin, "__name__", "") or ""
    if module == "datasette_llm_core":
        if name.startswith("llm_config_"):
            configured = settings.models if kind == "chat" else settings.embedding_models
            return "configuration" if configured else "environment variables"
        if name.startswith("llm_package_"):
            return "llm package"
        if name == "llm_local_embedding_models":
            return "built in (local)"
    from datasette.plugins import pm

    plugin = pm.get_name(impl.plugin) or module or repr(impl.plugin)
    return f"plugin hook ({plugin})"


async def collect(datasette, settings: Settings, hook_name: str, kind: str,
                  problems: list[str] | None = None) -> list[Found]:
    """Every model each implementation of ``hook_name`` returns, with its source.

    Implementations are called in the order pluggy calls them, so where two
    register the same id, the one the gateway keeps (the later) shadows the other.
    A hook that fails is reported in ``problems`` instead of breaking the page.
    """
    from datasette.plugins import pm

    found: list[Found] = []
    for impl in reversed(getattr(pm.hook, hook_name).get_hookimpls()):
        kwargs = {name: datasette for name in impl.argnames if name == "datasette"}
        try:
            result = await await_me_maybe(impl.function(**kwargs))
        except Exception as e:  # noqa: BLE001 - another plugin's failure, shown to the operator
            if problems is not None:
                problems.append(f"{_impl_source(impl, settings, kind)}: {type(e).__name__}: "
                                f"{redact(str(e), secret_values(settings))}")
            continue
        for model in result or []:
            found.append(Found(model, _impl_source(impl, settings, kind)))
    last = {f.model.model_id: f for f in found}
    for f in found:
        keeper = last[f.model.model_id]
        if keeper is not f:
            f.shadowed_by = keeper.source
    return found


def _price(value) -> str:
    return "unknown" if value is None else f"${value:g}"


def _key_source(model, settings: Settings) -> str | None:
    """Where the model's key comes from, by name only."""
    config = next((c for c in list(settings.models) + list(settings.embedding_models)
                   if c.id == model.model_id), None)
    if config is not None and isinstance(config.api_key, SecretRef):
        name = config.api_key.secret
        return f"secret {name} (or environment variable {name})"
    connection = getattr(model, "connection", None)
    env = getattr(connection, "api_key_env", None)
    if config is not None and isinstance(config.api_key, str):
        return "api_key in the configuration"
    if env:
        return f"environment variable {env}"
    if getattr(model, "provider", "") == "llm":
        return "llm's own key store (llm keys set) or the model's environment variable"
    return None


def _ready(model) -> str | None:
    check = getattr(model, "ensure_ready", None)
    if check is None:
        return None
    try:
        check()
    except ConfigError as e:
        return str(e)
    return None


def _secret_link(model, settings: Settings) -> dict | None:
    """Where an admin sets this model's secret (datasette-secrets installed), else None."""
    from .secrets import secrets_installed

    config = next((c for c in list(settings.models) + list(settings.embedding_models)
                   if c.id == model.model_id), None)
    if config is None or not isinstance(config.api_key, SecretRef) or not secrets_installed():
        return None
    return {"name": config.api_key.secret, "path": "/-/secrets/" + config.api_key.secret}


def _chat_row(f: Found, settings: Settings, defaults: dict[str, list[str]]) -> dict:
    model = f.model
    caps = model.capabilities()
    return {
        "secret": _secret_link(model, settings),
        "id": model.model_id,
        "label": getattr(model, "label", "") or model.model_id,
        "source": f.source,
        "shadowed_by": f.shadowed_by,
        "provider": getattr(model, "provider", "") or "",
        "vendor_model": getattr(model, "llm_model_id", None) or getattr(model, "model_name", None),
        "capabilities": [{"name": c, "label": CAPABILITY_LABELS[c], "yes": c in caps}
                         for c in CAPABILITY_ORDER],
        "input_price": _price(model.input_cost_per_mtok),
        "output_price": _price(model.output_cost_per_mtok),
        "context_tokens": getattr(model, "context_tokens", None),
        "key_source": _key_source(model, settings),
        "unavailable": _ready(model),
        "default_for": defaults.get(model.model_id, []),
    }


def _embed_row(f: Found, settings: Settings, default_embed: str) -> dict:
    model = f.model
    return {
        "secret": _secret_link(model, settings),
        "id": model.model_id,
        "label": getattr(model, "label", "") or model.model_id,
        "source": f.source,
        "shadowed_by": f.shadowed_by,
        "provider": getattr(model, "provider", "") or "",
        "vendor_model": getattr(model, "llm_model_id", None) or getattr(model, "model_name", None),
        "dimensions": getattr(model, "dimensions", None) or None,
        "input_price": _price(getattr(model, "input_cost_per_mtok", None)),
        "key_source": _key_source(model, settings),
        "unavailable": _ready(model),
        "is_default": model.model_id == default_embed,
    }


def _chains(settings: Settings, chat_ids: set[str]) -> list[dict]:
    purposes = sorted(set(settings.defaults) - {"embed"} | {"extract", "answer"}
                      | (set(settings.fallback) if isinstance(settings.fallback, dict) else set()))
    rows = []
    for purpose in purposes:
        default = settings.defaults.get(purpose)
        rows.append({
            "purpose": purpose,
            "default": default or "(the first model listed)",
            "chain": [{"id": m, "known": m in chat_ids} for m in settings.fallback_chain(purpose)],
        })
    return rows


async def page_context(datasette, request) -> dict:
    try:
        settings = plugin_settings(datasette)
    except ConfigError as e:
        return {"error": str(e), "problems": [], "chat": [], "embed": [], "chains": []}
    problems: list[str] = []
    chat = await collect(datasette, settings, "register_llm_models", "chat", problems)
    embed = await collect(datasette, settings, "register_embedding_models", "embed", problems)
    defaults: dict[str, list[str]] = {}
    for purpose, model_id in settings.defaults.items():
        defaults.setdefault(model_id, []).append(purpose)
    default_embed = settings.defaults.get("embed") or DEFAULT_EMBEDDING_MODEL
    return {
        "error": None,
        "problems": problems,
        "chat": [_chat_row(f, settings, defaults) for f in chat],
        "embed": [_embed_row(f, settings, default_embed) for f in embed],
        "chains": _chains(settings, {f.model.model_id for f in chat}),
        "llm_models": settings.llm_models,
    }


# ------------------------------------------------------------------ the test call
def _test_gateway(datasette, settings: Settings, chat: list[Found], embed: list[Found]) -> Gateway:
    """The gateway with one attempt and no fallback: the error shown is the model's own."""
    once = settings.model_copy(update={"fallback": {}, "retries": RetryConfig(max_attempts=1)})
    return Gateway(datasette, once, [f.model for f in chat], [f.model for f in embed])


async def run_test(datasette, actor, model_id: str, kind: str) -> dict:
    """One tiny logged call to ``model_id``; what happened, ready for the page or JSON."""
    settings = plugin_settings(datasette)
    chat = await collect(datasette, settings, "register_llm_models", "chat")
    embed = await collect(datasette, settings, "register_embedding_models", "embed")
    gateway = _test_gateway(datasette, settings, chat, embed)
    started = time.monotonic()
    result: dict = {"model_id": model_id, "kind": kind}
    try:
        if kind == "embed":
            vectors = await gateway.embed(["test"], kind="query", purpose="model-test",
                                          actor=actor, model_id=model_id)
            result.update(ok=True, output=f"a vector of {vectors.shape[1]} dimensions")
        else:
            request = ChatRequest(messages=[Message.user(TEST_PROMPT)], max_tokens=16)
            response = await gateway.complete(request, purpose="model-test",
                                              prompt_version=TEST_PROMPT_VERSION, actor=actor,
                                              model_id=model_id)
            result.update(ok=True, output=response.text[:300], call_id=response.call_id,
                          input_tokens=response.usage.input_tokens,
                          output_tokens=response.usage.output_tokens)
    except ModelError as e:
        cause = e.__cause__ if isinstance(e.__cause__, BaseException) else e
        error_class, message = describe(cause)
        result.update(ok=False, error_class=error_class, status=getattr(cause, "status", None),
                      error=gateway.redact(message), retryable=bool(getattr(cause, "retryable", False)))
    except LLMSuiteError as e:  # ConfigError (no key...), CapabilityError, BudgetError
        result.update(ok=False, error_class=type(e).__name__, status=None, error=gateway.redact(str(e)))
    result["latency_ms"] = int((time.monotonic() - started) * 1000)
    return result


# ------------------------------------------------------------------ views
def skip_csrf(scope) -> bool | None:
    """0.65: JSON posts to the test endpoint skip the form-token check (a browser
    cannot send ``application/json`` cross-site without a CORS preflight, which
    Datasette refuses); forms are checked as usual."""
    if scope.get("type") != "http" or scope.get("path") != PAGE + "/test":
        return None
    headers = dict(scope.get("headers") or [])
    if headers.get(b"content-type", b"").split(b";")[0].strip().lower() == b"application/json":
        return True
    return None


def _csrftoken(request) -> str:
    token = request.scope.get("csrftoken")
    return token() if callable(token) else ""


async def _ensure(datasette, request) -> None:
    if not await permissions.allowed(datasette, request.actor, "llm-view-log"):
        raise Forbidden(denied_message(request.actor, "llm-view-log"))


def static_url(datasette, name: str) -> str:
    return datasette.urls.static_plugins(PLUGIN_NAME, name)


async def _render(datasette, request, tested: dict | None = None, status: int = 200) -> Response:
    context = await page_context(datasette, request)
    context.update(
        tested=tested,
        csrftoken_value=_csrftoken(request),
        test_url=datasette.urls.path(PAGE + "/test"),
        calls_url=datasette.urls.table("llm_newsroom", "llm_calls") + "?_sort_desc=started_at",
        script_url=static_url(datasette, "llm_core_models.js"),
        style_url=static_url(datasette, "llm_core_models.css"),
    )
    return Response.html(
        await datasette.render_template("llm_core_models.html", context, request=request),
        status=status,
    )


async def models_view(datasette, request):
    """``GET /-/llm-models``."""
    await _ensure(datasette, request)
    return await _render(datasette, request)


async def test_view(datasette, request):
    """``POST /-/llm-models/test`` (form or JSON: ``model_id``, ``kind`` chat|embed)."""
    await _ensure(datasette, request)
    wants_json = "application/json" in (request.headers.get("accept") or "")
    if request.method != "POST":
        return Response.redirect(datasette.urls.path(PAGE))
    content_type = (request.headers.get("content-type") or "").split(";")[0].strip()
    if content_type == "application/json":
        import json

        try:
            body = json.loads((await request.post_body()) or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return Response.json({"ok": False, "error": "Send a JSON object with model_id."}, status=400)
    else:
        body = dict(await request.post_vars())
    model_id = str(body.get("model_id") or "").strip()
    kind = "embed" if body.get("kind") == "embed" else "chat"
    if not model_id:
        message = "Say which model to test (model_id)."
        if wants_json:
            return Response.json({"ok": False, "error": message}, status=400)
        return await _render(datasette, request, {"ok": False, "model_id": "", "kind": kind,
                                                  "error": message, "error_class": "bad_request"}, 400)
    result = await run_test(datasette, request.actor, model_id, kind)
    if wants_json:
        return Response.json(result)
    return await _render(datasette, request, result)
