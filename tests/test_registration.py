"""Importing a suite module before Datasette's plugins still registers every hook."""

import subprocess
import sys

import pytest

PROBE = """
import {first}
from datasette.plugins import pm
print(sorted((name, len(pm.get_hookcallers(p) or [])) for name, p in pm.list_name_plugin() if name.startswith("llm_")))
"""


def hook_counts(first: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(first=first)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


@pytest.mark.parametrize(
    "first",
    ["datasette_llm_core.models", "datasette_llm_extract.engine", "datasette_llm_rag.store"],
)
def test_early_import_registers_every_hook(first):
    normal = hook_counts("datasette.app")
    assert "('llm_core'" in normal and "('llm_extract'" in normal and "('llm_rag'" in normal
    assert hook_counts(first) == normal
