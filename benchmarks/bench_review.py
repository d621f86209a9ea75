"""How soon a reviewer can start, and finish, reviewing a long document, against the model itself.

    python benchmarks/bench_review.py [--pages 40] [--per-page 5] [--concurrency 4] [--repeats 3]

A real ``datasette serve`` process extracts a PAGES-page clemency document (one part per
page) through the scripted OpenAI-compatible server (tests/fake_openai_server.py, which
streams word by word with a time to first token and a per-word delay). Every INVALID_EVERY-th
record comes back with a date that fails validation, so the run streams invalid rows,
re-asks, and corrects them in place, as real models make it do. Measured from the moment
the run is started (``POST /-/llm-extract/api/runs``), following the run's event stream
as the review page does:

- first reviewable row: the first ``RowExtracted`` event;
- fully reviewable grid: every row present and every re-ask settled (``RunStatus`` done).

Baseline, measured in the same run against the same server: the same page requests sent
straight to the model with the OpenAI SDK at the same concurrency, timing the first
complete row in any stream and the end of the last stream. Printed: medians and ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import datasette.app  # noqa: E402,F401  (load Datasette's plugins before the suite's modules)
import httpx  # noqa: E402
from bench_extract import clemency_text, openai_messages  # noqa: E402  (same documents)

from datasette_llm_extract.chunking import chunk_text  # noqa: E402
from datasette_llm_extract.prompts import build_request  # noqa: E402
from datasette_llm_extract.schema import validate_table_spec  # noqa: E402
from tests.extract_responders import CLEMENCY_SPEC, clemency_rows  # noqa: E402
from tests.fake_openai_server import (  # noqa: E402
    REASK_MARKER,
    FakeOpenAIServer,
    Reply,
    last_user_text,
    misanswered_reask,
)

SPEC = validate_table_spec(CLEMENCY_SPEC)
SECRET = "bench-review-secret"
_FIRST_ROW = re.compile(r'"source_quote":\s*"(?:[^"\\]|\\.)*"\s*}')


def make_handler(invalid_every: int):
    def handler(body: dict) -> Reply:
        text = last_user_text(body)
        if "<document>\n" in text:
            text = text.split("<document>\n", 1)[1].rsplit("\n</document>", 1)[0]
        rows = clemency_rows(text)
        if REASK_MARKER in last_user_text(body):  # read the dates again; answer as real models do
            dates = {row["name"]: row["date"] for row in rows}
            return Reply(misanswered_reask(body, lambda row: {**row, "date": dates.get(row["name"])}))
        for i, row in enumerate(rows):
            if invalid_every and i % invalid_every == invalid_every - 1:
                row["date"] = "sometime that year"  # fails validation: re-asked
        return Reply(content=json.dumps({"rows": rows}, indent=1))

    return handler


def document(pages: int, per_page: int) -> tuple[str, int]:
    """PAGES pages of PER_PAGE records, separated by form feeds; and a chunk size giving one part per page."""
    text = clemency_text(pages * per_page)
    blocks = text.split("\n\n")
    page_texts = ["\n\n".join(blocks[i:i + per_page]) for i in range(0, len(blocks), per_page)]
    size = max(len(p) for p in page_texts) + 10
    return "\n\f\n".join(page_texts), size


def start_datasette(workdir: Path, server: FakeOpenAIServer, concurrency: int, chunk_chars: int):
    import sqlite3

    sqlite3.connect(workdir / "newsroom.db").close()
    metadata = {"plugins": {"datasette-llm-newsroom": {
        "state_database": str(workdir / "state.db"), "auto_models": False,
        "models": [{"id": "fake", "provider": "openai-compatible", "model": "fake-model",
                    "base_url": server.base_url, "api_key": "sk-bench", "supports": ["streaming", "schema"],
                    "context_tokens": 32000}],
        "defaults": {"extract": "fake"}, "retries": {"max_attempts": 1},
        "extract": {"concurrency": concurrency, "chunk_chars": chunk_chars, "overlap": 0},
    }}}
    (workdir / "metadata.json").write_text(json.dumps(metadata))
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("datasette")
    cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "datasette"]),
           "serve", str(workdir / "newsroom.db"), "-m", str(workdir / "metadata.json"),
           "--host", "127.0.0.1", "--port", str(port), "--root"]
    env = {**os.environ, "DATASETTE_SECRET": SECRET, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    log = open(workdir / "datasette.log", "w")
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/-/versions.json", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("datasette did not start:\n" + (workdir / "datasette.log").read_text())


def root_cookie() -> dict:
    from datasette.app import Datasette

    return {"ds_actor": Datasette(memory=True, secret=SECRET).sign({"a": {"id": "root"}}, "actor")}


def ours(base: str, text: str, table: str) -> dict:
    """Start a run over HTTP and follow its event stream; seconds from the start."""
    cookies = root_cookie()
    with httpx.Client(base_url=base, cookies=cookies, timeout=120) as client:
        start = time.perf_counter()
        r = client.post("/-/llm-extract/api/runs", json={
            "database": "newsroom", "table": table, "create": True, "schema": CLEMENCY_SPEC, "text": text})
        assert r.status_code == 201, r.text
        events = r.json()["urls"]["events"]
        out = {"first_row": None, "first_invalid": None, "reviewable": None, "rows": 0, "corrected": 0}
        with client.stream("GET", events) as stream:
            kind = None
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind:
                    now = time.perf_counter() - start
                    data = json.loads(line[6:])
                    if kind == "RowExtracted":
                        out["rows"] += 1
                        out["first_row"] = out["first_row"] or now
                        if not data["valid"]:
                            out["first_invalid"] = out["first_invalid"] or now
                    elif kind == "RowCorrected":
                        out["corrected"] += 1
                    elif kind == "RunStatus" and data["status"] not in ("pending", "running"):
                        out["reviewable"] = now
                        out["status"] = data["status"]
                        break
        return out


def raw(base_url: str, args) -> dict:
    """The baseline, in a process of its own as Datasette is (the scripted server's threads
    share this process's interpreter lock, which would slow a client running here)."""
    out = subprocess.run([sys.executable, __file__, "--raw-worker", base_url, "--pages", str(args.pages),
                          "--per-page", str(args.per_page), "--concurrency", str(args.concurrency)],
                         capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    return json.loads(out.stdout.strip().splitlines()[-1])


async def raw_worker(base_url: str, text: str, chunk_chars: int, concurrency: int) -> dict:
    """The same page requests straight to the model: first complete row, end of the last stream."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)
    await client.models.list()  # connect first, as Datasette's warm client has
    requests = [build_request(SPEC, "", c.text) for c in chunk_text(text, chunk_chars, 0)]
    semaphore = asyncio.Semaphore(concurrency)
    start = time.perf_counter()
    first: list[float] = []

    async def one(request):
        async with semaphore:
            content = ""
            stream = await client.chat.completions.create(
                model="fake-model", messages=openai_messages(request), stream=True, temperature=0,
                response_format={"type": "json_schema",
                                 "json_schema": {"name": "rows", "schema": request.json_schema}})
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    content += chunk.choices[0].delta.content
                    if not first and _FIRST_ROW.search(content):
                        first.append(time.perf_counter() - start)

    await asyncio.gather(*(one(r) for r in requests))
    end = time.perf_counter() - start
    await client.close()
    return {"first_row": first[0], "end": end, "requests": len(requests)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=40)
    parser.add_argument("--per-page", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--invalid-every", type=int, default=4, help="every Nth record fails validation (0: none)")
    parser.add_argument("--ttft", type=float, default=0.25, help="server time to first token (s)")
    parser.add_argument("--token-delay", type=float, default=0.004, help="server delay per streamed word (s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--raw-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.pop("OPENAI_API_KEY", None)
    text, size = document(args.pages, args.per_page)
    if args.raw_worker:
        print(json.dumps(asyncio.run(raw_worker(args.raw_worker, text, size, args.concurrency))))
        return
    workdir = Path(tempfile.mkdtemp(prefix="bench-review-"))
    results, baselines = [], []
    with FakeOpenAIServer(ttft=args.ttft, token_delay=args.token_delay,
                          handler=make_handler(args.invalid_every)) as server:
        proc, base = start_datasette(workdir, server, args.concurrency, size)
        try:
            ours(base, text, "warm_up")
            for i in range(args.repeats):  # interleaved, so drift hits both alike
                baselines.append(raw(server.base_url, args))
                results.append(ours(base, text, f"run_{i}"))
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    def med(rows, key):
        return statistics.median(r[key] for r in rows)

    last = results[-1]
    print(f"{args.pages}-page document ({len(text):,} chars, {baselines[-1]['requests']} requests, "
          f"concurrency {args.concurrency}, ttft {args.ttft}s, {args.token_delay * 1000:.0f} ms/word); "
          f"{last['rows']} rows, {last['corrected']} corrected by re-ask; median of {args.repeats}")
    print(f"  raw model stream, first complete row:        {med(baselines, 'first_row'):7.2f} s")
    print(f"  review page stream, first reviewable row:    {med(results, 'first_row'):7.2f} s "
          f"({med(results, 'first_row') / med(baselines, 'first_row'):.2f}x)")
    if all(r["first_invalid"] is not None for r in results):
        print(f"  review page stream, first invalid row shown: {med(results, 'first_invalid'):7.2f} s")
    print(f"  raw model streams, all finished:             {med(baselines, 'end'):7.2f} s")
    print(f"  fully reviewable grid (re-asks settled):     {med(results, 'reviewable'):7.2f} s "
          f"({med(results, 'reviewable') / med(baselines, 'end'):.2f}x)")


if __name__ == "__main__":
    main()
