"""End-to-end fixtures: a fake OpenAI server in this process, Datasette as a real
server process on a free port, and headless Chromium driven by Playwright.

Every test module here sets ``pytestmark = pytest.mark.browser`` (``-m "not browser"``
leaves them out) and skips with a reason when Playwright or
Chromium is missing (``make test`` installs both). Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from ..fake_openai_server import FakeOpenAIServer
from ..processes import free_port, stop_process, wait_until_serving

ROOT = Path(__file__).parent.parent.parent
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
SECRET = "browser-suite-secret-not-for-production"
FAKE_KEY = "sk-fake-browser-suite-key"
README_SHOTS = ROOT / "docs" / "screenshots"
EXPECT_TIMEOUT = 15_000  # ms, for anything that waits on the server or a stream


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.browser_failed = report.failed


def _save_failure(request, page, name: str) -> None:
    """On a failed test, keep a screenshot of the page and say where it is."""
    if getattr(request.node, "browser_failed", False):
        path = Path(os.environ.get("BROWSER_FAILURES", "/tmp")) / f"{request.node.name}-{name}.png"
        try:
            page.screenshot(path=str(path), full_page=True)
            print(f"\nscreenshot of the failed page ({page.url}): {path}")
        except Exception:
            pass


def _skip_reason() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed: pip install -e '.[test]'"
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"Chromium not found at {CHROMIUM}: run .ci/browser-deps.sh (make test does)"
    return None


def _load_build():
    spec = importlib.util.spec_from_file_location("demo_build", ROOT / "demo_data" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def fake_llm():
    """The scripted OpenAI-compatible server every model of the suite's server points at."""
    with FakeOpenAIServer(api_key=FAKE_KEY, models=["fake-model"]) as server:
        yield server


@pytest.fixture(autouse=True)
def _reset_fake(request):
    if "fake_llm" in request.fixturenames:
        fake = request.getfixturevalue("fake_llm")
        fake.reset()
        fake.handler = None
        fake.token_delay = fake.ttft = 0.0
    yield


class DatasetteServer:
    def __init__(self, base_url: str, root_login_url: str, workdir: Path, proc, log_file,
                 log_path: Path):
        self.base_url = base_url
        self.root_login_url = root_login_url
        self.workdir = workdir
        self.proc = proc
        self.log_file = log_file
        self.log_path = log_path

    def url(self, path: str) -> str:
        return self.base_url + path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def actor_cookie(self, actor: dict) -> dict:
        """A signed ds_actor cookie for ``actor`` (the server shares our secret)."""
        from datasette.app import Datasette

        value = Datasette(memory=True, secret=SECRET).sign({"a": actor}, "actor")
        return {"name": "ds_actor", "value": value, "url": self.base_url}


DATABASES = ("congress", "documents", "newsroom")
#: What the browser suite indexes: one small table keeps indexing to seconds.
RAG_TABLES = {"documents": ["trump_lawsuits"]}


def _datasette_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("datasette")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "datasette"]


def _server_env() -> dict:
    return {**os.environ, "DATASETTE_SECRET": SECRET, "FAKE_LLM_KEY": FAKE_KEY, "PYTHONUNBUFFERED": "1",
            "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def write_metadata(workdir: Path, state_name: str, models: list[dict]) -> Path:
    """metadata.yml of the demo, pointed at ``workdir`` and the given models."""
    metadata = yaml.safe_load((ROOT / "metadata.yml").read_text(encoding="utf-8"))
    settings = metadata["plugins"]["datasette-llm-newsroom"]
    settings["state_database"] = str(workdir / f"{state_name}.db")
    rag = settings["rag"]
    rag["sidecar_dir"] = str(workdir)
    rag["databases"] = {
        db: {"tables": {t: rag["databases"][db]["tables"][t] for t in tables}}
        for db, tables in RAG_TABLES.items()
    }
    settings["models"] = models
    settings["auto_models"] = False
    if models:
        settings["defaults"] = {"extract": models[0]["id"], "answer": models[0]["id"]}
    settings["retries"] = {"max_attempts": 1}
    path = workdir / f"{state_name}-metadata.yml"
    path.write_text(yaml.safe_dump(metadata, sort_keys=False), encoding="utf-8")
    return path


def _start(workdir: Path, meta_path: Path, name: str) -> "DatasetteServer":
    port = free_port()
    cmd = _datasette_cmd() + [
        "serve", *[str(workdir / f"{n}.db") for n in DATABASES],
        "-m", str(meta_path), "--template-dir", str(ROOT / "templates"),
        "--host", "127.0.0.1", "--port", str(port), "--root"]
    log_path = workdir / f"{name}.log"
    log = log_path.open("w")
    # Both streams go to the log file. Never a pipe: nobody reads it after the login line,
    # and once its 64 KB buffer is full the server's next write (a traceback, an access-log
    # line) blocks its event loop and every request stalls (docs/reliability.md).
    proc = subprocess.Popen(cmd, cwd=workdir, env=_server_env(), stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_until_serving(proc, base_url + "/-/versions.json", lambda: "")
        login = _login_link(log_path)
    except Exception:
        proc.kill()
        log.close()
        raise RuntimeError("Datasette failed to start:\n" + log_path.read_text()) from None
    return DatasetteServer(base_url, login, workdir, proc, log, log_path)


def _login_link(log_path: Path, timeout: float = 10.0) -> str:
    """The single-use --root login link Datasette prints first (written before it serves)."""
    deadline = time.monotonic() + timeout
    while True:
        for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            if "/-/auth-token?token=" in line:
                return line.strip()
        if time.monotonic() > deadline:
            raise RuntimeError("datasette printed no --root login link")
        time.sleep(0.1)


def _stop(server: "DatasetteServer") -> None:
    stop_process(server.proc)
    server.log_file.close()


@pytest.fixture(scope="session")
def demo_workdir(tmp_path_factory, fake_llm) -> Path:
    """Fresh demo databases and their search index (local MiniLM embeddings)."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("browser-server")
    _load_build().build(workdir)
    meta = write_metadata(workdir, "index", [])
    for db in RAG_TABLES:
        result = subprocess.run(
            _datasette_cmd() + ["llm-rag", "index", str(workdir / f"{db}.db"), "-m", str(meta)],
            cwd=workdir, env=_server_env(), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"indexing {db} failed:\n{result.stdout}\n{result.stderr}"
    return workdir


@pytest.fixture(scope="session")
def datasette_server(demo_workdir, fake_llm):
    """Datasette serving the demo databases, its chat model -> the fake server."""
    model = {
        "id": "fake", "label": "Fake model (test server)", "provider": "openai-compatible",
        "model": "fake-model", "base_url": fake_llm.base_url, "api_key_env": "FAKE_LLM_KEY",
        "supports": ["streaming", "schema", "images"],
    }
    server = _start(demo_workdir, write_metadata(demo_workdir, "llm_newsroom", [model]), "datasette")
    yield server
    _stop(server)


@pytest.fixture(scope="session")
def search_only_server(demo_workdir):
    """The same databases and index with no chat model configured at all."""
    server = _start(demo_workdir, write_metadata(demo_workdir, "no_models", []), "no-models")
    yield server
    _stop(server)


@pytest.fixture(scope="module")
def browser():
    """Chromium for one test module. Module scope, not session: while the sync
    Playwright API is active its event loop counts as running in this thread,
    which would break every pytest-asyncio test collected after the browser tests."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


class PageProblems:
    """Console errors and uncaught page errors seen while a test ran."""

    def __init__(self):
        self.errors: list[str] = []

    def watch(self, page) -> None:
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}")
                if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("response", lambda r: self.errors.append(f"HTTP {r.status}: {r.url}")
                if r.status >= 400 else None)


def _new_page(browser, problems: PageProblems, cookies: list[dict] | None = None):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(EXPECT_TIMEOUT)
    if cookies:
        context.add_cookies(cookies)
    page = context.new_page()
    problems.watch(page)
    return context, page


@pytest.fixture
def problems():
    found = PageProblems()
    yield found
    assert not found.errors, "errors in the browser console:\n" + "\n".join(found.errors)


@pytest.fixture
def anon_page(request, browser, datasette_server, problems):
    context, page = _new_page(browser, problems)
    yield page
    _save_failure(request, page, "anon")
    context.close()


@pytest.fixture(scope="session")
def root_cookies(datasette_server) -> list[dict]:
    """Sign in once through the login link Datasette printed (its token is single-use)
    and keep the ds_actor cookie it sets for every root page."""
    import http.cookies

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        response = opener.open(datasette_server.root_login_url, timeout=10)
    except urllib.error.HTTPError as e:  # the 302 to the homepage
        response = e
    jar = http.cookies.SimpleCookie()
    for header in response.headers.get_all("Set-Cookie") or []:
        jar.load(header)
    assert "ds_actor" in jar, "the --root login link did not sign us in"
    return [{"name": "ds_actor", "value": jar["ds_actor"].value, "url": datasette_server.base_url}]


@pytest.fixture
def root_page(request, browser, datasette_server, root_cookies, problems):
    """A page signed in as root."""
    context, page = _new_page(browser, problems, root_cookies)
    yield page
    _save_failure(request, page, "root")
    context.close()


@pytest.fixture
def page_as(browser, datasette_server, problems):
    """Factory: a page signed in as any actor, e.g. page_as({"id": "intern"})."""
    contexts = []

    def make(actor: dict):
        context, page = _new_page(browser, problems, [datasette_server.actor_cookie(actor)])
        contexts.append(context)
        return page

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def shots(tmp_path):
    """Save screenshots into the test's tmp dir; README ones also into docs/screenshots when
    UPDATE_README_SCREENSHOTS=1 (so an ordinary test run leaves the working tree clean)."""

    def shoot(page, name: str, readme: bool = False, **kwargs):
        path = tmp_path / f"{name}.png"
        page.screenshot(path=str(path), **kwargs)
        assert path.stat().st_size > 10_000, f"screenshot {name} looks empty"
        if readme and os.environ.get("UPDATE_README_SCREENSHOTS") == "1":
            README_SHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, README_SHOTS / f"{name}.png")
        return path

    return shoot
