"""The publish recipe, end to end as far as this machine allows (issue #12, item 2).

``datasette package`` is run for real, as the README tells a newsroom to run
it, with a stand-in ``docker`` on PATH that keeps the build context instead
of building an image (there is no Docker engine here). The test then does
what the generated Dockerfile does: runs its ``datasette inspect`` step,
makes the context read-only (a read-only bind mount, as a container's image
layer with no volume), sets its ``ENV`` lines plus the model key the way
``docker run -e`` / a platform secret would, and starts its ``CMD`` (on
127.0.0.1 instead of 0.0.0.0). Anonymous visitors then search and ask.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .fake_openai_server import FakeOpenAIServer
from .publish_helpers import MountUnavailable, PublicServer, read_only_mount
from .test_publish_readonly import ANSWER, make_documents

KEY = "sk-test-SECRET-publish-0123456789"


def newsroom_metadata(base_url: str) -> dict:
    """The metadata.yml of the recipe (README, "Publishing a newsroom")."""
    return {
        "title": "Published newsroom",
        "plugins": {"datasette-llm-newsroom": {
            "state_database": ":memory:",
            "models": [{"id": "fake", "provider": "openai-compatible", "model": "fake-model",
                        "base_url": base_url, "api_key_env": "NEWSROOM_MODEL_KEY",
                        "supports": ["streaming"], "timeout": 30}],
            "embedding_models": [{"id": "fake-embed", "provider": "openai-compatible",
                                  "model": "fake-embedding", "base_url": base_url,
                                  "api_key_env": "NEWSROOM_MODEL_KEY", "dimensions": 64}],
            "defaults": {"answer": "fake", "embed": "fake-embed"},
            "permissions": {"databases": {"documents": {"llm-ask": True}}},
            "rag": {"embedding_model": "fake-embed", "min_score": -1, "sidecar_dir": "llm-rag",
                    "databases": {"documents": {"tables": {
                        "articles": {"columns": ["title", "body"], "title_column": "title"}}}}},
        }},
    }


FAKE_DOCKER = """#!/bin/sh
# Stands in for docker: keeps the build context of `docker build .`
if [ "$1" = "build" ]; then cp -a . "$CAPTURE_CONTEXT"; exit 0; fi
echo "fake docker: only build is supported" >&2; exit 1
"""


def parse_dockerfile(text: str) -> dict:
    env, run, cmd = {}, [], None
    for line in text.splitlines():
        if line.startswith("ENV "):
            name, _, value = line[4:].partition(" ")
            env[name] = shlex.split(value)[0] if value else ""
        elif line.startswith("RUN "):
            run.append(line[4:])
        elif line.startswith("CMD "):
            cmd = line[4:]
    return {"env": env, "run": run, "cmd": cmd}


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    base = tmp_path_factory.mktemp("package")
    newsroom = base / "newsroom"
    db = make_documents(newsroom)
    with FakeOpenAIServer(default=ANSWER, token_delay=0.0, ttft=0.0, api_key=KEY) as fake:
        (newsroom / "metadata.yml").write_text(yaml.safe_dump(newsroom_metadata(fake.base_url)))
        env = {**os.environ, "NEWSROOM_MODEL_KEY": KEY}
        flag = "-c" if _is_v1() else "-m"
        subprocess.run([sys.executable, "-m", "datasette", "llm-rag", "index", db.name, flag,
                        "metadata.yml"], cwd=newsroom, env=env, check=True, timeout=120,
                       capture_output=True)
        assert (newsroom / "llm-rag" / "documents.llm-rag.db").exists()
        # 1. datasette package, as in the README, with a docker that keeps the context
        bin_dir = base / "bin"
        bin_dir.mkdir()
        docker = bin_dir / "docker"
        docker.write_text(FAKE_DOCKER)
        docker.chmod(docker.stat().st_mode | stat.S_IEXEC)
        context = base / "image"
        datasette_bin = str(Path(sys.executable).parent)
        result = subprocess.run(
            [sys.executable, "-m", "datasette", "package", "documents.db", "-m", "metadata.yml",
             "--static", "llm-rag:llm-rag", "--install", "datasette-llm-newsroom",
             "--secret", "publish-test-secret"],
            cwd=newsroom, timeout=120, capture_output=True, text=True,
            env={**os.environ, "PATH": f"{bin_dir}:{datasette_bin}:{os.environ['PATH']}",
                 "CAPTURE_CONTEXT": str(context)},
        )
        assert result.returncode == 0, result.stderr
        dockerfile = parse_dockerfile((context / "Dockerfile").read_text())
        # 2. the build step the Dockerfile runs (the image is writable while it is built)
        inspect = next(r for r in dockerfile["run"] if r.startswith("datasette inspect"))
        subprocess.run([sys.executable, "-m", *shlex.split(inspect)], cwd=context, check=True,
                       timeout=60, capture_output=True)
        try:
            with read_only_mount(context, base / "app") as app:
                # 3. CMD, with the ENV lines and the key given at run time (docker run -e)
                cmd = shlex.split(dockerfile["cmd"].replace("$PORT", "0"))
                assert cmd[:2] == ["datasette", "serve"]
                args = cmd[2:]
                host = args.index("--host")
                args[host + 1] = "127.0.0.1"
                port = args.index("--port")
                del args[port:port + 2]
                run_env = {**dockerfile["env"], "NEWSROOM_MODEL_KEY": KEY}
                args = [a for a in args if a != "--secret"]
                server = PublicServer(args, base / "server.log", cwd=app, env=run_env)
                with server:
                    yield {"server": server, "context": context, "dockerfile": dockerfile,
                           "fake": fake, "app": app, "newsroom": newsroom, "base": base}
        except MountUnavailable as e:
            pytest.skip(f"cannot make a read-only mount here: {e}")


def _is_v1() -> bool:
    from datasette_llm_core import permissions as P

    return P.IS_V1


def test_the_image_holds_the_database_and_its_index_but_serves_only_the_database(packaged):
    d = packaged["dockerfile"]
    assert "pip install -U datasette datasette-llm-newsroom" in "\n".join(d["run"])
    assert "-i documents.db" in d["cmd"] and "llm-rag.db" not in d["cmd"]
    assert "--static llm-rag:llm-rag" in d["cmd"]
    context = packaged["context"]
    assert (context / "llm-rag" / "documents.llm-rag.db").exists()
    # the key is a secret of the platform, never part of the image
    for path in context.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert "NEWSROOM_MODEL_KEY" not in d["env"]
    status, databases = packaged["server"].json("GET", "/-/databases.json")
    assert status == 200
    if isinstance(databases, dict):  # 1.0 wraps the list
        databases = databases.get("databases", [])
    names = {db["name"] for db in databases}
    assert "documents" in names and not any("llm-rag" in n for n in names)


def test_the_index_file_is_not_downloadable(packaged):
    server = packaged["server"]
    for path in ("/llm-rag/documents.llm-rag.db", "/llm-rag/documents%2Ellm-rag.db",
                 "/llm-rag/Documents.LLM-RAG.db"):
        status, body, _ = server.get(path)
        assert status == 404, (path, body[:200])
        assert b"SQLite format" not in body


def test_anonymous_visitors_search_and_get_cited_answers_from_the_image(packaged):
    server = packaged["server"]
    status, body = server.json("GET", "/-/llm-rag/documents/search.json?q=library")
    assert status == 200, body
    assert body["rows"][0]["title"] == "Library hours"
    status, body = server.json("POST", "/-/llm-rag/documents/ask.json",
                               {"q": "Why were the bridge repairs delayed?"})
    assert status == 200, body
    assert body["mode"] == "answer" and "spring" in body["answer"]
    assert body["cited_rows"][0]["title"] == "Bridge repairs delayed"
    # the fake model refuses any other key (401): the key came from the environment
    assert packaged["fake"].chat_requests()
    status, html, _ = server.get("/-/llm-ask/documents?q=bridge")
    assert status == 200 and KEY.encode() not in html
    assert KEY not in server.log.read_text()


def test_the_published_index_is_read_only_and_in_memory_state_needs_no_disk(packaged):
    server = packaged["server"]
    status, html, _ = server.get("/-/llm-rag/index/documents", root=True)
    assert status == 200 and "Read-only" in html.decode()
    assert "Up to date" in html.decode()  # the copy kept the files' times: not "changed"
    app = packaged["app"]
    # nothing was written into the image: no state database, no -wal/-shm
    names = sorted(p.name for p in app.iterdir())
    assert not [n for n in names if n.endswith((".db-wal", ".db-shm")) or n == "llm_newsroom.db"]
    assert re.search(r"documents\.db", " ".join(names))


@pytest.mark.parametrize("path, refused", [
    ("/llm-rag/documents.llm-rag.db", True),
    ("/llm-rag/documents.llm-rag.db-wal", True),
    ("/static/x%2Ellm-rag%2Edb", True),
    ("/documents~2Ellm-rag.db", True),  # a sidecar opened as a database, downloaded
    ("/llm-rag/documents.llm-rag.db/", True),
    ("/documents.db", False),
    ("/documents/articles.json", False),
    ("/-/llm-rag/documents/search.json", False),
    ("/-/llm-rag/index/documents", False),
])
def test_which_paths_name_an_index_file(path, refused):
    from datasette_llm_rag.published import names_index_file

    assert names_index_file(path) is refused


def test_the_readme_recipe_is_the_one_tested_here():
    from datasette_llm_core.limits import parse_limits
    from datasette_llm_rag.ragconfig import parse_rag_config

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    recipe = readme.split("## Publishing a newsroom", 1)[1].split("\n## ", 1)[0]
    assert "datasette package documents.db -m metadata.yml --static llm-rag:llm-rag" in recipe
    assert "--install datasette-llm-newsroom" in recipe
    block = re.search(r"<!-- docs-test: publish-config -->\s*```yaml\n(.*?)\n```", recipe, re.S)
    plugin = yaml.safe_load(block.group(1))["plugins"]["datasette-llm-newsroom"]
    assert plugin["state_database"] == ":memory:"
    assert parse_rag_config(plugin["rag"]).sidecar_dir == "llm-rag"
    limits = parse_limits(plugin["limits"])
    assert limits.for_database("documents").questions_per_minute == 2 and limits.trusted_proxies == 1
    assert plugin["rag"]["cache_answers"] is True


FAKE_GCLOUD = r"""#!/bin/sh
# Stands in for gcloud: keeps the build context of `gcloud builds submit`
echo "$*" >> "$CAPTURE_CONTEXT.calls"
case "$*" in
  "config get-value project") echo test-project ;;
  builds\ submit*) cp -a . "$CAPTURE_CONTEXT" ;;
esac
exit 0
"""


def test_publish_cloudrun_ships_the_same_image(packaged):
    """``datasette publish cloudrun`` with the README's options builds the same
    context as ``datasette package`` (only the deploy step is not run for real)."""
    base, newsroom = packaged["base"], packaged["newsroom"]
    bin_dir = base / "gcloud-bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(FAKE_GCLOUD)
    gcloud.chmod(gcloud.stat().st_mode | stat.S_IEXEC)
    context = base / "cloudrun-image"
    result = subprocess.run(
        [sys.executable, "-m", "datasette", "publish", "cloudrun", "documents.db", "-m",
         "metadata.yml", "--static", "llm-rag:llm-rag", "--install", "datasette-llm-newsroom",
         "--service", "newsroom", "--secret", "publish-test-secret"],
        cwd=newsroom, timeout=120, capture_output=True, text=True,
        env={**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
             "CAPTURE_CONTEXT": str(context)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    cloudrun = parse_dockerfile((context / "Dockerfile").read_text())
    # cloudrun adds only --setting force_https_urls on
    assert cloudrun["cmd"].replace(" --setting force_https_urls on", "") == packaged["dockerfile"]["cmd"]
    assert cloudrun["run"] == packaged["dockerfile"]["run"]
    assert (context / "llm-rag" / "documents.llm-rag.db").exists()
    assert "run deploy" in (base / "cloudrun-image.calls").read_text()
    for path in context.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
