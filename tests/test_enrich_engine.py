"""The enrichment engine's pure parts, without a server: one row's request, answer
parsing, validation and re-ask, the quote check in the row's own text, and the table
filter turned into SQL."""

from __future__ import annotations

import json

import pytest

from datasette_llm_core.types import ChatResponse, Usage
from datasette_llm_extract.enrich import (
    EnrichError,
    check_columns,
    enrich_row,
    row_document,
)
from datasette_llm_extract.enrich_jobs import JobError, selection_sql
from datasette_llm_extract.schema import validate_table_spec

SPEC = validate_table_spec({"columns": [{"name": "fine", "type": "number"}, {"name": "reported", "type": "date"}]})
DOC = row_document({"narrative": "Inspector issued a fine of 250 dollars on 2024-03-05.", "id": 7}, ["narrative"])


class Gateway:
    """Answers from a list, records the requests (the real gateway's ``complete`` signature)."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.requests = []

    async def complete(self, request, **kwargs):
        self.requests.append((request, kwargs))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return ChatResponse(text=answer if isinstance(answer, str) else json.dumps(answer),
                            usage=Usage(100, 20), model_id="m")


def rows(*items):
    return {"rows": list(items)}


async def test_one_row_valid_with_its_quote_found_in_the_row():
    gw = Gateway(rows({"fine": 250, "reported": "2024-03-05", "source_quote": "a fine of 250 dollars"}))
    out = await enrich_row(gw, SPEC, "Fines in dollars.", DOC, model_id="m", ref="enrich:x")
    assert out.valid and out.error is None
    assert out.records == [{"values": {"fine": 250.0, "reported": "2024-03-05"}, "quote": "a fine of 250 dollars",
                            "quote_found": True, "valid": True, "errors": []}]
    request, kwargs = gw.requests[0]
    assert kwargs["ref"] == "enrich:x" and kwargs["prompt_version"].startswith("enrich-v1")
    text = " ".join(p.text for p in request.messages[-1].parts if hasattr(p, "text"))
    assert "[narrative]" in text and "exactly one row" in text and "Fines in dollars." in text
    assert "[id]" not in text  # only the source columns are sent


async def test_a_quote_that_is_not_in_the_row_is_flagged():
    gw = Gateway(rows({"fine": 250, "reported": "2024-03-05", "source_quote": "fined 9,000 dollars"}))
    out = await enrich_row(gw, SPEC, "", DOC, model_id="m")
    assert out.records[0]["quote_found"] is False


async def test_invalid_values_are_reasked_once_and_corrected():
    gw = Gateway(rows({"fine": "lots", "reported": "2024-03-05", "source_quote": "a fine of 250 dollars"}),
                 rows({"_llm_row_id": "R1", "fine": 250, "reported": "2024-03-05"}))
    out = await enrich_row(gw, SPEC, "", DOC, model_id="m")
    assert out.valid and out.records[0]["values"]["fine"] == 250.0
    assert out.records[0]["quote"] == "a fine of 250 dollars"  # kept from the first answer
    assert out.usage.input_tokens == 200 and len(gw.requests) == 2


async def test_a_failed_reask_keeps_the_row_invalid_with_its_reasons():
    gw = Gateway(rows({"fine": "lots", "reported": "2024-03-05", "source_quote": "x"}), RuntimeError("down"))
    out = await enrich_row(gw, SPEC, "", DOC, model_id="m")
    assert not out.valid and out.records[0]["errors"] and "re-ask failed" in out.warnings[0]


async def test_model_failure_prose_and_several_rows():
    out = await enrich_row(Gateway(RuntimeError("rate limited")), SPEC, "", DOC, model_id="m")
    assert out.error == "rate limited" and not out.valid
    out = await enrich_row(Gateway("I think the fine was 250."), SPEC, "", DOC, model_id="m")
    assert out.error and "could not be read as a row" in out.error
    two = rows({"fine": 1, "reported": None, "source_quote": "fine"}, {"fine": 2, "reported": None, "source_quote": "fine"})
    out = await enrich_row(Gateway(two), SPEC, "", DOC, model_id="m")
    assert len(out.records) == 1 and "gave 2 rows" in out.warnings[0]
    out = await enrich_row(Gateway(two), SPEC, "", DOC, model_id="m", linked=True)
    assert len(out.records) == 2  # one-to-many keeps every record
    out = await enrich_row(Gateway(rows()), SPEC, "", DOC, model_id="m")
    assert not out.valid and out.records[0]["errors"] == ["the model found no values"]
    out = await enrich_row(Gateway(), SPEC, "", row_document({"narrative": None}, ["narrative"]), model_id="m")
    assert out.error and "empty" in out.error


def test_columns_checked():
    with pytest.raises(EnrichError, match="no column"):
        check_columns(["id", "narrative"], ["body"], SPEC, linked=False)
    with pytest.raises(EnrichError, match="already has"):
        check_columns(["id", "narrative", "Fine"], ["narrative"], SPEC, linked=False)
    check_columns(["id", "narrative", "fine"], ["narrative"], SPEC, linked=False, refillable={"fine"})
    check_columns(["id", "narrative", "fine"], ["narrative"], SPEC, linked=True)
    with pytest.raises(EnrichError, match="both read and filled"):
        check_columns(["id", "fine"], ["fine"], SPEC, linked=True)


def test_the_table_filter_becomes_sql_with_bound_values():
    where, params = selection_sql(["id", "borough", "narrative"], {
        "args": {"borough": "Bronx", "id__gt": "3", "_sort": "id", "_where": "id < 100"}, "after": 12})
    assert where == ' where "borough" = :p0 and "id" > :p1 and (id < 100) and rowid > :_llm_after'
    assert params == {"p0": "Bronx", "p1": 3, "_llm_after": 12}
    assert selection_sql(["id"], {}) == ("", {})
    with pytest.raises(JobError, match="column the table does not have"):
        selection_sql(["id"], {"args": {"nope__contains": "x"}})
    with pytest.raises(JobError, match="_search"):
        selection_sql(["id"], {"args": {"_search": "x"}})
    where, params = selection_sql(["id", "name"], {"args": {"name": "x'); drop table t; --"}})
    assert params == {"p0": "x'); drop table t; --"} and "drop" not in where
