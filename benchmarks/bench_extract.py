"""Extraction engine speed against a real HTTP model server (OpenAI-compatible).

    python benchmarks/bench_extract.py [--chunks 40] [--ttft 0.25] [--token-delay 0.004] [--repeats 5]

A scripted OpenAI-compatible server (tests/fake_openai_server.py) runs on
127.0.0.1 and streams answers word by word with a time-to-first-token and a
per-token delay; its "model" reads the clemency records in each request with
regular expressions. Calls go through the real stack: run_extraction ->
gateway (retries, call log) -> OpenAI SDK -> HTTP. Printed:

1. time to the first row event vs the time the first complete row appears in
   the raw model stream read with the OpenAI SDK directly (goal <= 1.2x);
2. a 40-chunk document with concurrency 8 vs sequential (goal >= 5x);
3. our own processing (stream parsing, validation, quote location, dedup,
   prompt building) as a share of model time (goal < 5%), and the whole
   per-chunk overhead of the stack vs direct SDK calls.

Documents come from ../shared/data/fivethirtyeight/obama-commutations when
present, otherwise from generated records of the same shape.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

# Load Datasette's plugins before importing the suite's packages directly, so the
# entry-point plugins register fully initialised modules.
import datasette.app  # noqa: E402,F401

from datasette_llm_extract import engine as engine_module  # noqa: E402
from datasette_llm_extract.chunking import chunk_text  # noqa: E402
from datasette_llm_extract.documents import Document  # noqa: E402
from datasette_llm_extract.engine import ExtractionJob, RowExtracted, run_extraction  # noqa: E402
from datasette_llm_extract.prompts import build_request  # noqa: E402
from datasette_llm_extract.schema import validate_table_spec  # noqa: E402
from tests.extract_responders import CLEMENCY_SPEC, clemency_rows  # noqa: E402
from tests.fake_openai_server import FakeOpenAIServer, Reply, last_user_text  # noqa: E402

CLEMENCY = HERE.parent.parent / "shared" / "data" / "fivethirtyeight" / "obama-commutations" / "obama_commutations.csv"
SPEC = validate_table_spec(CLEMENCY_SPEC)


def clemency_text(records: int) -> str:
    blocks = []
    if CLEMENCY.exists():
        import csv

        with open(CLEMENCY, newline="", encoding="utf-8") as f:
            person: dict = {}
            for key, info in list(csv.reader(f))[1:]:
                if not key:
                    if person.get("District/Date") and person.get("Sentence"):
                        blocks.append(person)
                    person = {"name": info.strip()}
                else:
                    person[key.rstrip(":")] = info
    while len(blocks) < records:  # generated fallback (or more than the file has)
        i = len(blocks)
        blocks.append({"name": f"Person Number{i}", "Offense": "Possession with intent to distribute",
                       "District/Date": f"District of Somewhere; March {i % 28 + 1}, 2005",
                       "Sentence": "Life imprisonment" if i % 3 == 0 else "240 months' imprisonment",
                       "Terms of grant": "Prison sentence commuted."})
    return "\n\n".join(
        f"{p['name']}\nOffense: {p.get('Offense', '')}\nDistrict/Date: {p['District/Date']}\n"
        f"Sentence: {p['Sentence']}\nTerms of grant: {p.get('Terms of grant', '')}" for p in blocks[:records])


def model_handler(body: dict) -> Reply:
    text = last_user_text(body)
    if "<document>\n" in text:
        text = text.split("<document>\n", 1)[1].rsplit("\n</document>", 1)[0]
    return Reply(content=json.dumps({"rows": clemency_rows(text)}, indent=1))


def build_datasette(server: FakeOpenAIServer, state: str):
    from datasette_llm_extract.cli import build_datasette as build

    config = {"plugins": {"datasette-llm-newsroom": {
        "state_database": state,
        "models": [{"id": "fake", "provider": "openai-compatible", "model": "fake-model",
                    "base_url": server.base_url, "api_key": "sk-bench", "supports": ["streaming", "schema"],
                    "context_tokens": 32000}],
        "defaults": {"extract": "fake"},
    }}}
    path = Path(tempfile.mkdtemp()) / "config.json"
    path.write_text(json.dumps(config))
    return build(str(path))


def openai_messages(request) -> list[dict]:
    messages = [{"role": "system", "content": request.system}] if request.system else []
    for m in request.messages:
        messages.append({"role": m.role, "content": "\n".join(p.text for p in m.parts)})
    return messages


_FIRST_ROW = re.compile(r'"source_quote":\s*"(?:[^"\\]|\\.)*"\s*}')


async def raw_first_row(client, request) -> tuple[float, float]:
    """Direct SDK stream: (seconds to the first complete row in the text, seconds to the end)."""
    start = time.perf_counter()
    first = None
    text = ""
    stream = await client.chat.completions.create(
        model="fake-model", messages=openai_messages(request), stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "rows", "schema": request.json_schema}},
        max_tokens=request.max_tokens, temperature=0,
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
            if first is None and _FIRST_ROW.search(text):
                first = time.perf_counter() - start
    return first or float("nan"), time.perf_counter() - start


async def ours_first_row(gateway, job) -> tuple[float, float]:
    start = time.perf_counter()
    first = None
    async for event in run_extraction(gateway, job, actor={"id": "bench"}):
        if first is None and isinstance(event, RowExtracted):
            first = time.perf_counter() - start
    return first or float("nan"), time.perf_counter() - start


class Timers:
    """Wraps the engine's own processing steps to add up the time they take."""

    def __init__(self):
        self.total = 0.0
        self._patched = []

    def wrap(self, owner, name):
        original = getattr(owner, name)
        timers = self

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                timers.total += time.perf_counter() - t

        setattr(owner, name, timed)
        self._patched.append((owner, name, original))

    def install(self):
        from datasette_llm_extract.merge import Deduplicator
        from datasette_llm_extract.streamparse import RowStreamParser

        for owner, name in [(engine_module, "validate_row"), (engine_module, "locate_quote"),
                            (engine_module, "_request_for"), (engine_module, "plan_units"),
                            (engine_module, "_estimate_units"), (RowStreamParser, "feed"),
                            (RowStreamParser, "finish"), (Deduplicator, "check"),
                            (engine_module._Run, "_make_row")]:
            self.wrap(owner, name)

    def uninstall(self):
        for owner, name, original in reversed(self._patched):
            setattr(owner, name, original)


async def main_async(args) -> None:
    import openai

    from datasette_llm_core.gateway import llm_gateway

    with FakeOpenAIServer(ttft=args.ttft, token_delay=args.token_delay, handler=model_handler) as server:
        state = str(Path(tempfile.mkdtemp()) / "state.db")
        ds = build_datasette(server, state)
        gateway = await llm_gateway(ds)
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-bench", max_retries=0)

        # 1. time to first row
        one = clemency_text(5)
        job = ExtractionJob(spec=SPEC, documents=[Document.from_text(one, "five.txt")], model_id="fake")
        request = build_request(SPEC, "", one)
        await ours_first_row(gateway, job)  # warm up connections and the state db
        await raw_first_row(client, request)
        ours, raw = [], []
        for _ in range(args.repeats):
            raw.append(await raw_first_row(client, request))
            ours.append(await ours_first_row(gateway, job))
        ours_first = statistics.median(o[0] for o in ours)
        raw_first = statistics.median(r[0] for r in raw)
        print("1. Time to first row (median of %d)" % args.repeats)
        print(f"   raw SDK stream, first complete row in text: {raw_first * 1000:8.1f} ms")
        print(f"   run_extraction, first RowExtracted event:   {ours_first * 1000:8.1f} ms")
        print(f"   ratio: {ours_first / raw_first:.3f}x (goal <= 1.2x)")

        # 2. 40 chunks, concurrency 8 vs 1
        per_chunk = 5
        text = clemency_text(args.chunks * per_chunk)
        size = len(text) // args.chunks + 200
        while len(chunk_text(text, size, 0)) > args.chunks:
            size += 100
        while len(chunk_text(text, size, 0)) < args.chunks and size > 600:
            size -= 50
        n_chunks = len(chunk_text(text, size, 0))
        doc = Document.from_text(text, "clemency.txt")

        async def timed_run(concurrency, timers=None):
            job = ExtractionJob(spec=SPEC, documents=[doc], model_id="fake", chunk_chars=size, overlap=0,
                                concurrency=concurrency)
            start = time.perf_counter()
            rows = 0
            if timers:
                timers.install()
            try:
                async for event in run_extraction(gateway, job, actor={"id": "bench"}):
                    if isinstance(event, RowExtracted) and event.valid:
                        rows += 1
            finally:
                if timers:
                    timers.uninstall()
            return time.perf_counter() - start, rows

        timers = Timers()
        sequential, rows_seq = await timed_run(1, timers)
        parallel, rows_par = await timed_run(args.concurrency)
        print(f"\n2. {n_chunks}-chunk document ({len(text):,} chars, {rows_seq} rows)")
        print(f"   sequential (concurrency 1): {sequential:7.2f} s")
        print(f"   concurrency {args.concurrency}:              {parallel:7.2f} s ({rows_par} rows)")
        print(f"   speed-up: {sequential / parallel:.2f}x (goal >= 5x)")

        # 3. overhead
        model_time = sequential - timers.total
        print("\n3. Overhead per run (sequential run above)")
        print(f"   engine processing (parse, validate, quotes, dedup, prompts): {timers.total * 1000:.1f} ms")
        print(f"   share of model time: {100 * timers.total / model_time:.2f}% (goal < 5%)")
        # Whole stack vs direct SDK calls, interleaved chunk by chunk so server and machine
        # drift hit both alike: one run_extraction per chunk vs one raw stream of the same chunk.
        sample = chunk_text(text, size, 0)[: args.raw_sample or None]
        raw_total = ours_total = 0.0
        for c in sample:
            raw_total += (await raw_first_row(client, build_request(SPEC, "", c.text)))[1]
            single = ExtractionJob(spec=SPEC, documents=[Document.from_text(c.text, "chunk.txt")], model_id="fake",
                                   chunk_chars=len(c.text) + 1, overlap=0)
            ours_total += (await ours_first_row(gateway, single))[1]
        print(f"   whole stack (engine + gateway + call log) per chunk {1000 * ours_total / len(sample):.1f} ms vs "
              f"direct SDK {1000 * raw_total / len(sample):.1f} ms over {len(sample)} chunks, interleaved: "
              f"{100 * (ours_total - raw_total) / raw_total:+.2f}%")
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--ttft", type=float, default=0.25, help="server time to first token (s)")
    parser.add_argument("--token-delay", type=float, default=0.004, help="server delay per streamed word (s)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--raw-sample", type=int, default=16, help="chunks compared one by one with direct SDK calls (0: all)")
    args = parser.parse_args()
    os.environ.pop("OPENAI_API_KEY", None)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
