"""What the question box says to readers, and what it says to those who run it.

Visitors are readers: they are told what they can do here (search, and what
a result is), never about keys, permissions or configuration they cannot
change. Those who can fix the setup (root, or the database's ``llm-index``
holders) read how to. Pure functions: nothing from Datasette.
"""

from __future__ import annotations

from .answer import NO_MODEL_NOTE

#: No chat model: what a reader reads (the operator reads NO_MODEL_NOTE).
NO_MODEL_READER = (
    "Written answers are not available here. Search lists the rows that best match "
    "your question, each with a link to the row."
)
#: The reader may search but not ask for written answers.
SEARCH_ONLY_SIGNED_OUT = (
    "Search lists the rows that best match your question, each with a link to the row."
)
SEARCH_ONLY_SIGNED_IN = (
    "Search lists the rows that best match your question, each with a link to the row. "
    "Written answers are not turned on for your account."
)
SEARCH_ONLY_OPERATOR = (
    "You may search but not ask for model answers (the llm-ask permission)."
)
NOTHING_TO_SEARCH_READER = "There is nothing to search here yet."


def no_model_note(can_configure: bool) -> str:
    return NO_MODEL_NOTE if can_configure else NO_MODEL_READER


def search_only_note(actor: dict | None, can_configure: bool) -> str:
    if can_configure:
        return SEARCH_ONLY_OPERATOR
    return SEARCH_ONLY_SIGNED_IN if actor else SEARCH_ONLY_SIGNED_OUT


def for_reader(event: dict, can_configure: bool) -> dict:
    """A ``notice`` event worded for whoever reads it (other events unchanged)."""
    if event.get("event", "notice") == "notice" and event.get("kind") == "no_model":
        return {**event, "message": no_model_note(can_configure)}
    return event
