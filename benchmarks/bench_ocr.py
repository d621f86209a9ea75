"""Local OCR on real receipt scans, then extraction from its text end to end.

    python benchmarks/bench_ocr.py [--limit 40] [--skip-evaluate]

Data: ``../shared/data/receipts`` (ICDAR 2019 SROIE: 40 JPEG scans with the
data set's own OCR text and gold company, date, address and total); the
benchmark skips cleanly when it is absent.

1. OCR every scan with the suite's engine (``datasette_llm_extract.ocr``:
   RapidOCR, PP-OCRv4 ONNX models, CPU) and report
   - character error rate (CER) against the gold OCR text: edit distance /
     gold length, on whitespace-collapsed text, and once more without spaces
     (PP-OCRv4 often drops the spaces between words);
   - the share of gold company, date and total values found verbatim in the
     OCR text (and found when case and spaces are ignored), next to the same share in
     the gold OCR text itself: the baseline measured in the same run;
   - seconds per page (median, mean, p90) on this machine, engine load apart.
   Goals (issue #15): totals and dates found in >= 90% of receipts; <= 3 s a page.
2. Run the real ``datasette llm-extract evaluate GOLD --ocr`` command on the
   same scans with a scripted OpenAI-compatible model (tests/fake_openai_server.py)
   that copies what it is shown: for each field, the gold value if it appears
   verbatim in the text it was sent, else nothing. Its scores are then the share
   of fields the OCR text lets a model copy, proving scan -> OCR -> text model ->
   validated rows -> scores works end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("RECEIPTS_DIR", ROOT.parent / "shared" / "data" / "receipts"))
if not DATA.exists():
    DATA = Path("/work/shared/data/receipts")
FIELDS = ("company", "date", "total")


def load(limit: int | None) -> list[dict]:
    gold = DATA / "receipts_text_gold.jsonl"
    out = []
    with gold.open(encoding="utf-8") as f:
        for line in f:
            item = json.loads(line)
            image = DATA / "img" / Path(item.get("image") or "").name
            if item.get("image") and image.is_file():
                out.append({**item, "path": image})
            if limit and len(out) >= limit:
                break
    return out


def collapse(text: str) -> str:
    return re.sub(r"\s+", " ", text or "").strip()


def nospace(text: str) -> str:
    return re.sub(r"\s+", "", text or "")


def edit_distance(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def found(value: str, text: str) -> tuple[bool, bool]:
    """(verbatim, verbatim ignoring case and spaces)"""
    value = collapse(str(value))
    return value in collapse(text), nospace(value).casefold() in nospace(text).casefold()


def ocr_all(items: list[dict]) -> dict:
    from datasette_llm_extract import ocr

    started = time.perf_counter()
    ocr.engine()
    load_seconds = time.perf_counter() - started
    seconds, cpu, cer, cer_nospace, misses = [], [], [], [], []
    hits = {f: [0, 0, 0] for f in FIELDS}  # in OCR text, the same ignoring case and spaces, in gold OCR text
    for item in items:
        t, c = time.perf_counter(), time.process_time()
        _, text = ocr.ocr_image(item["path"].read_bytes())
        seconds.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        gold_text = item["ocr_text"]
        cer.append(edit_distance(collapse(text), collapse(gold_text)) / max(1, len(collapse(gold_text))))
        cer_nospace.append(edit_distance(nospace(text), nospace(gold_text)) / max(1, len(nospace(gold_text))))
        for f in FIELDS:
            exact, spaceless = found(item["gold"][f], text)
            if not exact and f != "company":
                misses.append(f"{item['id']} {f} {item['gold'][f]!r}: OCR lines "
                              + repr([ln for ln in text.splitlines() if any(ch.isdigit() for ch in ln)][:6]))
            hits[f][0] += exact
            hits[f][1] += spaceless
            hits[f][2] += found(item["gold"][f], gold_text)[0]
        print(f"  {item['id']}: {seconds[-1]:.2f} s, CER {cer[-1]:.3f}", flush=True)
    return {"n": len(items), "load_seconds": load_seconds, "seconds": seconds, "cpu": cpu, "cer": cer,
            "misses": misses,
            "cer_nospace": cer_nospace, "hits": hits}


def copy_handler(gold_by_name: dict):
    """The scripted model: copies each gold value that appears verbatim in the document shown."""
    def handler(request):
        text = "\n".join(m["content"] if isinstance(m.get("content"), str) else
                         " ".join(p.get("text", "") for p in m["content"] if isinstance(p, dict))
                         for m in request.get("messages", []))
        name = re.search(r"Document to extract from \(([^)]+)\)", text)
        gold = gold_by_name.get(name.group(1)) if name else None
        if gold is None:
            return json.dumps({"rows": []})
        body = text.split("<document>")[-1].split("</document>")[0]
        row = {f: (gold[f] if found(gold[f], body)[0] else None) for f in FIELDS}
        row["address"] = None
        quote = next((ln for ln in body.splitlines() if row["total"] and str(row["total"]) in ln), None)
        row["source_quote"] = quote or body.strip().splitlines()[0] if body.strip() else None
        return json.dumps({"rows": [row]})
    return handler


def run_evaluate(items: list[dict]) -> dict:
    from tests.fake_openai_server import FakeOpenAIServer

    gold_by_name = {**{item["path"].name: item["gold"] for item in items},
                    **{item["id"]: item["gold"] for item in items}}  # scans, and gold texts named by id
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAIServer(api_key="bench-key", models=["copy"]) as server:
        server.handler = copy_handler(gold_by_name)
        gold = Path(tmp) / "gold.jsonl"
        img = Path(tmp) / "img"
        img.mkdir()
        with gold.open("w", encoding="utf-8") as f:
            for item in items:
                (img / item["path"].name).symlink_to(item["path"])
                f.write(json.dumps({"id": item["id"], "image": f"img/{item['path'].name}",
                                    "text": item["ocr_text"], "gold": item["gold"]}) + "\n")
        config = Path(tmp) / "metadata.yml"
        config.write_text(json.dumps({"plugins": {"datasette-llm-newsroom": {
            "state_database": str(Path(tmp) / "state.db"), "auto_models": False,
            "models": [{"id": "copy", "provider": "openai-compatible", "model": "copy",
                        "base_url": server.base_url, "api_key_env": "BENCH_KEY",
                        "supports": ["streaming", "schema"]}],  # a text model: no images
            "defaults": {"extract": "copy"}}}}), encoding="utf-8")
        env = {**os.environ, "BENCH_KEY": "bench-key", "PYTHONPATH": str(ROOT), "NO_PROXY": "127.0.0.1"}
        exe = Path(sys.executable).with_name("datasette")
        results = {}
        for label, extra in (("gold OCR text (baseline)", []), ("local OCR of the scans", ["--ocr"])):
            t = time.perf_counter()
            done = subprocess.run([str(exe), "llm-extract", "evaluate", str(gold), "-c", str(config),
                                   "--date-order", "dmy", "--json", "--concurrency", "2", *extra],
                                  capture_output=True, text=True, env=env, timeout=3600)
            if done.returncode != 0:
                raise SystemExit(f"evaluate failed:\n{done.stdout}\n{done.stderr}")
            results[label] = {"report": json.loads(done.stdout[done.stdout.index("{"):]),
                              "seconds": time.perf_counter() - t}
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--skip-evaluate", action="store_true")
    parser.add_argument("--evaluate-only", action="store_true", help="skip the OCR measurements (step 1)")
    args = parser.parse_args()
    if not (DATA / "receipts_text_gold.jsonl").exists():
        print(f"skipped: {DATA} is not here (the shared receipts data set)")
        return
    items = load(args.limit)
    print(f"{len(items)} receipt scans from {DATA}; CPU count {os.cpu_count()}")
    if not args.evaluate_only:
        report_ocr(items)
    if args.skip_evaluate:
        return
    print("\ndatasette llm-extract evaluate, scripted model copying what it is shown:")
    for label, result in run_evaluate(items).items():
        report = result["report"]
        fields = report["fields"]
        scores = ", ".join(f"{f} F1 {fields[f]['f1']:.3f}" for f in FIELDS if f in fields)
        failed = report.get("failed_documents") or []
        print(f"  {label}: {scores}; {result['seconds']:.1f} s for {len(items)} receipts"
              + (f"; documents that failed: {', '.join(failed)}" if failed else ""))


def report_ocr(items: list[dict]) -> None:
    r = ocr_all(items)
    n = r["n"]
    s = sorted(r["seconds"])
    print("\nOCR (rapidocr-onnxruntime 1.4.4, PP-OCRv4, onnxruntime CPU)")
    print(f"  engine load: {r['load_seconds']:.2f} s (once per process)")
    print(f"  seconds per page: median {statistics.median(s):.2f}, mean {statistics.mean(s):.2f}, "
          f"p90 {s[int(0.9 * (len(s) - 1))]:.2f}, max {s[-1]:.2f}  (goal <= 3 s)")
    print(f"  CPU seconds per page (all threads): median {statistics.median(r['cpu']):.2f}, "
          f"mean {statistics.mean(r['cpu']):.2f}; load average while running: {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    print(f"  CER vs gold OCR text: mean {statistics.mean(r['cer']):.3f}, median {statistics.median(r['cer']):.3f}; "
          f"ignoring spaces: mean {statistics.mean(r['cer_nospace']):.3f}, "
          f"median {statistics.median(r['cer_nospace']):.3f}")
    print("  gold value found verbatim   in local OCR text | ignoring case+spaces | in the gold OCR text (baseline)")
    for f in FIELDS:
        ocr_hits, spaceless, baseline = r["hits"][f]
        goal = "  (goal >= 90%)" if f in ("date", "total") else ""
        print(f"    {f:8s} {ocr_hits:3d}/{n} {ocr_hits / n:6.1%} | {spaceless:3d}/{n} {spaceless / n:6.1%} | "
              f"{baseline:3d}/{n} {baseline / n:6.1%}  ratio to baseline {ocr_hits / max(1, baseline):.2f}{goal}")
    for miss in r["misses"]:
        print("  not found verbatim:", miss)


if __name__ == "__main__":
    main()
