"""The README is true to the code: its YAML examples load, its files and commands exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from datasette.app import Datasette
from datasette.cli import cli
from datasette.version import __version__ as DATASETTE_VERSION

from datasette_llm_core.config import plugin_settings
from datasette_llm_core.gateway import llm_gateway
from datasette_llm_core.permissions import parse_grants
from datasette_llm_extract.schema import validate_table_spec
from datasette_llm_extract.settings import extract_settings
from datasette_llm_rag.ragconfig import parse_rag_config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
IS_V1 = not DATASETTE_VERSION.startswith("0.")
PLUGIN = "datasette-llm-newsroom"


def yaml_blocks() -> list[tuple[int, str]]:
    return [(README[: m.start()].count("\n") + 1, m.group(1))
            for m in re.finditer(r"```yaml\n(.*?)\n```", README, re.S)]


BLOCKS = yaml_blocks()


def section(title: str) -> str:
    m = re.search(r"^## " + re.escape(title) + r"\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert m, f"README has no section {title!r}"
    return m.group(1)


def test_the_two_commands_are_there():
    assert "make demo" in README and "make test" in README
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_there_are_examples_to_load():
    assert len(BLOCKS) >= 4
    assert "<!-- readme-example: newsroom -->" in README


def test_linked_files_and_screenshots_exist():
    targets = re.findall(r"\]\(((?!https?://|#)[^)\s]+)\)", README)
    assert any(t.startswith("docs/screenshots/") for t in targets)
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing, f"README links to missing files: {missing}"


def _memory_state(config: dict) -> dict:
    settings = config.get("plugins", {}).get(PLUGIN)
    if settings is not None:
        settings["state_database"] = ":memory:"
        for model in settings.get("models", []) + settings.get("embedding_models", []):
            model.pop("api_key", None)  # {$env: ...}: resolved from the environment below
    return config


@pytest.mark.parametrize("line,block", BLOCKS, ids=[f"line{n}" for n, _ in BLOCKS])
async def test_yaml_example_loads(line, block, monkeypatch, tmp_path):
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.setenv(name, "sk-readme-example-not-a-real-key")
    config = _memory_state(yaml.safe_load(block))
    assert isinstance(config, dict), f"README line {line}: not a YAML mapping"
    if PLUGIN not in config.get("plugins", {}):
        # Datasette 1.0's own permission blocks (datasette.yaml), 1.0 only
        if not IS_V1:
            pytest.skip("a datasette.yaml permissions example: Datasette 1.0 only")
        ds = Datasette(memory=True, config=config)
        await ds.invoke_startup()
        return
    ds = Datasette(memory=True, metadata=config)
    await ds.invoke_startup()
    settings = plugin_settings(ds)
    rag = parse_rag_config(settings.rag)
    extract = extract_settings(ds)
    for template in extract.templates:
        validate_table_spec({"columns": template.columns, "key_columns": template.key_columns})
    parse_grants(settings.permissions)
    if settings.models:
        gateway = await llm_gateway(ds)
        ids = {m.model_id for m in gateway.chat_models()}
        assert {m.id for m in settings.models} <= ids, f"README line {line}: models not built"
    assert rag is not None


async def test_newsroom_example_means_what_it_says(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-readme-example-not-a-real-key")
    block = README.split("<!-- readme-example: newsroom -->", 1)[1]
    config = _memory_state(yaml.safe_load(re.search(r"```yaml\n(.*?)\n```", block, re.S).group(1)))
    ds = Datasette(memory=True, metadata=config)
    await ds.invoke_startup()
    settings = plugin_settings(ds)
    assert settings.defaults["extract"] == "gpt-4.1-mini"
    assert settings.fallback_chain("answer") == ["local"]
    rag = parse_rag_config(settings.rag)
    assert rag.model_for("documents", "trump_lawsuits") == "all-MiniLM-L6-v2"
    assert rag.databases["documents"].tables["trump_lawsuits"].text_columns() == [
        "caseName", "plaintiff", "defendant", "issue"]
    grants = parse_grants(settings.permissions)
    assert grants is not None
    template = extract_settings(ds).templates[0]
    spec = validate_table_spec({"columns": template.columns, "key_columns": template.key_columns})
    assert spec.column_names() == ["company", "date", "total"]


def test_documented_commands_exist():
    commands = re.findall(r"^\| `datasette (llm-\w+) (\w+)", section("Command line"), re.M)
    assert len(commands) >= 4
    runner = CliRunner()
    for group, command in commands:
        result = runner.invoke(cli, [group, command, "--help"])
        assert result.exit_code == 0, f"datasette {group} {command}: {result.output}"
        assert "Usage:" in result.output
    assert (ROOT / "demo_data" / "build.py").exists()
    assert (ROOT / "tests" / "fake_openai_server.py").exists()


def test_documented_options_exist():
    """Options the Command line section names (--table, --verify, ...) are real."""
    runner = CliRunner()
    for row in re.findall(r"^\| `datasette (llm-\w+) (\w+)[^|]*\|([^\n]*)", section("Command line"),
                          re.M):
        group, command, description = row
        help_text = runner.invoke(cli, [group, command, "--help"]).output
        for option in re.findall(r"`(--[a-z-]+)`", description):
            assert option in help_text, f"datasette {group} {command} has no {option}"


def test_benchmark_figures_come_from_the_docs():
    """Each decimal figure in the README's benchmark section appears in a docs/ report
    written from a benchmark's output, so the README cannot quote an unmeasured number."""
    body = section("Benchmarks and evaluation")
    docs = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs").glob("*.md"))
    figures = set(re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", body))
    assert figures, "no figures in the benchmark section"
    missing = sorted(f for f in figures if f not in docs)
    assert not missing, f"README figures not found in docs/*.md: {missing}"
