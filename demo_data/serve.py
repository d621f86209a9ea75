"""Serve the demo newsroom: ``make demo`` runs this after ``demo_data/build.py``.

1. reports the chat models your environment provides (the suite registers them
   itself from OPENAI_API_KEY, ANTHROPIC_API_KEY or DATASETTE_LLM_BASE_URL);
2. builds the question box's search index with the local embedding model
   (no key, no network) if the index command is installed;
3. prints how to sign in and how to add a model, then runs Datasette with
   ``--root`` so the sign-in link appears in the terminal.
"""

from __future__ import annotations

import argparse
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

def model_status(env: Mapping[str, str]) -> str:
    """One line saying which chat models the environment provides.

    The suite itself registers them (``auto_models``, see the README): an
    OpenAI model for ``OPENAI_API_KEY``, an Anthropic one for
    ``ANTHROPIC_API_KEY``, and any OpenAI-compatible server for
    ``DATASETTE_LLM_BASE_URL`` (+ ``DATASETTE_LLM_MODEL``).
    """
    from datasette_llm_core.providers.builtin import default_model_configs

    configs = default_model_configs(env)
    if not configs:
        return "none configured (extraction and written answers are off)."
    return "from your environment: " + ", ".join(
        f"{c.id} ({c.provider}{', ' + c.base_url if c.base_url else ''})" for c in configs
    )


def datasette_command() -> list[str]:
    exe = Path(sys.executable).with_name("datasette")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "datasette"]


def indexed_databases(metadata: Path) -> list[str]:
    config = yaml.safe_load(metadata.read_text(encoding="utf-8"))
    rag = config.get("plugins", {}).get(PLUGIN, {}).get("rag", {})
    return list(rag.get("databases", {}))


def build_index(metadata: Path, databases: list[Path]) -> bool:
    """Run ``datasette llm-rag index`` for each configured database (only new or
    changed rows are embedded, so later runs take seconds)."""
    cmd = datasette_command()
    probe = subprocess.run(cmd + ["--help"], capture_output=True, text=True)
    if "llm-rag" not in probe.stdout:
        print("! The search index command (datasette llm-rag index) is not installed;"
              " skipping the index. The question box will say so.")
        return False
    seeds = HERE / "vectors.npz"  # the demo rows' vectors (demo_data/seed_vectors.py)
    extra = ["--vectors", str(seeds)] if seeds.exists() else []
    print("Building the search index with the local embedding model (about 1,600 rows; their"
          " vectors ship in demo_data/vectors.npz, checked against the model; later runs only"
          " embed what changed).", flush=True)
    wanted = set(indexed_databases(metadata))
    ok = True
    for path in databases:
        if path.stem not in wanted:
            continue
        result = subprocess.run(cmd + ["llm-rag", "index", str(path), "-m", str(metadata), *extra])
        if result.returncode != 0:
            print(f"! Indexing {path.name} failed (see above); the demo starts anyway.")
            ok = False
    return ok


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
    metadata = ROOT / "metadata.yml"
    if not args.no_index:
        build_index(metadata, databases)
    status = model_status(os.environ)
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
