"""Make sure each of the suite's hook modules is registered with all its hooks.

Importing one of the suite's modules *before* Datasette's plugin manager has
loaded its entry points (``import datasette_llm_extract.engine`` in a script,
a benchmark, the CLI) runs ``datasette.plugins`` from inside the package's
``__init__``; that loads the entry points, and pluggy registers the package
while it is still half-imported, with none of its ``@hookimpl`` functions yet
defined. Each package calls ``register_fully(__name__)`` as its last line:
if it was registered early it is registered again, now with every hook.
"""

from __future__ import annotations

import sys


def register_fully(module_name: str) -> None:
    from datasette.plugins import pm

    module = sys.modules[module_name]
    name = pm.get_name(module)
    if name is None:  # the normal path: the entry point loader registers it after import
        return
    pm.unregister(module)
    pm.register(module, name=name)
