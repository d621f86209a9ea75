from datasette_llm_extract.merge import Deduplicator, merge_rows, normalise_value, row_key
from datasette_llm_extract.schema import validate_table_spec

SPEC = validate_table_spec(
    {"columns": [{"name": "name"}, {"name": "amount", "type": "number"}, {"name": "day", "type": "date"}],
     "key_columns": ["name", "day"]}
)
NOKEY = validate_table_spec({"columns": [{"name": "name"}, {"name": "amount", "type": "number"}]})


def test_normalise_value():
    assert normalise_value("  John   SMITH, Jr. ") == normalise_value("john smith jr")
    assert normalise_value("$1,000.00", "number") == normalise_value(1000, "number")
    assert normalise_value("2020-01-05", "date") == normalise_value("January 5, 2020", "date")
    assert normalise_value("", "text") is None


def test_key_columns_dedup_across_chunks():
    rows = [
        {"name": "Ann Lee", "amount": 5, "day": "2020-01-01"},
        {"name": "ANN  LEE", "amount": 6, "day": "2020-01-01"},  # same key, other amount
        {"name": "Ann Lee", "amount": 5, "day": "2020-01-02"},
    ]
    assert merge_rows(SPEC, rows) == [rows[0], rows[2]]


def test_all_values_when_no_key():
    rows = [{"name": "a", "amount": "1.0"}, {"name": "A", "amount": 1}, {"name": "a", "amount": 2}]
    assert merge_rows(NOKEY, rows) == [rows[0], rows[2]]


def test_existing_keys_from_table():
    dedup = Deduplicator(SPEC, existing_keys=[("ann lee", "2020-01-01"), {"name": "Bo", "day": "2021-02-03"}])
    assert dedup.check({"name": "Ann Lee", "day": "2020-01-01"}, 0) == "table"
    assert dedup.check({"name": "bo", "day": "2021-02-03"}, 1) == "table"
    assert dedup.check({"name": "Cy", "day": "2021-02-03"}, 2) is None
    assert dedup.check({"name": "cy", "day": "2021-02-03"}, 3) == "run"
    assert dedup.first_index({"name": "CY", "day": "2021-02-03"}) == 2


def test_empty_rows_are_never_duplicates():
    assert row_key(NOKEY, {"name": None, "amount": ""}) is None
    assert merge_rows(NOKEY, [{"name": None}, {"name": None}]) == [{"name": None}, {"name": None}]
