"""--plugins-dir plugin for the datasette-secrets tests: root may manage secrets.

Datasette 0.65 has no configuration for a plugin's own permissions, so an
operator grants datasette-secrets' ``manage-secrets`` with a hook like this one.
"""

from datasette import hookimpl


@hookimpl
def permission_allowed(actor, action):
    if action == "manage-secrets" and actor and actor.get("id") == "root":
        return True
    return None
