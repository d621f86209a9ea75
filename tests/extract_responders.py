"""Deterministic rule-based "models" for evaluation tests.

Each responder reads the document out of the extraction request (between the
<document> tags), pulls fields out with regular expressions and answers with
{"rows": [...]} as a model would. The numbers a test sees are therefore
computed from real documents, not hard-coded.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter

from datasette_llm_core.types import ChatRequest, TextPart

RECEIPT_SPEC = {
    "columns": [
        {"name": "company", "description": "Name of the shop or company that issued the receipt"},
        {"name": "date", "type": "date", "description": "Date of the receipt"},
        {"name": "address", "description": "Address of the shop"},
        {"name": "total", "type": "number", "description": "Total amount paid"},
    ]
}

CLEMENCY_SPEC = {
    "columns": [
        {"name": "name", "nullable": False, "description": "Person granted clemency"},
        {"name": "district", "description": "Court district"},
        {"name": "date", "type": "date", "description": "Date of sentencing"},
        {"name": "life_sentence", "type": "boolean", "description": "Was the original sentence life imprisonment?"},
    ],
    "key_columns": ["name"],
}


def document_text(request: ChatRequest) -> str:
    for part in request.messages[-1].parts:
        if isinstance(part, TextPart) and "<document>" in part.text:
            return part.text.split("<document>\n", 1)[1].rsplit("\n</document>", 1)[0]
    return ""


_COMPANY = re.compile(r"SDN\.?\s*B[HN]D|S/B|ENTERPRISE|TRADING|RESTAURANT|STORE|MART|SHOP|HARDWARE", re.I)
_DATE = re.compile(r"\b(\d{1,2})[/-](\d{1,2})[/-](\d{2,4})\b")
_POSTCODE = re.compile(r"\b\d{5}\b")


def receipt_fields(text: str) -> dict:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    company_i = next((i for i, line in enumerate(lines[:8]) if _COMPANY.search(line)), 0 if lines else None)
    company = lines[company_i] if company_i is not None else None
    address_lines = []
    if company_i is not None:
        for line in lines[company_i + 1:company_i + 7]:
            if re.match(r"^\(?\d{4,}-[A-Z]\)?$|^(GST|TEL|FAX)", line, re.I):
                continue
            address_lines.append(line)
            if _POSTCODE.search(line):
                break
    date = None
    m = _DATE.search(text)
    if m:
        d, mo, y = (int(g) for g in m.groups())
        y = y + 2000 if y < 100 else y
        try:
            date = dt.date(y, mo, d).isoformat()
        except ValueError:
            date = None
    # the total is usually the largest amount printed more than once (total, cash, rounding lines)
    amounts = re.findall(r"(?<![\d.])(\d{1,5}\.\d{2})(?![\d.])", text)
    counts = Counter(amounts)
    total = max(counts, key=lambda a: (counts[a] >= 2, float(a))) if counts else None
    return {"company": company, "date": date,
            "address": " ".join(address_lines) or None, "total": total,
            "source_quote": company or (lines[0] if lines else "")}


def receipt_responder(request: ChatRequest) -> str:
    return json.dumps({"rows": [receipt_fields(document_text(request))]})


_BLOCK = re.compile(
    r"^(?P<name>[^\n:]+)\nOffense:[^\n]*\nDistrict/Date:\s*(?P<district>[^;\n]+);\s*(?P<date>[^\n]+)\n"
    r"Sentence:\s*(?P<sentence>[^\n]*)",
    re.M,
)


def clemency_rows(text: str) -> list[dict]:
    rows = []
    for m in _BLOCK.finditer(text):
        date = None
        try:
            date = dt.datetime.strptime(m.group("date").strip().split(" (")[0], "%B %d, %Y").date().isoformat()
        except ValueError:
            pass
        rows.append({"name": m.group("name").strip(), "district": m.group("district").strip(), "date": date,
                     "life_sentence": m.group("sentence").lower().startswith("life"),
                     "source_quote": m.group(0).split("\n")[0]})
    return rows


def clemency_responder(request: ChatRequest) -> str:
    return json.dumps({"rows": clemency_rows(document_text(request))})
