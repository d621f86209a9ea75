"""Shared layer of the suite: hook specs, model registry, call log, permissions.

This module holds only Datasette hook implementations; the logic lives in the
other modules of the package.
"""

from datasette import hookimpl
from datasette.plugins import pm

from . import hookspecs
from .state import attach_state_database, state_db

pm.add_hookspecs(hookspecs)


@hookimpl
def startup(datasette):
    async def inner():
        attach_state_database(datasette)
        await state_db(datasette)

    return inner
