"""Local OCR on real receipt scans, then extraction from its text end to end.

    python benchmarks/bench_ocr.py [--limit 40] [--skip-evaluate] [--no-baseline]
        [--detect-max-side 960] [--detect-unclip 1.8] [--recognize-batch 3] [--threads 0]

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
   - seconds per page on the wall clock (min, median, mean, p90, max) and CPU
     seconds per page (all threads), engine load apart, with the load average
     at start and end: the machine is shared, so the wall clock follows its load;
   - all of it for the product's engine settings (or those given with
     --detect-max-side/--detect-unclip/--recognize-batch/--threads) and, as a baseline measured in
     the same run on the same pages, interleaved page by page, the settings used
     before they were tuned (``ocr.PREVIOUS_SETTINGS``), with the ratios between them.
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


def measure(item: dict, settings) -> dict:
    """OCR one scan with one engine setup: seconds (wall, CPU), CER and the gold values found."""
    from datasette_llm_extract import ocr

    t, c = time.perf_counter(), time.process_time()
    _, text = ocr.ocr_image(item["path"].read_bytes(), 0, settings)
    out = {"seconds": time.perf_counter() - t, "cpu": time.process_time() - c, "misses": []}
    gold_text = item["ocr_text"]
    out["cer"] = edit_distance(collapse(text), collapse(gold_text)) / max(1, len(collapse(gold_text)))
    out["cer_nospace"] = edit_distance(nospace(text), nospace(gold_text)) / max(1, len(nospace(gold_text)))
    for f in FIELDS:
        exact, spaceless = found(item["gold"][f], text)
        out[f] = (exact, spaceless, found(item["gold"][f], gold_text)[0])
        if not exact and f != "company":
            out["misses"].append(f"{item['id']} {f} {item['gold'][f]!r}: OCR lines "
                                 + repr([ln for ln in text.splitlines() if any(ch.isdigit() for ch in ln)][:6]))
    return out


def ocr_all(items: list[dict], setups: dict) -> dict:
    """OCR every scan with every engine setup, interleaved page by page.

    Both setups see the same load: for each page they run one after the other, in
    alternating order, so a busy moment of the shared machine falls on both.
    """
    from datasette_llm_extract import ocr

    results = {}
    for label, settings in setups.items():
        started = time.perf_counter()
        ocr.engine(settings)
        results[label] = {"settings": settings, "load_seconds": time.perf_counter() - started, "pages": []}
        ocr.ocr_image(items[0]["path"].read_bytes(), 0, settings)  # the first call sets up memory: not timed
    labels = list(setups)
    for n, item in enumerate(items):
        for label in labels if n % 2 == 0 else labels[::-1]:
            results[label]["pages"].append(measure(item, setups[label]))
        print(f"  {item['id']}: " + ", ".join(
            f"{label} {results[label]['pages'][-1]['seconds']:.2f} s" for label in labels), flush=True)
    return results


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
    from datasette_llm_extract import ocr

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--skip-evaluate", action="store_true")
    parser.add_argument("--evaluate-only", action="store_true", help="skip the OCR measurements (step 1)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="measure only the settings tried, not the previous ones beside them")
    default = ocr.DEFAULT_SETTINGS
    parser.add_argument("--detect-max-side", type=int, default=default.detect_max_side,
                        help="settings to try (default: the product's); 0 = RapidOCR's own sizing")
    parser.add_argument("--detect-unclip", type=float, default=default.detect_unclip)
    parser.add_argument("--recognize-batch", type=int, default=default.recognize_batch)
    parser.add_argument("--threads", type=int, default=default.threads)
    args = parser.parse_args()
    if not (DATA / "receipts_text_gold.jsonl").exists():
        print(f"skipped: {DATA} is not here (the shared receipts data set)")
        return
    items = load(args.limit)
    print(f"{len(items)} receipt scans from {DATA}; CPU count {os.cpu_count()}")
    if not args.evaluate_only:
        tried = ocr.EngineSettings(detect_max_side=args.detect_max_side, detect_unclip=args.detect_unclip,
                                   recognize_batch=args.recognize_batch, threads=args.threads)
        setups = {"tried": tried}
        if not args.no_baseline:
            setups["baseline"] = ocr.PREVIOUS_SETTINGS
        report_ocr(items, setups)
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


def report_ocr(items: list[dict], setups: dict) -> None:
    load_start = os.getloadavg()
    started = time.perf_counter()
    results = ocr_all(items, setups)
    load_end = os.getloadavg()
    n = len(items)
    print(f"\nOCR (rapidocr-onnxruntime 1.4.4, PP-OCRv4, onnxruntime CPU), {n} pages, "
          f"{time.perf_counter() - started:.0f} s in all")
    print(f"  load average (1, 5, 15 min) at start {', '.join(f'{x:.1f}' for x in load_start)}; "
          f"at end {', '.join(f'{x:.1f}' for x in load_end)}; {os.cpu_count()} cores")
    for label, r in results.items():
        pages = r["pages"]
        s = sorted(p["seconds"] for p in pages)
        cpu = [p["cpu"] for p in pages]
        cer = [p["cer"] for p in pages]
        print(f"\n  {label}: {r['settings']}")
        print(f"    engine load: {r['load_seconds']:.2f} s (once per process)")
        print(f"    seconds per page, wall clock: min {s[0]:.2f}, median {statistics.median(s):.2f}, "
              f"mean {statistics.mean(s):.2f}, p90 {s[int(0.9 * (len(s) - 1))]:.2f}, max {s[-1]:.2f}  (goal <= 3 s)")
        print(f"    CPU seconds per page (all threads): median {statistics.median(cpu):.2f}, "
              f"mean {statistics.mean(cpu):.2f}")
        print(f"    CER vs gold OCR text: mean {statistics.mean(cer):.3f}, median {statistics.median(cer):.3f}; "
              f"ignoring spaces: mean {statistics.mean(p['cer_nospace'] for p in pages):.3f}")
        print("    gold value found verbatim   in local OCR text | ignoring case+spaces | in the gold OCR text")
        for f in FIELDS:
            ocr_hits, spaceless, gold = (sum(p[f][i] for p in pages) for i in range(3))
            goal = "  (goal >= 90%)" if f in ("date", "total") else ""
            print(f"      {f:8s} {ocr_hits:3d}/{n} {ocr_hits / n:6.1%} | {spaceless:3d}/{n} {spaceless / n:6.1%} | "
                  f"{gold:3d}/{n} {gold / n:6.1%}{goal}")
        for page in pages:
            for miss in page["misses"]:
                print("    not found verbatim:", miss)
    if "baseline" in results:
        tried, base = results["tried"]["pages"], results["baseline"]["pages"]
        wall = statistics.median(p["seconds"] for p in tried) / statistics.median(p["seconds"] for p in base)
        per_page = statistics.median(a["seconds"] / b["seconds"] for a, b in zip(tried, base))
        cpu = statistics.median(p["cpu"] for p in tried) / statistics.median(p["cpu"] for p in base)
        print(f"\n  tried / baseline, same run, same pages: median wall seconds {wall:.2f}x, "
              f"median of per-page wall ratios {per_page:.2f}x, median CPU seconds {cpu:.2f}x")


if __name__ == "__main__":
    main()
