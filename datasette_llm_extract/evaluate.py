"""Measure extraction quality against hand-checked (gold) records.

Gold files are JSONL, one document per line::

    {"id": "000", "text": "...", "gold": {"company": "...", "total": "9.00"}}
    {"id": "p1", "text": "...", "records": [{...}, {...}]}   # several rows per document

(``ocr_text`` or ``document`` are accepted for ``text``; ``gold`` may also be
a list). Predicted rows are matched to gold rows (on key columns, else on the
most equal fields); then, per field, a predicted non-empty value is a true
positive when it equals the gold value after normalisation (case, whitespace,
punctuation, numbers as numbers, dates as ISO) and a false positive otherwise;
a gold value not matched is a false negative. Exact-match rate is the share
of gold records whose field value is reproduced exactly (empty == empty).
No Datasette imports here.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .merge import normalise_value
from .schema import TableSpec, validate_table_spec


@dataclass
class GoldDocument:
    id: str
    text: str
    records: list[dict]
    image: str | None = None


def load_gold(path: str | Path, limit: int | None = None) -> list[GoldDocument]:
    docs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            item = json.loads(line)
            text = item.get("text") or item.get("ocr_text") or item.get("document") or ""
            gold = item.get("records", item.get("gold", item.get("rows", [])))
            records = [gold] if isinstance(gold, dict) else list(gold or [])
            docs.append(GoldDocument(str(item.get("id", n)), text, records, item.get("image")))
            if limit and len(docs) >= limit:
                break
    return docs


def infer_spec(docs: Iterable[GoldDocument]) -> TableSpec:
    """All fields seen in the gold records, as text columns."""
    names: list[str] = []
    for doc in docs:
        for record in doc.records:
            for key in record:
                if key not in names:
                    names.append(key)
    return validate_table_spec({"columns": [{"name": n} for n in names]})


def normalise_for_eval(value: Any, ctype: str, date_order: str | None = None) -> Any:
    """``normalise_value`` plus day/month order for ambiguous gold dates ("dmy" or "mdy")."""
    if ctype == "date" and isinstance(value, str) and date_order:
        m = re.match(r"^\s*(\d{1,2})[/.-](\d{1,2})[/.-](\d{2,4})", value)
        if m:
            a, b, y = (int(g) for g in m.groups())
            if y < 100:
                y += 2000
            day, month = (a, b) if date_order == "dmy" else (b, a)
            try:
                return _dt.date(y, month, day).isoformat()
            except ValueError:
                pass
    return normalise_value(value, ctype)


@dataclass
class FieldScore:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    exact: int = 0
    gold_records: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def exact_match(self) -> float:
        return self.exact / self.gold_records if self.gold_records else 0.0

    def to_dict(self) -> dict:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "precision": round(self.precision, 4),
                "recall": round(self.recall, 4), "f1": round(self.f1, 4),
                "exact_match": round(self.exact_match, 4)}


@dataclass
class EvalReport:
    fields: dict[str, FieldScore]
    documents: int = 0
    gold_records: int = 0
    predicted_records: int = 0
    records_exact: int = 0
    failed_documents: list[str] = field(default_factory=list)
    #: Valid rows whose supporting quote was / was not found in the document text.
    quotes_found: int = 0
    quotes_missing: int = 0
    #: Rows the model returned that failed validation even after the re-ask.
    invalid_rows: int = 0

    @property
    def record_exact_match(self) -> float:
        return self.records_exact / self.gold_records if self.gold_records else 0.0

    def micro(self) -> FieldScore:
        total = FieldScore()
        for s in self.fields.values():
            total.tp += s.tp
            total.fp += s.fp
            total.fn += s.fn
            total.exact += s.exact
            total.gold_records += s.gold_records
        return total

    def to_dict(self) -> dict:
        return {"documents": self.documents, "gold_records": self.gold_records,
                "predicted_records": self.predicted_records,
                "record_exact_match": round(self.record_exact_match, 4),
                "failed_documents": self.failed_documents,
                "quotes_found": self.quotes_found, "quotes_missing": self.quotes_missing,
                "invalid_rows": self.invalid_rows,
                "fields": {k: v.to_dict() for k, v in self.fields.items()},
                "micro": self.micro().to_dict()}

    def format_table(self) -> str:
        rows = [("field", "precision", "recall", "F1", "exact", "tp", "fp", "fn")]
        for name, s in [*self.fields.items(), ("(all fields)", self.micro())]:
            rows.append((name, f"{s.precision:.3f}", f"{s.recall:.3f}", f"{s.f1:.3f}",
                         f"{s.exact_match:.3f}", str(s.tp), str(s.fp), str(s.fn)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.append("")
        lines.append(f"documents: {self.documents}  gold records: {self.gold_records}  "
                     f"predicted: {self.predicted_records}  records exactly right: "
                     f"{self.records_exact} ({self.record_exact_match:.1%})")
        if self.quotes_found + self.quotes_missing:
            share = self.quotes_found / (self.quotes_found + self.quotes_missing)
            lines.append(f"supporting quotes found in the document: {self.quotes_found} of "
                         f"{self.quotes_found + self.quotes_missing} ({share:.1%}); invalid rows: {self.invalid_rows}")
        if self.failed_documents:
            lines.append(f"documents with failed chunks: {', '.join(self.failed_documents)}")
        return "\n".join(lines)


def _normalised(spec: TableSpec, record: dict, date_order: str | None) -> dict:
    return {c.name: normalise_for_eval(record.get(c.name), c.type, date_order) for c in spec.columns}


def _match(spec: TableSpec, gold: list[dict], predicted: list[dict]) -> list[tuple[int | None, int | None]]:
    """Pairs of (gold index, predicted index); None marks an unmatched record."""
    names = spec.column_names()
    keys = spec.key_columns
    candidates = []
    for gi, g in enumerate(gold):
        for pi, p in enumerate(predicted):
            if keys and any(g[k] != p[k] for k in keys):
                continue
            same = sum(1 for n in names if g[n] is not None and g[n] == p[n])
            if same or keys:
                candidates.append((-same, gi, pi))
    candidates.sort()
    used_g: set[int] = set()
    used_p: set[int] = set()
    pairs: list[tuple[int | None, int | None]] = []
    for _, gi, pi in candidates:
        if gi in used_g or pi in used_p:
            continue
        used_g.add(gi)
        used_p.add(pi)
        pairs.append((gi, pi))
    pairs += [(gi, None) for gi in range(len(gold)) if gi not in used_g]
    pairs += [(None, pi) for pi in range(len(predicted)) if pi not in used_p]
    return pairs


def score(spec: TableSpec, results: Iterable[tuple[list[dict], list[dict]]], *,
          date_order: str | None = None) -> EvalReport:
    """Score (gold records, predicted records) pairs, one per document."""
    report = EvalReport(fields={c.name: FieldScore() for c in spec.columns})
    names = spec.column_names()
    for gold_raw, predicted_raw in results:
        report.documents += 1
        gold = [_normalised(spec, g, date_order) for g in gold_raw]
        predicted = [_normalised(spec, p, None) for p in predicted_raw]
        report.gold_records += len(gold)
        report.predicted_records += len(predicted)
        for gi, pi in _match(spec, gold, predicted):
            g = gold[gi] if gi is not None else {n: None for n in names}
            p = predicted[pi] if pi is not None else {n: None for n in names}
            all_equal = True
            for n in names:
                s = report.fields[n]
                gv, pv = g[n], p[n]
                if gi is not None:
                    s.gold_records += 1
                    if gv == pv:
                        s.exact += 1
                    else:
                        all_equal = False
                if pv is not None and gv == pv:
                    s.tp += 1
                else:
                    if pv is not None:
                        s.fp += 1
                    if gv is not None:
                        s.fn += 1
            if gi is not None and pi is not None and all_equal:
                report.records_exact += 1
    return report


async def evaluate(gateway, spec: TableSpec, docs: list[GoldDocument], *, model_id: str | None = None,
                   instructions: str = "", concurrency: int = 4, actor: dict | None = None,
                   date_order: str | None = None, documents: list | None = None,
                   progress=None, read_as: str = "auto", ocr_limits=None) -> EvalReport:
    """Extract from every gold document through ``gateway`` and score the valid rows.

    ``documents`` (parallel to ``docs``) overrides the input, e.g. images
    instead of OCR text; ``read_as`` says how those reach the model ("ocr": local
    OCR text to a text model), within ``ocr_limits`` (``reading.OcrLimits``; the
    configuration's ``extract: ocr:``). ``progress(n)`` is called as documents finish.
    """
    from .documents import Document
    from .engine import ChunkFailed, ExtractionJob, RowExtracted, run_extraction

    semaphore = asyncio.Semaphore(max(1, concurrency))
    failed: list[str] = []
    counts = {"found": 0, "missing": 0, "invalid": 0}

    async def one(i: int, doc: GoldDocument) -> list[dict]:
        async with semaphore:
            source = documents[i] if documents else Document.from_text(doc.text, name=doc.id)
            job = ExtractionJob(spec=spec, instructions=instructions, documents=[source],
                                model_id=model_id, concurrency=1, read_as=read_as, ocr_limits=ocr_limits)
            rows: list[dict] = []
            async for event in run_extraction(gateway, job, actor=actor, ref=f"eval:{doc.id}"):
                if isinstance(event, RowExtracted) and not event.valid:
                    counts["invalid"] += 1
                elif isinstance(event, RowExtracted) and not event.duplicate:
                    rows.append(event.values)
                    if event.quote_checked:
                        counts["found" if event.quote_found else "missing"] += 1
                elif isinstance(event, ChunkFailed):
                    failed.append(doc.id)
            if progress:
                progress(1)
            return rows

    predicted = await asyncio.gather(*(one(i, d) for i, d in enumerate(docs)))
    report = score(spec, [(d.records, p) for d, p in zip(docs, predicted)], date_order=date_order)
    report.failed_documents = sorted(set(failed))
    report.quotes_found, report.quotes_missing = counts["found"], counts["missing"]
    report.invalid_rows = counts["invalid"]
    return report
