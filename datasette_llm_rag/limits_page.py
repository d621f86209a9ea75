"""``/-/llm-rag/limits[.json]``: current use of the spending limits, for ``llm-view-log``.

One line per visitor (signed-in actor or client address) and database with
questions in the last minute and hour, dollars in the last 24 hours and 30
days, and which limits they are at; the instance's spend of the last 24
hours against its cap. Reads ``llm_limit_usage`` (datasette_llm_core/limits.py).
"""

from __future__ import annotations

from datasette.utils.asgi import Response

from datasette_llm_core import limits, permissions
from datasette_llm_core.denied import denied_message
from datasette_llm_core.errors import ConfigError
from datasette_llm_core.state import state_db

from .display import format_time, relative_time


async def limits_view(datasette, request):
    as_json = request.url_vars.get("format") == "json"
    if not await permissions.allowed(datasette, request.actor, "llm-view-log"):
        message = denied_message(request.actor, "llm-view-log")
        if as_json:
            return Response.json({"ok": False, "error": message, "error_kind": "forbidden"},
                                 status=403)
        from datasette import Forbidden

        raise Forbidden(message)
    try:
        config = limits.limits_for(datasette)
    except ConfigError as e:
        if as_json:
            return Response.json({"ok": False, "error": str(e), "error_kind": "config"},
                                 status=500)
        raise
    db = await state_db(datasette)
    usage = await db.execute_fn(lambda conn: limits.usage_rows(conn, config))
    if as_json:
        return Response.json({"ok": True, "active": config.active, **usage})
    for row in usage["visitors"]:
        row["last_relative"] = relative_time(row["last_question"])
        row["last_absolute"] = format_time(row["last_question"])
    return Response.html(await datasette.render_template(
        "llm_rag_limits.html", {**usage, "active": config.active}, request=request))
