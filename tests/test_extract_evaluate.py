import csv
import datetime as dt
import json
from pathlib import Path

import pytest
from datasette.app import Datasette

from datasette_llm_core.gateway import llm_gateway
from datasette_llm_extract.evaluate import evaluate, infer_spec, load_gold, score
from datasette_llm_extract.schema import validate_table_spec

from .extract_responders import (
    CLEMENCY_SPEC,
    RECEIPT_SPEC,
    clemency_responder,
    clemency_rows,
    receipt_fields,
    receipt_responder,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RECEIPTS = SHARED / "receipts" / "receipts_text_gold.jsonl"
CLEMENCY = SHARED / "fivethirtyeight" / "obama-commutations" / "obama_commutations.csv"


@pytest.fixture
async def gateway(fake_models):
    ds = Datasette(memory=True, metadata={"plugins": {"datasette-llm-newsroom": {"state_database": ":memory:"}}})
    await ds.invoke_startup()
    return await llm_gateway(ds)


def test_hand_checked_scores():
    spec = validate_table_spec({"columns": [{"name": "company"}, {"name": "total", "type": "number"},
                                            {"name": "date", "type": "date"}]})
    report = score(spec, [
        ([{"company": "ACME Sdn Bhd", "total": "9.00", "date": "25/12/2018"}],
         [{"company": "acme sdn. bhd.", "total": 9, "date": "2018-12-25"}]),
        ([{"company": "B", "total": "1", "date": "01/02/2018"}],
         [{"company": "C", "total": "$1.00", "date": None}]),
        ([{"company": "D", "total": None, "date": None}], []),
    ], date_order="dmy")
    company, total, date = (report.fields[n] for n in ("company", "total", "date"))
    # company: 1 right, 1 wrong (fp + fn), 1 missed
    assert (company.tp, company.fp, company.fn) == (1, 1, 2)
    assert company.precision == 0.5 and company.recall == pytest.approx(1 / 3)
    assert company.f1 == pytest.approx(0.4)
    assert company.exact_match == pytest.approx(1 / 3)
    assert (total.tp, total.fp, total.fn) == (2, 0, 0) and total.exact_match == 1.0
    # date: "01/02/2018" is day-first gold; predicted null is a miss
    assert (date.tp, date.fp, date.fn) == (1, 0, 1) and date.exact_match == pytest.approx(2 / 3)
    assert report.records_exact == 1 and report.gold_records == 3 and report.predicted_records == 2
    micro = report.micro()
    assert (micro.tp, micro.fp, micro.fn) == (4, 1, 3)
    table = report.format_table()
    assert "company" in table and "0.500" in table


def test_multi_record_matching_ignores_order():
    spec = validate_table_spec({"columns": [{"name": "name"}, {"name": "n", "type": "integer"}]})
    gold = [{"name": "A", "n": 1}, {"name": "B", "n": 2}, {"name": "C", "n": 3}]
    predicted = [{"name": "C", "n": 3}, {"name": "B", "n": 20}, {"name": "A", "n": 1}, {"name": "Z", "n": 9}]
    report = score(spec, [(gold, predicted)])
    assert (report.fields["name"].tp, report.fields["name"].fp, report.fields["name"].fn) == (3, 1, 0)
    assert (report.fields["n"].tp, report.fields["n"].fp, report.fields["n"].fn) == (2, 2, 1)
    assert report.records_exact == 2
    assert score(spec, [(gold, list(reversed(predicted)))]).to_dict() == report.to_dict()


def test_load_gold_and_infer(tmp_path):
    path = tmp_path / "gold.jsonl"
    path.write_text(json.dumps({"id": 1, "ocr_text": "x", "gold": {"a": 1, "b": 2}}) + "\n\n"
                    + json.dumps({"id": 2, "text": "y", "records": [{"a": 3}, {"c": 4}]}) + "\n")
    docs = load_gold(path)
    assert [d.text for d in docs] == ["x", "y"] and len(docs[1].records) == 2
    assert infer_spec(docs).column_names() == ["a", "b", "c"]


@pytest.mark.skipif(not RECEIPTS.exists(), reason="../shared receipts data not present")
async def test_receipts_through_the_engine(gateway, scripted_model):
    docs = load_gold(RECEIPTS, limit=40)
    spec = validate_table_spec(RECEIPT_SPEC)
    scripted_model.responder = receipt_responder
    report = await evaluate(gateway, spec, docs, model_id="scripted", date_order="dmy", concurrency=4)
    assert report.documents == 40 and report.failed_documents == []
    assert len(scripted_model.requests) >= 40
    # Same numbers as scoring the rule-based answers directly: the engine carries values faithfully.
    direct = score(spec, [(d.records, [receipt_fields(d.text)]) for d in docs], date_order="dmy")
    assert report.to_dict()["fields"] == direct.to_dict()["fields"]
    for name, s in report.fields.items():
        gold_values = sum(1 for d in docs for r in d.records if r.get(name) not in (None, ""))
        assert s.tp + s.fn == gold_values, name
    # the regex model finds most dates and totals on real receipts, companies less often
    assert report.fields["date"].precision > 0.7
    assert report.fields["total"].recall > 0.5

    # A model that gets the total wrong every time: total precision collapses, the rest is unchanged.
    def wrong_total(request):
        row = json.loads(receipt_responder(request))
        for r in row["rows"]:
            if r["total"] is not None:
                r["total"] = str(float(r["total"]) + 1)
        return json.dumps(row)

    scripted_model.responder = wrong_total
    worse = await evaluate(gateway, spec, docs, model_id="scripted", date_order="dmy")
    assert worse.fields["total"].precision == 0.0 < report.fields["total"].precision
    assert worse.fields["date"].to_dict() == report.fields["date"].to_dict()

    # A model that paraphrases instead of quoting: the quote check notices.
    def paraphrase(request):
        row = json.loads(receipt_responder(request))
        for r in row["rows"]:
            r["source_quote"] = "the receipt says so"
        return json.dumps(row)

    scripted_model.responder = paraphrase
    unquoted = await evaluate(gateway, spec, docs[:5], model_id="scripted", date_order="dmy")
    assert unquoted.quotes_found == 0 and unquoted.quotes_missing == 5


def clemency_documents(per_doc=5, count=8):
    with open(CLEMENCY, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))[1:]
    people, current = [], None
    for key, info in rows:
        if not key:
            current = {"name": info.strip()}
            people.append(current)
        elif current is not None:
            current[key.rstrip(":")] = info
    docs = []
    for d in range(count):
        group = [p for p in people[d * per_doc:(d + 1) * per_doc] if "District/Date" in p and "Sentence" in p]
        text = "\n\n".join(
            f"{p['name']}\nOffense: {p.get('Offense', '')}\nDistrict/Date: {p['District/Date']}\n"
            f"Sentence: {p['Sentence']}\nTerms of grant: {p.get('Terms of grant', '')}" for p in group)
        gold = []
        for p in group:
            district, _, when = p["District/Date"].partition(";")
            try:
                date = dt.datetime.strptime(when.strip(), "%B %d, %Y").date().isoformat()
            except ValueError:
                date = None
            gold.append({"name": p["name"], "district": district.strip(), "date": date,
                         "life_sentence": p["Sentence"].lower().startswith("life")})
        docs.append({"id": f"clemency-{d}", "text": text, "records": gold})
    return docs


@pytest.mark.skipif(not CLEMENCY.exists(), reason="../shared clemency data not present")
async def test_clemency_records_multi_row(gateway, scripted_model, tmp_path):
    path = tmp_path / "clemency.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in clemency_documents()))
    docs = load_gold(path)
    spec = validate_table_spec(CLEMENCY_SPEC)
    scripted_model.responder = clemency_responder
    report = await evaluate(gateway, spec, docs, model_id="scripted")
    expected = score(spec, [(d.records, clemency_rows(d.text)) for d in docs])
    assert report.to_dict()["fields"] == expected.to_dict()["fields"]
    assert report.gold_records == sum(len(d.records) for d in docs) > 20
    assert report.fields["name"].f1 > 0.9 and report.fields["life_sentence"].precision > 0.9
    # the rule-based model quotes each record's first line verbatim
    assert report.quotes_found == report.predicted_records and report.quotes_missing == 0
    assert "supporting quotes found in the document" in report.format_table()

    def drop_one(request):  # a model that misses the last person of every document
        rows = json.loads(clemency_responder(request))["rows"]
        return json.dumps({"rows": rows[:-1]})

    scripted_model.responder = drop_one
    worse = await evaluate(gateway, spec, docs, model_id="scripted")
    assert worse.fields["name"].recall < report.fields["name"].recall
    assert worse.fields["name"].precision == report.fields["name"].precision
