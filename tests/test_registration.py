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


async def test_state_database_uses_wal(tmp_path):
    from datasette.app import Datasette

    from datasette_llm_core.state import state_db

    path = tmp_path / "state.db"
    ds = Datasette([], metadata={"plugins": {"datasette-llm-newsroom": {"state_database": str(path)}}})
    await ds.invoke_startup()
    db = await state_db(ds)
    mode = (await db.execute("pragma journal_mode")).first()[0]
    sync = (await db.execute("pragma synchronous")).first()[0]
    assert mode == "wal"
    assert sync == 1  # NORMAL
