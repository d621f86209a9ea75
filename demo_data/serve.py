"""Serve the demo newsroom: ``make demo`` runs this after ``demo_data/build.py``.

1. writes demo_data/build/metadata.yml: the project's metadata.yml plus the chat
   models your environment provides (see ``models_from_env``);
2. builds the question box's search index with the local embedding model
   (no key, no network) if the index command is installed;
3. prints how to sign in and how to add a model, then runs Datasette with
   ``--root`` so the sign-in link appears in the terminal.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Mapping

import yaml

HERE = Path(__file__).parent
ROOT = HERE.parent
BUILD = HERE / "build"
DATABASES = ["congress", "documents", "newsroom"]
PLUGIN = "datasette-llm-newsroom"

OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-3-5-haiku-latest"


def models_from_env(env: Mapping[str, str]) -> list[dict]:
    """Model entries for the plugin config, from the environment variables that are set.

    - ``OPENAI_API_KEY``: OpenAI (model from ``DATASETTE_LLM_OPENAI_MODEL``)
    - ``ANTHROPIC_API_KEY``: Anthropic (model from ``DATASETTE_LLM_ANTHROPIC_MODEL``)
    - ``DATASETTE_LLM_BASE_URL`` + ``DATASETTE_LLM_MODEL``: any OpenAI-compatible
      server (Ollama, llama.cpp, vLLM); key from ``DATASETTE_LLM_API_KEY`` if it needs one.
    Keys are referenced by variable name, never copied into the file.
    """
    models: list[dict] = []
    if env.get("DATASETTE_LLM_BASE_URL") and env.get("DATASETTE_LLM_MODEL"):
        entry = {
            "id": "local",
            "label": f"{env['DATASETTE_LLM_MODEL']} (local server)",
            "provider": "openai-compatible",
            "model": env["DATASETTE_LLM_MODEL"],
            "base_url": env["DATASETTE_LLM_BASE_URL"],
        }
        if env.get("DATASETTE_LLM_API_KEY"):
            entry["api_key_env"] = "DATASETTE_LLM_API_KEY"
        models.append(entry)
    if env.get("OPENAI_API_KEY"):
        model = env.get("DATASETTE_LLM_OPENAI_MODEL") or OPENAI_MODEL
        models.append({"id": "openai", "label": f"OpenAI {model}", "provider": "openai",
                       "model": model, "api_key_env": "OPENAI_API_KEY"})
    if env.get("ANTHROPIC_API_KEY"):
        model = env.get("DATASETTE_LLM_ANTHROPIC_MODEL") or ANTHROPIC_MODEL
        models.append({"id": "anthropic", "label": f"Anthropic {model}",
                       "provider": "anthropic", "model": model,
                       "api_key_env": "ANTHROPIC_API_KEY"})
    return models


def demo_metadata(base: dict, env: Mapping[str, str]) -> dict:
    """``base`` (the parsed metadata.yml) with models, defaults and fallback from ``env``."""
    metadata = copy.deepcopy(base)
    settings = metadata.setdefault("plugins", {}).setdefault(PLUGIN, {})
    models = models_from_env(env)
    if models:
        settings["models"] = models
        ids = [m["id"] for m in models]
        settings["defaults"] = {"extract": ids[0], "answer": ids[0]}
        if len(ids) > 1:
            settings["fallback"] = ids[1:]
    return metadata


def write_demo_metadata(env: Mapping[str, str]) -> Path:
    base = yaml.safe_load((ROOT / "metadata.yml").read_text(encoding="utf-8"))
    path = BUILD / "metadata.yml"
    path.write_text(yaml.safe_dump(demo_metadata(base, env), sort_keys=False), encoding="utf-8")
    return path


def datasette_command() -> list[str]:
    exe = Path(sys.executable).with_name("datasette")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "datasette"]


def build_index(metadata: Path, databases: list[Path]) -> bool:
    """Run ``datasette llm-rag index`` if it is installed; False if it is not."""
    cmd = datasette_command()
    probe = subprocess.run(cmd + ["--help"], capture_output=True, text=True)
    if "llm-rag" not in probe.stdout:
        print("! The search index command (datasette llm-rag index) is not installed yet;"
              " skipping the index. The question box will say so.")
        return False
    print("Building the search index with the local embedding model (first run: ~1 minute)...")
    result = subprocess.run(cmd + ["llm-rag", "index", *map(str, databases), "-m", str(metadata)])
    if result.returncode != 0:
        print("! Building the index failed (see above); the demo starts without it.")
        return False
    return True


BANNER = """
==============================================================================
 Demo newsroom on http://{host}:{port}/

 SIGN IN to extract: Datasette prints a line below like
     http://{host}:{port}/-/auth-token?token=...
 Open it in your browser to sign in as "root" (allowed to extract and index).

 MODELS: {model_status}
 To add one, stop this (Ctrl+C) and run again with one of:
     OPENAI_API_KEY=sk-... make demo
     ANTHROPIC_API_KEY=sk-ant-... make demo
     DATASETTE_LLM_BASE_URL=http://127.0.0.1:11434/v1 DATASETTE_LLM_MODEL=llama3.2 make demo
       (a local Ollama or llama.cpp server speaking the OpenAI API)
 Without a model, semantic search still works: it runs on this machine.
==============================================================================
"""


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the demo newsroom")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", default="8001")
    parser.add_argument("--no-index", action="store_true", help="skip building the search index")
    args = parser.parse_args()

    os.chdir(ROOT)  # metadata.yml's paths are relative to the project root
    databases = [BUILD / f"{name}.db" for name in DATABASES]
    if not all(p.exists() for p in databases):
        subprocess.run([sys.executable, str(HERE / "build.py")], check=True)
    metadata = write_demo_metadata(os.environ)
    if not args.no_index:
        build_index(metadata, databases)

    models = models_from_env(os.environ)
    status = (
        "configured: " + ", ".join(m["label"] for m in models)
        if models else "none configured (extraction and answers are off)."
    )
    print(BANNER.format(host=args.host, port=args.port, model_status=status), flush=True)
    cmd = datasette_command() + [
        "serve", *map(str, databases), "-m", str(metadata),
        "--template-dir", str(ROOT / "templates"),
        "--host", args.host, "--port", str(args.port), "--root",
    ]
    if shutil.which(cmd[0]) or Path(cmd[0]).exists():
        os.execv(cmd[0], cmd)
    subprocess.run(cmd, check=False)


if __name__ == "__main__":
    main()
