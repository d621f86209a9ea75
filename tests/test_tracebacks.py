"""Datasette's rich tracebacks with local variables are off once the suite starts (see
datasette_llm_core/tracebacks.py); the real-server checks are in
tests/browser/test_server_process.py."""

from __future__ import annotations

import pytest
from datasette import handle_exception
from datasette.app import Datasette

from datasette_llm_core.tracebacks import ENV_KEEP, quiet_error_tracebacks

rich = pytest.importorskip("rich", reason="rich is not installed: Datasette prints no rich tracebacks")


def test_off_unless_the_environment_keeps_them(monkeypatch):
    monkeypatch.setattr(handle_exception, "rich", rich)
    assert quiet_error_tracebacks({ENV_KEEP: "1"}) is False
    assert handle_exception.rich is rich
    assert quiet_error_tracebacks({}) is True
    assert handle_exception.rich is None
    assert quiet_error_tracebacks({}) is False  # already off


async def test_a_url_no_route_matches_is_a_404_not_a_500(monkeypatch, capsys):
    monkeypatch.setattr(handle_exception, "rich", rich)
    monkeypatch.delenv(ENV_KEEP, raising=False)
    monkeypatch.setenv("DATASETTE_LLM_NEWSROOM_STATE", ":memory:")
    datasette = Datasette(memory=True)
    response = await datasette.client.get("/-/llm-extract/runs/not-a-run/documents/0/pages/0")
    assert response.status_code == 404
    response = await datasette.client.get("/_memory/no_such_table")
    assert response.status_code == 404
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err and "locals" not in out.out
