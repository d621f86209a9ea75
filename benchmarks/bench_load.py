"""Load: a real Datasette server process under concurrent questions and extraction runs.

    python benchmarks/bench_load.py [--questions 50] [--extractions 10] [--repeats 3]
                                    [--ttft 0.3] [--token-delay 0.01] [--rows 2000] [--write-docs]
    python benchmarks/bench_load.py --scenario public [--visitors 200] [--burst 25] [--write-docs]

Two processes on 127.0.0.1: the scripted OpenAI-compatible server
(tests/fake_openai_server.py) adding realistic latency (time to first token
plus a delay per streamed token) for chat and embeddings, and
``datasette serve`` with the suite configured to use it. Each repetition
fires ``--questions`` question requests (POST ask.json, full cited answer)
and ``--extractions`` extraction runs (POST api/runs, then polled until the
run finishes) all at once, and checks every response: zero errors allowed.

Baselines measured in the same run, before the load:
- the fake model answering the same number of concurrent streamed requests
  directly (no Datasette): question latency / this = the suite's overhead;
- Datasette serving a plain table page at the same concurrency.

Printed: p50/p99 latencies and ratios, errors, and the server's resident
memory (VmRSS) after each repetition (stable = no steady growth).
``--write-docs`` also writes the figures into docs/reliability.md.
Bounded: every request has a timeout and the whole run a deadline.

``--scenario public`` is a newsroom's published copy instead: the database
and its index on a read-only bind mount (an immutable database on a normal
disk where mounting is not allowed), served with ``-i``, ``state_database:
":memory:"``, ``cache_answers`` and spending limits on, and ``--visitors``
signed-out visitors (told apart by X-Forwarded-For, ``trusted_proxies: 1``)
arriving ``--burst`` at a time. Most ask one or two questions, popular ones
repeating across visitors, new ones not; every fifth asks five in a row and
goes over the per-minute limit. Printed: errors (any answer that is neither
an answer, a cached answer nor search results with a limit notice), p50/p99
of each kind against the fake model alone at the burst's concurrency, the
cache hit rate, and the server's memory after each burst.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
IS_V1 = importlib.util.find_spec("datasette.resources") is not None
SECRET = "bench-load-secret"
DOC = (
    "Invoices received this week. Acme Ltd billed 120 dollars for road repairs. "
    "Beta LLC billed 75 dollars for cleaning. Gamma Inc billed 300 dollars for lighting."
)
ROWS_REPLY = json.dumps({"rows": [
    {"name": "Acme Ltd", "amount": 120, "source_quote": "Acme Ltd billed 120 dollars"},
    {"name": "Beta LLC", "amount": 75, "source_quote": "Beta LLC billed 75 dollars"},
    {"name": "Gamma Inc", "amount": 300, "source_quote": "Gamma Inc billed 300 dollars"},
]})
ANSWER_REPLY = "The council raised the road budget by several percent [1], as other reports confirm [2]."
TOPICS = ["road budget", "school lunches", "harbour fees", "library hours", "bridge repairs",
          "police overtime", "park lighting", "bus routes", "water rates", "snow clearing"]


def http_client(**kwargs):
    try:
        import httpx
    except ImportError:  # pragma: no cover - the 1.0 line may only ship httpx2
        import httpx2 as httpx
    return httpx.AsyncClient(**kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def make_db(path: Path, rows: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("create table articles (id integer primary key, title text, body text)")
    conn.execute("create table invoices (id integer primary key, name text, amount integer)")
    conn.executemany(
        "insert into articles values (?, ?, ?)",
        (
            (i, f"{TOPICS[i % len(TOPICS)].title()} update {i}",
             f"Council report {i}: the {TOPICS[i % len(TOPICS)]} changed by {i % 17} percent this year.")
            for i in range(1, rows + 1)
        ),
    )
    conn.commit()
    conn.close()


def sign_actor(actor: dict) -> str:
    from itsdangerous import URLSafeSerializer

    return URLSafeSerializer(SECRET, "actor").dumps({"a": actor})


def write_config(tmp: Path, base_url: str) -> Path:
    plugin = {
        "state_database": str(tmp / "state.db"),
        "models": [{"id": "fake", "provider": "openai-compatible", "model": "fake-model", "base_url": base_url,
                    "supports": ["streaming", "schema"], "timeout": 60}],
        "embedding_models": [{"id": "fake-embed", "provider": "openai-compatible", "model": "fake-embedding",
                              "base_url": base_url, "dimensions": 64}],
        "defaults": {"extract": "fake", "answer": "fake", "embed": "fake-embed"},
        "permissions": {"llm-ask": True, "llm-extract": {"id": "bench"}},
        "rag": {"embedding_model": "fake-embed",
                "databases": {"news": {"tables": {"articles": {"columns": ["title", "body"],
                                                               "title_column": "title"}}}}},
    }
    config: dict = {"plugins": {"datasette-llm-newsroom": plugin}}
    if IS_V1:
        config["permissions"] = {"insert-row": {"id": "bench"}, "create-table": {"id": "bench"}}
    path = tmp / "config.json"
    path.write_text(json.dumps(config))
    return path


def start(cmd: list[str], log: Path, env=None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                            start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


async def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with http_client(timeout=2) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"server exited: {log.read_text()[-2000:]}")
            try:
                if (await client.get(url)).status_code < 500:
                    return
            except Exception:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"server not ready after {timeout}s: {log.read_text()[-2000:]}")


async def timed(coro) -> tuple[float, object]:
    start_t = time.perf_counter()
    result = await coro
    return time.perf_counter() - start_t, result


async def baseline_model(base_url: str, n: int) -> list[float]:
    body = {"model": "fake-model", "stream": True,
            "messages": [{"role": "user", "content": "road budget question"}]}

    async def one(client):
        async with client.stream("POST", f"{base_url}/chat/completions", json=body) as r:
            async for _ in r.aiter_bytes():
                pass
        return r.status_code

    async with http_client(timeout=60) as client:
        results = await asyncio.gather(*(timed(one(client)) for _ in range(n)))
    assert all(code == 200 for _, code in results)
    return [t for t, _ in results]


async def baseline_table(server: str, n: int) -> list[float]:
    async with http_client(timeout=60) as client:
        results = await asyncio.gather(*(timed(client.get(f"{server}/news/articles.json?_size=10"))
                                         for _ in range(n)))
    assert all(r.status_code == 200 for _, r in results)
    return [t for t, _ in results]


async def ask(client, server: str, i: int, errors: list) -> float | None:
    q = f"What happened to the {TOPICS[i % len(TOPICS)]}?"
    t, r = await timed(client.post(f"{server}/-/llm-rag/news/ask.json", json={"q": q}))
    try:
        body = r.json()
        ok = r.status_code == 200 and body.get("ok") and body.get("answer") and body.get("cited")
    except ValueError:
        ok, body = False, r.text[:200]
    if not ok:
        errors.append(f"ask {i}: {r.status_code} {str(body)[:200]}")
        return None
    return t


async def extract(client, server: str, cookie: str, i: int, errors: list, deadline: float) -> float | None:
    cookies = {"ds_actor": cookie}
    start_t = time.perf_counter()
    r = await client.post(f"{server}/-/llm-extract/api/runs", cookies=cookies,
                          json={"database": "news", "table": "invoices", "text": f"{DOC} (batch {i})",
                                "columns": ["name", "amount"]})
    if r.status_code != 201:
        errors.append(f"extract {i}: start {r.status_code} {r.text[:200]}")
        return None
    run_id = r.json()["id"]
    while time.perf_counter() < deadline:
        got = (await client.get(f"{server}/-/llm-extract/api/runs/{run_id}", cookies=cookies)).json()
        if got["status"] not in ("pending", "running"):
            valid = [row for row in got.get("rows", []) if row["valid"]]
            if got["status"] != "done" or len(valid) != 3:
                errors.append(f"extract {i}: {got['status']} {got.get('error')} valid={len(valid)}")
                return None
            return time.perf_counter() - start_t
        await asyncio.sleep(0.1)
    errors.append(f"extract {i}: not finished before the deadline")
    return None


async def repetition(server: str, cookie: str, questions: int, extractions: int, deadline: float):
    errors: list[str] = []
    limits = {"max_connections": questions + extractions + 10}
    try:
        import httpx

        limits_obj = httpx.Limits(**limits)
    except ImportError:  # pragma: no cover
        import httpx2

        limits_obj = httpx2.Limits(**limits)
    async with http_client(timeout=90, limits=limits_obj) as client:
        start_t = time.perf_counter()
        results = await asyncio.gather(
            *(ask(client, server, i, errors) for i in range(questions)),
            *(extract(client, server, cookie, i, errors, deadline) for i in range(extractions)),
        )
        wall = time.perf_counter() - start_t
    asks = [t for t in results[:questions] if t is not None]
    runs = [t for t in results[questions:] if t is not None]
    return asks, runs, errors, wall


def start_fake_model(tmp: Path, log: Path) -> subprocess.Popen:
    """The scripted model server reading ``tmp/script.json``. Its listen backlog
    (http.server's default is 5) must hold the whole burst, or the kernel resets
    connections before the model sees them."""
    launcher = ("import sys; from http.server import ThreadingHTTPServer as S; S.request_queue_size = 512; "
                "from tests.fake_openai_server import main; main(sys.argv[1:])")
    return start([sys.executable, "-c", launcher, "--script", str(tmp / "script.json")], log)


async def fake_model_url(log: Path, timeout: float = 30) -> str:
    """The base URL the scripted model server prints once it listens."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(r"listening on (\S+)", log.read_text() if log.exists() else "")
        if match:
            return match.group(1)
        await asyncio.sleep(0.1)
    raise SystemExit("fake server did not start")


async def main_async(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-load-"))
    make_db(tmp / "news.db", args.rows)
    script = {"rules": [{"match_any": "source_quote", "content": ROWS_REPLY}],
              "default": {"content": ANSWER_REPLY}, "ttft": args.ttft, "token_delay": args.token_delay}
    (tmp / "script.json").write_text(json.dumps(script))
    fake_log, ds_log = tmp / "fake.log", tmp / "datasette.log"
    fake = start_fake_model(tmp, fake_log)
    ds = None
    try:
        base_url = await fake_model_url(fake_log)
        config = write_config(tmp, base_url)
        flag = ["-c", str(config)] if IS_V1 else ["-m", str(config)]
        index_start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "datasette", "llm-rag", "index", str(tmp / "news.db"), *flag],
                       cwd=ROOT, check=True, timeout=300, capture_output=True)
        index_seconds = time.perf_counter() - index_start
        port = free_port()
        ds = start([sys.executable, "-m", "datasette", "serve", str(tmp / "news.db"), *flag,
                    "-h", "127.0.0.1", "-p", str(port), "--secret", SECRET], ds_log)
        server = f"http://127.0.0.1:{port}"
        await wait_ready(f"{server}/-/versions.json", ds, ds_log)
        cookie = sign_actor({"id": "bench"})

        # Warm up (imports, model cache, index load), then baselines.
        warm_errors: list[str] = []
        async with http_client(timeout=60) as client:
            await ask(client, server, 0, warm_errors)
            await extract(client, server, cookie, 0, warm_errors, time.perf_counter() + 60)
        if warm_errors:
            raise SystemExit(f"warm-up failed: {warm_errors}")
        async with http_client(timeout=60) as client:
            alone = [await ask(client, server, i, warm_errors) for i in range(3)]
        if warm_errors:
            raise SystemExit(f"single question failed: {warm_errors}")
        model_base = await baseline_model(base_url, args.questions)
        table_base = await baseline_table(server, args.questions)
        rss = [rss_kb(ds.pid)]

        all_asks: list[float] = []
        all_runs: list[float] = []
        errors: list[str] = []
        walls = []
        for rep in range(args.repeats):
            asks, runs, errs, wall = await repetition(
                server, cookie, args.questions, args.extractions, time.perf_counter() + args.timeout
            )
            all_asks += asks
            all_runs += runs
            errors += errs
            walls.append(wall)
            rss.append(rss_kb(ds.pid))
            print(f"  repetition {rep + 1}: {len(asks)}/{args.questions} answers, {len(runs)}/{args.extractions} "
                  f"runs, {len(errs)} errors, {wall:.2f}s wall, server RSS {rss[-1] / 1024:.1f} MB", flush=True)
        return {
            "line": "1.0" if IS_V1 else "0.65",
            "questions": args.questions, "extractions": args.extractions, "repeats": args.repeats,
            "rows": args.rows, "ttft": args.ttft, "token_delay": args.token_delay,
            "index_seconds": index_seconds,
            "errors": errors,
            "ask_p50": pct(all_asks, 50), "ask_p99": pct(all_asks, 99),
            "run_p50": pct(all_runs, 50), "run_p99": pct(all_runs, 99),
            "model_p50": statistics.median(model_base), "alone_p50": statistics.median(alone), "table_p50": statistics.median(table_base),
            "table_p99": pct(table_base, 99),
            "rss_mb": [r / 1024 for r in rss], "walls": walls,
            "requests": len(all_asks) + len(all_runs),
        }
    finally:
        if ds is not None:
            stop(ds)
        stop(fake)


# ---------------------------------------------------------------- the public deployment
PUBLIC_LIMITS = {"questions_per_minute": 3, "questions_per_hour": 30, "dollars_per_day": 0.05,
                 "instance_dollars_per_day": 50.0, "trusted_proxies": 1}


def write_public_config(tmp: Path, base_url: str) -> Path:
    """What a newsroom publishes: anyone may ask, ':memory:' state, cache and limits on."""
    plugin = {
        "state_database": ":memory:",
        "models": [{"id": "fake", "provider": "openai-compatible", "model": "fake-model",
                    "base_url": base_url, "supports": ["streaming"], "timeout": 60,
                    "input_cost_per_mtok": 0.40, "output_cost_per_mtok": 1.60}],
        "embedding_models": [{"id": "fake-embed", "provider": "openai-compatible",
                              "model": "fake-embedding", "base_url": base_url, "dimensions": 64}],
        "defaults": {"answer": "fake", "embed": "fake-embed"},
        "permissions": {"llm-ask": True},
        "limits": PUBLIC_LIMITS,
        "rag": {"embedding_model": "fake-embed", "cache_answers": True, "sidecar_dir": "llm-rag",
                "databases": {"news": {"tables": {"articles": {"columns": ["title", "body"],
                                                               "title_column": "title"}}}}},
    }
    path = tmp / "config.json"
    path.write_text(json.dumps({"plugins": {"datasette-llm-newsroom": plugin}}))
    return path


def visitor_plan(i: int) -> list[str]:
    """The questions visitor ``i`` asks, one after another: most ask one or two
    (popular questions repeat across visitors; others are new), every fifth
    asks five new ones in a row and goes over the per-minute limit."""
    popular = f"What happened to the {TOPICS[i % len(TOPICS)]}?"
    if i % 5 == 4:
        return [f"What did report {i * 10 + j} say about the {TOPICS[j]}?" for j in range(5)]
    if i % 2 == 0:
        return [popular]
    return [popular, f"Which council report {i} mentions the {TOPICS[(i + 3) % len(TOPICS)]}?"]


async def public_visitor(client, server: str, i: int, out: dict) -> None:
    headers = {"x-forwarded-for": f"198.51.100.{i % 250}, 10.{i // 250}.0.{i % 250}"}
    for q in visitor_plan(i):
        t, r = await timed(client.post(f"{server}/-/llm-rag/news/ask.json", json={"q": q},
                                       headers=headers))
        try:
            body = r.json()
        except ValueError:
            out["errors"].append(f"visitor {i}: {r.status_code} {r.text[:200]}")
            continue
        notice = (body.get("notice") or {}).get("kind")
        if r.status_code != 200 or not body.get("rows"):
            out["errors"].append(f"visitor {i}: {r.status_code} {str(body)[:200]}")
        elif notice == "limit":
            out["limited"].append(t)
        elif body.get("cached") and body.get("answer"):
            out["cached"].append(t)
        elif body.get("answer") and body.get("cited"):
            out["answered"].append(t)
        else:
            out["errors"].append(f"visitor {i}: no answer {str(body)[:200]}")


async def public_async(args) -> dict:
    """200 signed-out visitors in bounded bursts against a read-only published copy."""
    sys.path.insert(0, str(ROOT))
    from tests.publish_helpers import MountUnavailable, read_only_mount

    tmp = Path(tempfile.mkdtemp(prefix="bench-public-"))
    build = tmp / "build"
    build.mkdir()
    make_db(build / "news.db", args.rows)
    script = {"default": {"content": ANSWER_REPLY}, "ttft": args.ttft, "token_delay": args.token_delay}
    (tmp / "script.json").write_text(json.dumps(script))
    fake_log, ds_log = tmp / "fake.log", tmp / "datasette.log"
    fake = start_fake_model(tmp, fake_log)
    ds = None
    mount = None
    try:
        base_url = await fake_model_url(fake_log)
        config = write_public_config(tmp, base_url)
        flag = ["-c", str(config)] if IS_V1 else ["-m", str(config)]
        subprocess.run([sys.executable, "-m", "datasette", "llm-rag", "index", "news.db", *flag],
                       cwd=build, check=True, timeout=300, capture_output=True)
        serve_dir, where = build, "immutable database on a writable disk (no read-only mount here)"
        try:
            mount = read_only_mount(build, tmp / "ro")
            serve_dir = mount.__enter__()
            where = "read-only bind mount, immutable database"
        except MountUnavailable as e:
            mount = None
            where += f": {e}"
        port = free_port()
        ds = subprocess.Popen(
            [sys.executable, "-m", "datasette", "serve", "-i", "news.db", *flag, "-h", "127.0.0.1",
             "-p", str(port), "--secret", SECRET],
            stdout=open(ds_log, "w"), stderr=subprocess.STDOUT, cwd=serve_dir,
            env={**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")},
            start_new_session=True)
        server = f"http://127.0.0.1:{port}"
        await wait_ready(f"{server}/-/versions.json", ds, ds_log)
        # warm up (imports, index load) with a visitor address the bursts never use
        async with http_client(timeout=60) as client:
            r = await client.post(f"{server}/-/llm-rag/news/ask.json", json={"q": "warm up"},
                                  headers={"x-forwarded-for": "192.0.2.1"})
            if r.status_code != 200:
                raise SystemExit(f"warm-up failed: {r.status_code} {r.text[:300]}")
        model_base = await baseline_model(base_url, args.burst)
        out: dict = {"answered": [], "cached": [], "limited": [], "errors": []}
        rss = [rss_kb(ds.pid)]
        walls = []
        limits_obj = {"max_connections": args.burst + 10}
        try:
            import httpx

            limits_obj = httpx.Limits(**limits_obj)
        except ImportError:  # pragma: no cover
            import httpx2

            limits_obj = httpx2.Limits(**limits_obj)
        async with http_client(timeout=90, limits=limits_obj) as client:
            for first in range(0, args.visitors, args.burst):
                start_t = time.perf_counter()
                await asyncio.wait_for(asyncio.gather(*(
                    public_visitor(client, server, i, out)
                    for i in range(first, min(args.visitors, first + args.burst)))), args.timeout)
                walls.append(time.perf_counter() - start_t)
                rss.append(rss_kb(ds.pid))
                print(f"  visitors {first + 1}-{min(args.visitors, first + args.burst)}: "
                      f"{walls[-1]:.1f}s, server RSS {rss[-1] / 1024:.1f} MB", flush=True)
        async with http_client(timeout=30) as client:
            cookie = {"ds_actor": sign_actor({"id": "root"})}
            usage = (await client.get(f"{server}/-/llm-rag/limits.json", cookies=cookie)).json()
            # after the load, alone: a popular question (cached by now) and a new one
            alone = {}
            for kind, q in (("cached", f"What happened to the {TOPICS[0]}?"),
                            ("model", "What did the quiet council report say about parks?")):
                t, r = await timed(client.post(f"{server}/-/llm-rag/news/ask.json", json={"q": q},
                                               headers={"x-forwarded-for": "192.0.2.2"}))
                body = r.json()
                if r.status_code != 200 or bool(body.get("cached")) != (kind == "cached"):
                    out["errors"].append(f"alone {kind}: {r.status_code} {str(body)[:200]}")
                alone[kind] = t
        model_answers = len(out["answered"])
        return {
            "line": "1.0" if IS_V1 else "0.65", "where": where, "visitors": args.visitors,
            "burst": args.burst, "rows": args.rows, "ttft": args.ttft, "token_delay": args.token_delay,
            "requests": sum(len(v) for v in out.values()),
            "errors": out["errors"], "answered": out["answered"], "cached": out["cached"],
            "limited": out["limited"], "model_p50": statistics.median(model_base),
            "model_p99": pct(model_base, 99),
            "hit_rate": len(out["cached"]) / max(1, len(out["cached"]) + model_answers),
            "rss_mb": [r / 1024 for r in rss], "walls": walls,
            "spent": usage.get("instance_dollars_day"), "alone": alone,
        }
    finally:
        if ds is not None:
            stop(ds)
        if mount is not None:
            mount.__exit__(None, None, None)
        stop(fake)


def public_report(r: dict) -> str:
    def p(values, q):
        return f"{pct(values, q):.2f}s" if values else "-"

    rss = r["rss_mb"]
    return "\n".join([
        f"Datasette {r['line']}, public deployment: {r['visitors']} signed-out visitors in bursts of "
        f"{r['burst']} ({r['where']}; state_database ':memory:'; cache_answers on; limits "
        f"{PUBLIC_LIMITS['questions_per_minute']} questions/minute per visitor; {r['rows']} indexed rows; "
        f"fake model time-to-first-token {r['ttft']}s, {r['token_delay'] * 1000:.0f} ms/token)",
        f"- errors: {len(r['errors'])} of {r['requests']} requests",
        f"- written by the model: {len(r['answered'])}, p50 {p(r['answered'], 50)}, p99 "
        f"{p(r['answered'], 99)}; the model alone at the burst's concurrency: p50 "
        f"{r['model_p50']:.2f}s, p99 {r['model_p99']:.2f}s (ratio "
        f"{pct(r['answered'], 50) / r['model_p50']:.2f}x at p50)",
        f"- served from the cache: {len(r['cached'])}, p50 {p(r['cached'], 50)}, p99 "
        f"{p(r['cached'], 99)}; cache hit rate {r['hit_rate'] * 100:.0f}% of answers",
        f"- one question alone after the load: from the cache {r['alone']['cached']:.2f}s, "
        f"written by the model {r['alone']['model']:.2f}s",
        f"- over a limit (search results and a notice, no model call): {len(r['limited'])}, p50 "
        f"{p(r['limited'], 50)}, p99 {p(r['limited'], 99)}",
        f"- estimated spend recorded: ${r['spent'] or 0:.4f}",
        f"- server RSS: {' -> '.join(f'{m:.0f}' for m in rss)} MB (before, then after each burst)",
        f"- wall time per burst: {', '.join(f'{w:.1f}s' for w in r['walls'])}",
    ])


def report(r: dict) -> str:
    rss = r["rss_mb"]
    growth = (rss[-1] - rss[1]) / rss[1] * 100 if len(rss) > 2 else 0.0
    lines = [
        f"Datasette {r['line']}: {r['repeats']} repetitions of {r['questions']} concurrent questions + "
        f"{r['extractions']} concurrent extraction runs ({r['rows']} indexed rows; fake model "
        f"time-to-first-token {r['ttft']}s, {r['token_delay'] * 1000:.0f} ms/token)",
        f"- errors: {len(r['errors'])} of {r['requests'] + len(r['errors'])} requests",
        f"- question (full cited answer): p50 {r['ask_p50']:.2f}s, p99 {r['ask_p99']:.2f}s; "
        f"the model alone at the same concurrency: p50 {r['model_p50']:.2f}s "
        f"(ratio {r['ask_p50'] / r['model_p50']:.2f}x); one question alone, no load: {r['alone_p50']:.2f}s",
        f"- extraction run (start to finished, 3 rows): p50 {r['run_p50']:.2f}s, p99 {r['run_p99']:.2f}s",
        f"- plain table page at the same concurrency, before the load: p50 {r['table_p50'] * 1000:.0f} ms, "
        f"p99 {r['table_p99'] * 1000:.0f} ms",
        f"- server RSS: {' -> '.join(f'{m:.0f}' for m in rss)} MB (before load, then after each repetition; "
        f"growth after the first repetition {growth:+.1f}%)",
        f"- wall time per repetition: {', '.join(f'{w:.1f}s' for w in r['walls'])}; index build {r['index_seconds']:.1f}s",
    ]
    return "\n".join(lines)


def write_docs(text: str, line: str) -> None:
    path = ROOT / "docs" / "reliability.md"
    start_marker, end_marker = f"<!-- bench_load {line} start -->", f"<!-- bench_load {line} end -->"
    block = f"{start_marker}\n{text}\n{end_marker}"
    content = path.read_text(encoding="utf-8") if path.exists() else "# Reliability\n"
    if start_marker in content and end_marker in content:
        before = content.split(start_marker)[0]
        after = content.split(end_marker, 1)[1]
        content = before + block + after
    else:
        content = content.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(content, encoding="utf-8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=50)
    parser.add_argument("--extractions", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--ttft", type=float, default=0.3)
    parser.add_argument("--token-delay", type=float, default=0.01)
    parser.add_argument("--timeout", type=float, default=120, help="seconds allowed per repetition")
    parser.add_argument("--write-docs", action="store_true", help="write the figures into docs/reliability.md")
    parser.add_argument("--scenario", choices=["newsroom", "public"], default="newsroom",
                        help="public: signed-out visitors of a read-only published copy")
    parser.add_argument("--visitors", type=int, default=200, help="public: visitors in all")
    parser.add_argument("--burst", type=int, default=25, help="public: visitors at once")
    args = parser.parse_args(argv)
    if args.scenario == "public":
        result = asyncio.run(public_async(args))
        text = public_report(result)
        print(text)
        for error in result["errors"][:10]:
            print("  error:", error)
        if args.write_docs:
            write_docs(text, "public " + result["line"])
        return 1 if result["errors"] else 0
    result = asyncio.run(main_async(args))
    text = report(result)
    print(text)
    for error in result["errors"][:10]:
        print("  error:", error)
    if args.write_docs:
        write_docs(text, result["line"])
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
