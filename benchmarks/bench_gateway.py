"""What the gateway costs per call: call-log write, budget, retries bookkeeping.

    python benchmarks/bench_gateway.py [--calls 300] [--concurrency 16] [--model-ms 0] [--wal]

A scripted in-process model answers instantly (or after --model-ms), so the
numbers are the gateway's own overhead. Baseline: the same model called
directly. The state database is a file in a temporary directory (as in
production). Printed: per-call overhead in ms, ratio gateway/direct, and
concurrent throughput (calls/s) through the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import datasette.app  # noqa: E402,F401  (load plugins first)
from datasette.app import Datasette  # noqa: E402
from datasette.plugins import pm  # noqa: E402

from datasette_llm_core.gateway import Budget, llm_gateway  # noqa: E402
from datasette_llm_core.types import ChatRequest, Message, TextDelta  # noqa: E402
from tests.fakes import FakeModelsPlugin, Scripted, ScriptedChatModel  # noqa: E402

ANSWER = '{"rows": [{"name": "Ada Lovelace", "party": "D"}]}'


async def main(args) -> None:
    model = ScriptedChatModel("bench")
    model.responder = lambda request: Scripted(text=ANSWER, chunks=8, delay=args.model_ms / 8000)
    pm.register(FakeModelsPlugin(chat=[model]), name="bench-models")
    with tempfile.TemporaryDirectory() as tmp:
        ds = Datasette(
            memory=True,
            metadata={"plugins": {"datasette-llm-newsroom": {"state_database": str(Path(tmp) / "s.db")}}},
        )
        await ds.invoke_startup()
        if args.wal:
            def wal(conn):
                conn.execute("pragma journal_mode=wal")
                conn.execute("pragma synchronous=normal")

            db = ds.databases["llm_newsroom"]
            try:  # Datasette 1.0 wraps writes in a transaction unless told not to
                await db.execute_write_fn(wal, block=True, transaction=False)
            except TypeError:
                await db.execute_write_fn(wal, block=True)
        gw = await llm_gateway(ds)
        request = ChatRequest(messages=[Message.user("Senator Ada Lovelace (D) " * 20)])

        async def direct():
            async for _ in model.stream(request):
                pass

        async def through_gateway(budget=None):
            async for event in gw.stream(request, purpose="extract", prompt_version="bench",
                                         actor={"id": "bench"}, ref="bench", budget=budget):
                if isinstance(event, TextDelta):
                    pass

        for fn in (direct, through_gateway):  # warm up
            await fn()

        start = time.perf_counter()
        for _ in range(args.calls):
            await direct()
        direct_s = time.perf_counter() - start

        start = time.perf_counter()
        budget = Budget(max_tokens=10**12)
        for _ in range(args.calls):
            await through_gateway(budget)
        gateway_s = time.perf_counter() - start

        sem = asyncio.Semaphore(args.concurrency)

        async def one():
            async with sem:
                await through_gateway()

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(args.calls)))
        concurrent_s = time.perf_counter() - start

        rows = (await ds.databases["llm_newsroom"].execute("select count(*) from llm_calls")).first()[0]

    per_direct = direct_s / args.calls * 1000
    per_gateway = gateway_s / args.calls * 1000
    print(f"calls: {args.calls}, model time per call: {args.model_ms} ms, log rows written: {rows}")
    print(f"direct model stream:   {per_direct:.3f} ms/call")
    print(f"through the gateway:   {per_gateway:.3f} ms/call "
          f"(overhead {per_gateway - per_direct:.3f} ms/call, ratio {per_gateway / per_direct:.2f}x)")
    print(f"gateway, concurrency {args.concurrency}: {args.calls / concurrent_s:.0f} calls/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--model-ms", type=float, default=0.0)
    parser.add_argument("--wal", action="store_true",
                        help="put the state database in WAL mode with synchronous=NORMAL first")
    asyncio.run(main(parser.parse_args()))
