"""Build the demo databases in demo_data/build/ from the files in demo_data/raw/.

    python demo_data/build.py [--out DIR]

Creates:
- congress.db: current legislators, their terms, committees and memberships
- documents.db: State of the Union passages (1997-2021), FiveThirtyEight's Trump
  lawsuits and special-investigation charges, the clemency pages and receipts
  the extraction demo reads
- newsroom.db: empty, writable: extraction creates its tables here

Idempotent: each database is written to a temporary file and moved into place,
so running it twice gives the same result and a half-built file never shows up.
Takes about a second.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sqlite3
from pathlib import Path

import sqlite_utils
import yaml

HERE = Path(__file__).parent
RAW = HERE / "raw"
PASSAGE_CHARS = 1200

TRUMP_CODES = {
    "jurisdiction": {"1": "Federal", "2": "State"},
    "capacity": {
        "1": "Trump personally",
        "2": "Action of the Trump administration",
        "3": "Trump as plaintiff",
        "4": "Trump administration as plaintiff",
        "5": "Trump associate",
        "6": "Other",
    },
    "type": {"1": "Criminal", "2": "Civil"},
    "TrumpCategory": {
        "1": "Pre-presidency action",
        "2": "Personal action as president",
        "3": "Policy action as president",
    },
    "status": {"1": "Ongoing", "2": "Closed"},
}


def _load_yaml(path: Path):
    with path.open(encoding="utf-8") as f:
        return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def build_congress(db: sqlite_utils.Database) -> None:
    people = _load_yaml(RAW / "legislators" / "legislators-current.yaml")
    legislators, terms = [], []
    for person in people:
        bioguide = person["id"]["bioguide"]
        last = person["terms"][-1]
        name = person["name"]
        legislators.append({
            "bioguide_id": bioguide,
            "full_name": name.get("official_full") or f"{name['first']} {name['last']}",
            "first_name": name["first"],
            "last_name": name["last"],
            "birthday": person.get("bio", {}).get("birthday"),
            "gender": person.get("bio", {}).get("gender"),
            "party": last.get("party"),
            "state": last.get("state"),
            "chamber": "Senate" if last["type"] == "sen" else "House",
            "district": last.get("district"),
            "url": last.get("url"),
            "wikipedia": person["id"].get("wikipedia"),
        })
        for term in person["terms"]:
            terms.append({
                "bioguide_id": bioguide,
                "type": term["type"],
                "start": term["start"],
                "end": term["end"],
                "state": term.get("state"),
                "district": term.get("district"),
                "senate_class": term.get("class"),
                "party": term.get("party"),
                "url": term.get("url"),
                "office": term.get("office"),
                "phone": term.get("phone"),
            })
    db["legislators"].insert_all(legislators, pk="bioguide_id")
    db["terms"].insert_all(terms, pk=("bioguide_id", "start"),
                           foreign_keys=[("bioguide_id", "legislators", "bioguide_id")])
    db["legislators"].enable_fts(["full_name", "first_name", "last_name"], create_triggers=True)

    committees = []
    for c in _load_yaml(RAW / "legislators" / "committees-current.yaml"):
        committees.append({"id": c["thomas_id"], "name": c["name"], "chamber": c["type"],
                           "parent_id": None, "url": c.get("url"),
                           "jurisdiction": c.get("jurisdiction")})
        for sub in c.get("subcommittees", []):
            committees.append({"id": c["thomas_id"] + sub["thomas_id"],
                               "name": f"{c['name']}: {sub['name']}", "chamber": c["type"],
                               "parent_id": c["thomas_id"], "url": None, "jurisdiction": None})
    db["committees"].insert_all(committees, pk="id",
                                foreign_keys=[("parent_id", "committees", "id")])
    db["committees"].enable_fts(["name", "jurisdiction"], create_triggers=True)

    known_people = {row["bioguide_id"] for row in legislators}
    known_committees = {row["id"] for row in committees}
    memberships = {}
    for committee_id, members in _load_yaml(
        RAW / "legislators" / "committee-membership-current.yaml"
    ).items():
        if committee_id not in known_committees:
            continue
        for m in members:
            bioguide = m.get("bioguide")
            if bioguide not in known_people:
                continue
            memberships[(committee_id, bioguide)] = {
                "committee_id": committee_id, "bioguide_id": bioguide,
                "side": m.get("party"), "rank": m.get("rank"), "title": m.get("title"),
            }
    db["committee_memberships"].insert_all(
        memberships.values(), pk=("committee_id", "bioguide_id"),
        foreign_keys=[("committee_id", "committees", "id"),
                      ("bioguide_id", "legislators", "bioguide_id")])


def split_passages(text: str, max_chars: int = PASSAGE_CHARS) -> list[str]:
    """Split a speech into passages of whole sentences, each at most ~max_chars."""
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    passages, current = [], ""
    for sentence in sentences:
        if current and len(current) + 1 + len(sentence) > max_chars:
            passages.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}".strip()
    if current:
        passages.append(current)
    return passages


PARTIES = {"d": "Democratic", "r": "Republican"}


def build_documents(db: sqlite_utils.Database) -> None:
    addresses, passages = [], []
    for path in sorted((RAW / "sotu").glob("*.txt")):
        stem = path.stem  # 2016_barack_obama_d
        year, rest = stem.split("_", 1)
        words = rest.split("_")
        party = PARTIES.get(words[-1], words[-1])
        president = " ".join(w.capitalize() for w in words[:-1]).replace("Mc Kinley", "McKinley")
        address_id = f"{year}-{'-'.join(words[:-1])}"
        text = path.read_text(encoding="utf-8")
        parts = split_passages(text)
        addresses.append({"id": address_id, "year": int(year), "president": president,
                          "party": party, "words": len(text.split()), "passages": len(parts)})
        for n, passage in enumerate(parts, 1):
            passages.append({"id": f"{address_id}-{n:03d}", "address_id": address_id,
                             "year": int(year), "president": president, "passage_no": n,
                             "text": passage})
    db["sotu_addresses"].insert_all(addresses, pk="id")
    db["sotu_passages"].insert_all(passages, pk="id",
                                   foreign_keys=[("address_id", "sotu_addresses", "id")])
    db["sotu_passages"].enable_fts(["text"], create_triggers=True)

    with (RAW / "fivethirtyeight" / "trump-lawsuits" / "trump-lawsuits.csv").open(
        encoding="utf-8"
    ) as f:
        lawsuits = []
        for row in csv.DictReader(f):
            for column, labels in TRUMP_CODES.items():
                row[f"{column}_label"] = labels.get(row[column], row[column])
            lawsuits.append(row)
    db["trump_lawsuits"].insert_all(lawsuits, pk="docketNumber")
    db["trump_lawsuits"].enable_fts(["caseName", "plaintiff", "defendant", "issue"],
                                    create_triggers=True)

    with (RAW / "fivethirtyeight" / "russia-investigation" / "russia-investigation.csv").open(
        encoding="utf-8"
    ) as f:
        charges = [
            {"id": n, **{k.strip().replace("-", "_"): (v or None) for k, v in row.items()}}
            for n, row in enumerate(csv.DictReader(f), 1)
        ]
    db["special_investigations"].insert_all(charges, pk="id")

    pages = []
    for path in sorted((RAW / "clemency").glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        granted = re.search(r"^Granted (.+)$", text, re.M)
        pages.append({"filename": path.name, "granted": granted.group(1) if granted else None,
                      "text": text})
    db["clemency_pages"].insert_all(pages, pk="filename")

    receipts = []
    with (RAW / "receipts" / "receipts.jsonl").open(encoding="utf-8") as f:
        for line in f:
            item = json.loads(line)
            receipts.append({"id": item["id"], "image": item["image"],
                             "ocr_text": item["ocr_text"]})
    db["receipts"].insert_all(receipts, pk="id")


def _write(path: Path, builder) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    db = sqlite_utils.Database(tmp)
    with db.conn:
        builder(db)
    db.conn.execute("vacuum")
    db.close()
    os.replace(tmp, path)


def build(out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / f"{name}.db" for name in ("congress", "documents", "newsroom")}
    _write(paths["congress"], build_congress)
    _write(paths["documents"], build_documents)
    if not paths["newsroom"].exists():  # keep what the journalist extracted so far
        conn = sqlite3.connect(paths["newsroom"])
        conn.execute("vacuum")  # creates an empty, valid database file
        conn.close()
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the demo databases")
    parser.add_argument("--out", default=str(HERE / "build"), help="output directory")
    args = parser.parse_args()
    paths = build(Path(args.out))
    for path in paths.values():
        tables = sqlite_utils.Database(path).table_names()
        visible = [t for t in tables if not t.startswith(tuple(f"{x}_fts" for x in tables))]
        print(f"{path}: {len(visible)} tables")


if __name__ == "__main__":
    main()
