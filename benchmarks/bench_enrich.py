"""Enrich existing rows at size: throughput against the model's own concurrency limit,
memory, time to the first reviewable row, and what a kill -9 midway costs.

    python benchmarks/bench_enrich.py [--rows 2000] [--slots 16] [--ttft 0.5]

Rows: SciFact abstracts (../shared/data/scifact-dev/corpus.jsonl, 5,183 real
scientific abstracts) in a table ``abstracts(id, title, text)``; generated
abstracts of the same shape when the shared data is absent. The model is
tests/fake_openai_server.py as a real HTTP server that serves at most
``--slots`` requests at once (the others wait in its queue, as llama-server's
slots or a provider's concurrency limit do) and answers each after ``--ttft``
seconds with the row's study design, number of subjects and a verbatim quote.
The suite runs as a real ``datasette serve`` process; the model is configured
with ``concurrency: --slots``.

Printed (ratios against a baseline measured in the same run):

1. throughput: rows per second of a job written directly, against the model's
   own limit measured here (``--slots`` threads sending the same requests
   straight to the server, back to back). Goal >= 90%.
2. peak memory (VmHWM) of the server process during that job.
3. time to the first reviewable row: a review-first job (sample of 20) from
   the POST until its first row is stored, and until the sample is ready.
4. a kill -9 of the server midway through a second job, a restart, and the
   job resumed by the restarted server: rows answered twice (stored before
   the kill and sent again after it), rows lost (selected but not written at
   the end), and rows that were in flight at the kill (sent again: their
   answers had not arrived). Goal 0 / 0.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.fake_openai_server import FakeOpenAIServer, Reply, last_user_text  # noqa: E402
from tests.test_crash_recovery import Server  # noqa: E402

#: ../shared beside the checkout, or SHARED_DIR (a worktree elsewhere)
SHARED = Path(os.environ.get("SHARED_DIR") or HERE.parent.parent / "shared")
SCIFACT = SHARED / "data" / "scifact-dev" / "corpus.jsonl"
COLUMNS = [
    {"name": "design", "type": "choice", "choices": ["trial", "cohort", "case-control", "review", "lab", "other"],
     "description": "study design"},
    {"name": "subjects", "type": "integer", "description": "number of people studied, if given"},
    {"name": "finding", "type": "text", "description": "the main finding in a few words"},
]
SUBJECTS = re.compile(r"\b(\d{2,6}) (?:patients|participants|subjects|children|women|men|adults|infants)\b")


def load_rows(n: int) -> tuple[list[tuple], str]:
    if SCIFACT.exists():
        rows = []
        with SCIFACT.open(encoding="utf-8") as f:
            for line in f:
                doc = json.loads(line)
                if len(doc.get("text") or "") > 200:
                    rows.append((int(doc["_id"]), doc["title"], doc["text"]))
                if len(rows) == n:
                    break
        return rows, f"SciFact abstracts ({SCIFACT})"
    rows = [(i, f"Study {i}", f"In a randomised trial of {100 + i} patients, drug {i} lowered blood pressure. "
             "Further analysis showed consistent effects across subgroups and no serious adverse events. " * 2)
            for i in range(1, n + 1)]
    return rows, "generated abstracts (shared SciFact data absent)"


def make_db(path: Path, rows: list[tuple]) -> None:
    conn = sqlite3.connect(path)
    conn.execute("create table abstracts (id integer primary key, title text, text text)")
    conn.executemany("insert into abstracts values (?, ?, ?)", rows)
    conn.commit()
    conn.close()


def model_answer(request: dict) -> Reply:
    text = last_user_text(request)
    body = text.split("[text]\n", 1)[-1].split("\n</document>", 1)[0]
    lower = body.lower()
    design = ("trial" if "random" in lower or "trial" in lower else "cohort" if "cohort" in lower
              else "case-control" if "case-control" in lower else "review" if "review" in lower
              else "lab" if "mice" in lower or "cells" in lower else "other")
    m = SUBJECTS.search(body)
    quote = body[:160].rsplit(" ", 1)[0]
    return Reply(content=json.dumps({"rows": [{"design": design, "subjects": int(m.group(1)) if m else None,
                                               "finding": body[:60].rsplit(" ", 1)[0], "source_quote": quote}]}))


def baseline(fake: FakeOpenAIServer, slots: int, requests: int) -> float:
    """Requests per second the model server itself sustains with ``slots`` clients back to back."""
    body = json.dumps({"model": "fake-model", "messages": [
        {"role": "user", "content": "[text]\nIn a randomised trial of 120 patients the drug worked.\n</document>"}]})
    count = [0]
    lock = threading.Lock()

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=60)
        while True:
            with lock:
                if count[0] >= requests:
                    return
                count[0] += 1
            conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json",
                                                                  "authorization": "Bearer x"})
            conn.getresponse().read()

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(slots)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return requests / (time.monotonic() - started)


def vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def start_job(server: Server, database: str = "bench", **extra) -> str:
    body = {"database": database, "table": "abstracts", "source_columns": ["title", "text"], "columns": COLUMNS,
            "instructions": "Classify the study.", **extra}
    status, data = server.request("POST", "/-/llm-extract/enrich/api/jobs", body)
    assert status == 201, data
    return data["id"]


def wait_job(server: Server, job_id: str, predicate, timeout: float = 3600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, job = server.request("GET", f"/-/llm-extract/enrich/jobs/{job_id}.json")
        if status == 200 and predicate(job):
            return job
        time.sleep(0.1)
    raise TimeoutError(job_id)


def configure(server: Server, slots: int) -> None:
    config = json.loads(server.config.read_text())
    plugin = config["plugins"]["datasette-llm-newsroom"]
    plugin["models"][0].update(concurrency=slots, timeout=120, input_cost_per_mtok=0.4, output_cost_per_mtok=1.6)
    plugin["lease_seconds"] = 3
    server.config.write_text(json.dumps(config))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--slots", type=int, default=16, help="the model's concurrency limit")
    parser.add_argument("--ttft", type=float, default=0.5, help="seconds the model takes per answer")
    args = parser.parse_args(argv)
    rows, source = load_rows(args.rows)
    print(f"rows: {len(rows)} {source}; model: {args.slots} slots, {args.ttft:.2f} s per answer; "
          f"load average at start {os.getloadavg()[0]:.2f}")
    work = Path(tempfile.mkdtemp(prefix="bench-enrich-"))
    make_db(work / "bench.db", rows)
    shutil.copy(work / "bench.db", work / "bench-kill.db")
    first_text = {r[2][:100]: r[0] for r in rows}

    with FakeOpenAIServer(handler=model_answer, ttft=args.ttft, slots=args.slots) as fake:
        base_rps = baseline(fake, args.slots, max(args.slots * 10, 160))
        ideal = args.slots / args.ttft
        print(f"1. model's own limit (baseline, {args.slots} clients straight to the server): {base_rps:.1f} "
              f"requests/s (ideal {ideal:.1f})")
        fake.reset()
        fake.max_in_flight = 0
        server = Server(work, work / "bench.db", fake.base_url)
        configure(server, args.slots)
        server.start()
        try:
            t0 = time.monotonic()
            job_id = start_job(server, sample_size=0, write_mode="direct")
            job = wait_job(server, job_id, lambda j: j["status"] not in ("pending", "running"))
            elapsed = time.monotonic() - t0
            rss = vm_hwm_mb(server.proc.pid)
            rps = job["rows_done"] / elapsed
            print(f"   enrichment job: {job['rows_done']} rows ({job['rows_failed']} failed, {job['rows_written']} "
                  f"written) in {elapsed:.1f} s = {rps:.1f} rows/s = {rps / base_rps:.0%} of the model's limit "
                  f"(goal >= 90%); most requests in flight at the server: {fake.max_in_flight}; "
                  f"estimated cost ${job['cost']:.4f}")
            print(f"2. peak memory of the server process (VmHWM): {rss:.0f} MB" if rss else
                  "2. peak memory: /proc not available")
            t0 = time.time()
            sample_id = start_job(server, sample_size=20, write_mode="review", row_limit=len(rows),
                                  columns=[{**c, "name": c["name"] + "_2"} for c in COLUMNS])
            job = wait_job(server, sample_id, lambda j: j["status"] == "review")
            ready = time.time() - t0
            print(f"3. review-first job: first reviewable row after {job['first_result_at'] - t0:.2f} s, "
                  f"sample of 20 ready for review after {ready:.2f} s")
        finally:
            server.stop()

        fake.reset()
        killed = Server(work, work / "bench-kill.db", fake.base_url)
        configure(killed, args.slots)
        killed.config.write_text(killed.config.read_text().replace(str(work / "state.db"),
                                                                   str(work / "state-kill.db")))
        killed.db = work / "bench-kill.db"
        killed.start()
        try:
            t0 = time.monotonic()
            job_id = start_job(killed, "bench-kill", sample_size=0, write_mode="direct")
            wait_job(killed, job_id, lambda j: j["rows_done"] >= len(rows) // 2)
            killed.kill()
            kill_at = time.monotonic() - t0
            state = sqlite3.connect(work / "state-kill.db")
            answered = {r[0] for r in state.execute(
                "select row_id from llm_enrich_items where job_id = ? and status != 'pending'", [job_id])}
            state.close()
            before = len(fake.chat_requests())
            asked_before = [first_text.get(_row_text(r)) for r in fake.chat_requests()]
            killed.start()
            job = wait_job(killed, job_id, lambda j: j["status"] not in ("pending", "running"))
            total = time.monotonic() - t0
        finally:
            killed.stop()
        after = [first_text.get(_row_text(r)) for r in fake.chat_requests()[before:]]
        twice = len(answered & set(after))
        in_flight = len(set(asked_before) - answered - {None})
        conn = sqlite3.connect(work / "bench-kill.db")
        lost = conn.execute("select count(*) from abstracts where design is null").fetchone()[0]
        conn.close()
        print(f"4. kill -9 after {kill_at:.1f} s ({len(answered)} rows answered): job {job['status']} after "
              f"{total:.1f} s in all; rows answered twice: {twice}, rows lost: {lost} (goal 0 / 0); "
              f"{in_flight} rows were in flight at the kill and were sent again")
    print(f"load average at end {os.getloadavg()[0]:.2f}; work dir {work}")
    shutil.rmtree(work, ignore_errors=True)


def _row_text(request: dict) -> str:
    text = last_user_text(request)
    return text.split("[text]\n", 1)[-1][:100]


if __name__ == "__main__":
    main()
