"""Plugin hooks the suite adds to Datasette's plugin manager.

Every hook here is documented in README.md under "Plugin hooks"; a test
(tests/test_docs.py) fails when a signature here and the docs disagree.
"""

from pluggy import HookspecMarker

hookspec = HookspecMarker("datasette")


@hookspec
def register_llm_models(datasette):
    """Return a list of ``ChatModel`` instances (or an awaitable of one)."""


@hookspec
def register_embedding_models(datasette):
    """Return a list of ``EmbeddingModel`` instances (or an awaitable of one)."""
