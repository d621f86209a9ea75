"""Maintainer script: copy and derive demo_data/raw/ from the shared data folder.

Not used by ``make demo`` (the raw material is committed); run it only to
refresh the copies:  python demo_data/refresh_raw.py --shared ../shared/data
It copies the needed source files unchanged and renders a few dozen clemency
pages from FiveThirtyEight's obama_commutations.csv (key/value rows as scraped
from the Justice Department's page) back into plain text pages.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import shutil
from pathlib import Path

HERE = Path(__file__).parent
RAW = HERE / "raw"
SOTU_FROM_YEAR = 1997  # the last 25 addresses in the collection
RECEIPT_IDS = ["000", "001", "003", "004", "005", "019", "020", "030"]
CLEMENCY_PAGES = 30
RECORDS_PER_PAGE = 3
PAGES_PER_DATE = 5
FIELDS = {
    "offense:": "Offense",
    "district/date:": "District/Date",
    "sentence:": "Sentence",
    "terms of grant:": "Terms of grant",
}


def excel_date(serial: str) -> datetime.date:
    return datetime.date(1899, 12, 30) + datetime.timedelta(days=int(serial))


def clemency_groups(csv_path: Path):
    """Yield (grant_date, [record, ...]) in file order; records are dicts."""
    date = None
    records: list[dict] = []
    current: dict | None = None
    with csv_path.open(encoding="utf-8") as f:
        rows = list(csv.reader(f))[1:]
    for key, value in rows:
        key = key.strip()
        if key.isdigit():
            if records:
                yield date, records
            date, records, current = excel_date(key), [], None
        elif key == "" and value.strip():
            if current is not None and set(current) == {"name"}:
                current = None  # a name with no fields: skip it
            current = {"name": unmangle(value.strip())}
            records.append(current)
        elif current is not None and unmangle(key).strip(" \u2020").lower() in FIELDS:
            label = FIELDS[unmangle(key).strip(" \u2020").lower()]
            value = unmangle(value.strip()).replace("\u2020", "").strip()
            current[label] = (current.get(label, "") + " " + value).strip()
    if records:
        yield date, records


def unmangle(value: str) -> str:
    """Undo UTF-8 read as Windows-1252 (the CSV's apostrophes show up as mojibake)."""
    try:
        value = value.encode("cp1252").decode("utf-8")
    except UnicodeError:
        return value
    return value.replace("\u00df", "\u00a7")  # the scrape turned section signs into "ß"


def clean(record: dict) -> bool:
    text = json.dumps(record, ensure_ascii=False)
    return (
        all(label in record for label in FIELDS.values())
        and "Ã" not in text
        and "â€" not in text
    )


def render_page(date: datetime.date, records: list[dict]) -> str:
    lines = [
        "U.S. Department of Justice, Office of the Pardon Attorney",
        "Commutations granted by President Barack Obama",
        f"Granted {date.strftime('%B')} {date.day}, {date.year}",
        "",
    ]
    for record in records:
        lines.append(record["name"])
        for label in FIELDS.values():
            lines.append(f"{label}: {record[label]}")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", default=str(HERE.parent.parent / "shared" / "data"))
    args = parser.parse_args()
    shared = Path(args.shared)

    dest = RAW / "legislators"
    dest.mkdir(parents=True, exist_ok=True)
    for name in ["legislators-current.yaml", "committees-current.yaml",
                 "committee-membership-current.yaml", "LICENSE"]:
        shutil.copy2(shared / "legislators" / name, dest / name)

    dest = RAW / "sotu"
    dest.mkdir(parents=True, exist_ok=True)
    for src in sorted((shared / "sotu").glob("*.txt")):
        if int(src.name[:4]) >= SOTU_FROM_YEAR:
            shutil.copy2(src, dest / src.name)
    for name in ["LICENSE", "NOTICE"]:
        shutil.copy2(shared / "sotu" / name, dest / name)

    for folder, filename in [("trump-lawsuits", "trump-lawsuits.csv"),
                             ("russia-investigation", "russia-investigation.csv")]:
        dest = RAW / "fivethirtyeight" / folder
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(shared / "fivethirtyeight" / folder / filename, dest / filename)
        shutil.copy2(shared / "fivethirtyeight" / folder / "README.md", dest / "README.md")
    shutil.copy2(shared / "fivethirtyeight" / "LICENSE", RAW / "fivethirtyeight" / "LICENSE")

    dest = RAW / "clemency"
    dest.mkdir(parents=True, exist_ok=True)
    pages = 0
    source = shared / "fivethirtyeight" / "obama-commutations" / "obama_commutations.csv"
    for date, records in clemency_groups(source):
        # The first block carries no grant date, and before 2016 the section
        # headings were not parsed as dates, so only 2016 blocks are dated right.
        if date is None or date.year != 2016:
            continue
        good = [r for r in records if clean(r)]
        starts = list(range(0, len(good) - RECORDS_PER_PAGE + 1, RECORDS_PER_PAGE * 4))
        for i in starts[:PAGES_PER_DATE]:
            chunk = good[i:i + RECORDS_PER_PAGE]
            pages += 1
            name = f"commutations-{date.isoformat()}-{i // RECORDS_PER_PAGE + 1:02d}.txt"
            (dest / name).write_text(render_page(date, chunk), encoding="utf-8")
            if pages >= CLEMENCY_PAGES:
                break
        if pages >= CLEMENCY_PAGES:
            break

    dest = RAW / "receipts"
    dest.mkdir(parents=True, exist_ok=True)
    wanted = set(RECEIPT_IDS)
    with (shared / "receipts" / "receipts_text_gold.jsonl").open(encoding="utf-8") as f, \
            (dest / "receipts.jsonl").open("w", encoding="utf-8") as out:
        for line in f:
            item = json.loads(line)
            if item["id"] in wanted:
                shutil.copy2(shared / "receipts" / "img" / f"{item['id']}.jpg",
                             dest / f"{item['id']}.jpg")
                (dest / f"{item['id']}.txt").write_text(item["ocr_text"], encoding="utf-8")
                out.write(json.dumps({"id": item["id"], "image": f"{item['id']}.jpg",
                                      "ocr_text": item["ocr_text"], "gold": item["gold"]}) + "\n")
    shutil.copy2(shared / "receipts" / "LICENSE-source-repo", dest / "LICENSE-source-repo")
    print(f"raw material refreshed in {RAW} ({pages} clemency pages)")


if __name__ == "__main__":
    main()
