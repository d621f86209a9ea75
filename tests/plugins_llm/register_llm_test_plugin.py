"""--plugins-dir plugin for tests/test_llm_server.py: registers tests/llm_test_plugin.py
with llm's plugin manager when Datasette loads this file (the server runs with the
repository on PYTHONPATH and LLM_LOAD_PLUGINS="" so no other installed llm plugin loads)."""

from tests import llm_test_plugin

llm_test_plugin.register()
