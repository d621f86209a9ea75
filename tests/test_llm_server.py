"""llm models in a real ``datasette serve`` process, on both lines.

The server loads ``tests/llm_test_plugin.py`` into llm's plugin manager (through a
``--plugins-dir`` file) and lists an llm model from the configuration and all llm
models (``llm_models: true``). The models page shows their source and capabilities;
its Test button makes calls through the gateway in the server: a sync llm model
answering from a worker thread, then a scripted 429 shown with its status.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("llm", reason="pip install 'datasette-llm-newsroom[llm]'")

from datasette.app import Datasette  # noqa: E402

from datasette_llm_core.permissions import IS_V1  # noqa: E402

from .processes import free_port, stop_process, wait_until_serving  # noqa: E402

REPO = Path(__file__).parent.parent
SERVER_SECRET = "llm-server-suite-signing-secret"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import httpx

    tmp = tmp_path_factory.mktemp("llm-server")
    script = tmp / "script.json"
    script.write_text("[]")
    settings = {"state_database": str(tmp / "state.db"), "auto_models": False, "llm_models": True,
                "models": [{"id": "gemini-flash", "provider": "llm", "model": "scripted-sync"}],
                "retries": {"max_attempts": 1},
                "permissions": {"llm-view-log": {"id": "root"}}}  # root reads the call log by grant only
    config = tmp / ("datasette.yaml" if IS_V1 else "metadata.yml")
    config.write_text(yaml.safe_dump({"plugins": {"datasette-llm-newsroom": settings}}))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "LLM_USER_PATH": str(tmp / "llm-user"), "LLM_LOAD_PLUGINS": "",
           "LLM_TEST_PLUGIN_SCRIPT": str(script), "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "DATASETTE_LLM_BASE_URL"):
        env.pop(name, None)
    log_path = tmp / "server.log"
    log = log_path.open("w")
    cmd = [str(Path(sys.executable).with_name("datasette")), "serve", "--memory",
           "-c" if IS_V1 else "-m", str(config), "--plugins-dir", str(REPO / "tests" / "plugins_llm"),
           "-h", "127.0.0.1", "-p", str(port), "--secret", SERVER_SECRET]
    proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(proc, base + "/-/versions.json", log_path.read_text)
    except AssertionError:
        stop_process(proc)
        raise
    actor = Datasette(memory=True, secret=SERVER_SECRET).sign({"a": {"id": "root"}}, "actor")
    client = httpx.Client(base_url=base, cookies={"ds_actor": actor}, timeout=30)
    try:
        yield client, script, log_path
    finally:
        client.close()
        stop_process(proc)
        log.close()


def run_test(client, model_id: str) -> dict:
    page = client.get("/-/llm-models")
    token = re.search(r'name="csrftoken" value="([^"]*)"', page.text).group(1)
    response = client.post("/-/llm-models/test", data={"csrftoken": token, "model_id": model_id},
                           headers={"Accept": "application/json", "Sec-Fetch-Site": "same-origin",
                                    "Origin": str(client.base_url)})
    assert response.status_code == 200, response.text
    return response.json()


def test_llm_models_listed_and_called_in_a_real_server(server):
    client, script, log_path = server
    page = client.get("/-/llm-models")
    assert page.status_code == 200
    rows = {chunk.split('"', 1)[0]: chunk.split("</tr>", 1)[0]
            for chunk in page.text.split('<tr data-model-id="')[1:]}
    assert {"gemini-flash", "scripted-sync", "scripted-async", "plain-llm", "scripted-embed"} <= set(rows)
    assert "llm package" in rows["gemini-flash"] and "image input: yes" in rows["gemini-flash"]
    assert "gpt-4.1-mini" in rows  # llm's built-in OpenAI plugin, even with no other plugin loaded

    result = run_test(client, "gemini-flash")
    assert result["ok"] and result["output"] == "Hello from llm." and result["input_tokens"] == 11

    script.write_text(json.dumps([{"fail_status": 429, "retry_after": 3}]))
    result = run_test(client, "gemini-flash")
    assert not result["ok"] and result["status"] == 429 and result["error_class"] == "rate_limit"
    assert "Traceback" not in log_path.read_text()

    calls = client.get("/llm_newsroom/llm_calls.json?_shape=array&_sort=started_at").json()
    assert [(c["provider"], c["model_id"], c["outcome"]) for c in calls] == [
        ("llm", "gemini-flash", "ok"), ("llm", "gemini-flash", "error")]
