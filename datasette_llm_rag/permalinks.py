"""An answer's permalink page: ``/-/llm-rag/answers/<answer id>[.json]``.

It shows what the reader saw when the answer was written: the question, the
answer with its citations, the rows given to the model as they were then
(their text is stored with the answer), the model, the prompt version and
when. Rows are looked up in nothing live, so an edited or deleted row still
shows what the model read; each keeps a link to the row's current page.

Permissions are checked again for the reader of the permalink, who may not
be the asker: ``llm-search`` on the database, and view permission on every
table the answer's rows came from. An answer drew on all of its rows, so a
reader who may not view one of those tables sees neither the rows nor the
answer (403 with a message), not a version with rows cut out.
"""

from __future__ import annotations

import json

from datasette.utils.asgi import Response

from datasette_llm_core import permissions

from .answer import get_answer
from .citations import answer_structure, render_html
from .display import format_time, relative_time

NOT_FOUND = ("No answer with this id: the link may be mistyped, or the answer was never "
             "finished.")
HIDDEN = ("This answer was written from rows of a table you may not view, so it is not shown "
          "to you. Ask the question yourself to get an answer from the rows you may see.")


def sources_of(answer: dict) -> list[dict]:
    try:
        rows = json.loads(answer.get("sources") or "[]")
    except ValueError:
        return []
    return [r for r in rows if isinstance(r, dict) and "n" in r and "table" in r]


async def readable(datasette, actor, answer: dict) -> bool:
    """May ``actor`` see this answer: search its database and view every source table?"""
    database = answer["database_name"]
    if database not in datasette.databases:
        return False
    if not await permissions.allowed(datasette, actor, "llm-search", database):
        return False
    tables = sorted({r["table"] for r in sources_of(answer)})
    return await permissions.viewable_tables(datasette, actor, database, tables) == tables


def page_context(datasette, answer: dict) -> dict:
    rows = sources_of(answer)
    by_n = {int(r["n"]): r for r in rows}
    allowed = set(by_n)
    cited = [n for n in json.loads(answer.get("cited") or "[]") if n in by_n]
    blocks = answer_structure(answer.get("answer") or "", allowed)

    def link(n: int) -> str | None:
        url = by_n.get(n, {}).get("url")
        return url if isinstance(url, str) and url.startswith("/") and not url.startswith("//") \
            else None

    when = answer.get("finished_at") or answer.get("created_at")
    return {
        "answer_id": answer["id"],
        "database": answer["database_name"],
        "question": answer.get("question") or "",
        "answer": answer.get("answer") or "",
        "answer_html": render_html(blocks, link),
        "blocks": blocks,
        "cited": cited,
        "cited_rows": [by_n[n] for n in cited],
        "other_rows": [r for n, r in sorted(by_n.items()) if n not in cited],
        "model": answer.get("model_id"),
        "prompt_version": answer.get("prompt_version"),
        "answered_at": when,
        "answered_iso": format_time(when, iso=True) if when else None,
        "answered_absolute": format_time(when) if when else None,
        "answered_relative": relative_time(when) if when else None,
    }


async def answer_view(datasette, request):
    """``GET /-/llm-rag/answers/<id>`` (HTML) and ``.json``."""
    from .views import ask_url, json_error

    as_json = request.url_vars.get("format") == "json"
    answer_id = request.url_vars["answer_id"]
    answer = await get_answer(datasette, answer_id)
    if answer is None or answer.get("status") != "ok":
        if as_json:
            return json_error(NOT_FOUND, 404, "not_found")
        from datasette import NotFound

        raise NotFound(NOT_FOUND)
    if not await readable(datasette, request.actor, answer):
        if as_json:
            return json_error(HIDDEN, 403, "forbidden")
        from datasette import Forbidden

        raise Forbidden(HIDDEN)
    context = page_context(datasette, answer)
    if as_json:
        out = {k: v for k, v in context.items() if k != "answer_html"}
        return Response.json({"ok": True, **out, "html": str(context["answer_html"])})
    context["ask_again_url"] = ask_url(datasette, context["database"], q=context["question"])
    context["ask_url"] = ask_url(datasette, context["database"])
    return Response.html(await datasette.render_template("llm_rag_answer.html", context,
                                                         request=request))
