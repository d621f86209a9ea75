import pytest

from datasette_llm_extract.schema import (
    SchemaError,
    output_json_schema,
    row_model,
    spec_from_table,
    sqlite_columns,
    validate_row,
    validate_table_spec,
)

SPEC = {
    "columns": [
        {"name": "company", "description": "Shop name"},
        {"name": "total", "type": "number"},
        {"name": "date", "type": "date"},
        {"name": "items", "type": "integer"},
        {"name": "paid", "type": "boolean"},
        {"name": "method", "type": "choice", "choices": ["Cash", "Card"]},
        {"name": "receipt no", "nullable": False},
    ],
    "key_columns": ["receipt no"],
}


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"columns": []}, "no columns"),
        ({"columns": [{"name": ""}]}, "no name"),
        ({"columns": [{"name": " a"}]}, "starts or ends with a space"),
        ({"columns": [{"name": "a\nb"}]}, "control characters"),
        ({"columns": [{"name": "_llm_run"}]}, "reserved"),
        ({"columns": [{"name": "rowid"}]}, "reserved"),
        ({"columns": [{"name": "x" * 65}]}, "longer than 64"),
        ({"columns": [{"name": "Name"}, {"name": "name"}]}, "used twice"),
        ({"columns": [{"name": "a", "type": "money"}]}, "unknown type 'money'"),
        ({"columns": [{"name": "a", "type": "choice"}]}, "without choices"),
        ({"columns": [{"name": "a"}], "key_columns": ["b"]}, "key column 'b'"),
    ],
)
def test_invalid_specs_say_what_to_fix(data, fragment):
    with pytest.raises(SchemaError) as e:
        validate_table_spec(data)
    assert fragment in str(e.value)


def test_all_problems_reported_at_once():
    with pytest.raises(SchemaError) as e:
        validate_table_spec({"columns": [{"name": "a", "type": "x"}, {"name": "_llmz"}]})
    assert "unknown type" in str(e.value) and "reserved" in str(e.value)


def test_row_model_normalises_values():
    spec = validate_table_spec(SPEC)
    model = row_model(spec)
    values, errors = validate_row(
        model,
        {"company": "  ACME ", "total": "$1,234.50", "date": "March 3, 2021", "items": "1,200",
         "paid": "yes", "method": "card", "receipt no": "A1", "source_quote": "ignored"},
    )
    assert errors == []
    assert values == {"company": "ACME", "total": 1234.5, "date": "2021-03-03", "items": 1200,
                      "paid": True, "method": "Card", "receipt no": "A1"}


def test_row_model_nulls_and_errors():
    model = row_model(validate_table_spec(SPEC))
    values, errors = validate_row(model, {"receipt no": "B", "total": ""})
    assert errors == [] and values["total"] is None and values["company"] is None
    _, errors = validate_row(
        model, {"total": "lots", "date": "03/04/2021", "items": "2.5", "method": "Cheque", "paid": "maybe"}
    )
    joined = "\n".join(errors)
    for fragment in ["total:", "date: '03/04/2021' is ambiguous", "items:", "method:", "paid:",
                     "receipt no: a value is required"]:
        assert fragment in joined
    # an unambiguous day/month order is accepted
    assert validate_row(model, {"receipt no": "x", "date": "25/12/2018"})[0]["date"] == "2018-12-25"


def test_output_json_schema_is_strict_and_nullable():
    spec = validate_table_spec(SPEC)
    schema = output_json_schema(spec)
    item = schema["properties"]["rows"]["items"]
    assert item["additionalProperties"] is False
    assert set(item["required"]) == set(spec.column_names()) | {"source_quote"}
    assert item["properties"]["total"]["type"] == ["number", "null"]
    assert item["properties"]["receipt no"]["type"] == "string"
    assert item["properties"]["method"]["enum"] == ["Cash", "Card", None]
    assert "YYYY-MM-DD" in item["properties"]["date"]["description"]


def test_sqlite_columns_and_back():
    spec = validate_table_spec(SPEC)
    cols = sqlite_columns(spec)
    assert cols["total"] == "REAL" and cols["items"] == "INTEGER" and cols["date"] == "TEXT"
    info = [
        (0, "receipt no", "TEXT", 1, None, 1),
        (1, "total", "REAL", 0, None, 0),
        (2, "count", "INTEGER", 0, None, 0),
        (3, "_llm_run", "TEXT", 0, None, 0),
        (4, "when", "TEXT", 0, None, 0),
    ]
    back = spec_from_table(info, {"when": {"type": "date", "description": "Day"}, "total": "Amount"})
    assert back.column_names() == ["receipt no", "total", "count", "when"]
    assert back.key_columns == ["receipt no"] and back.primary_key
    assert back.column("when").type == "date" and back.column("total").description == "Amount"
    assert back.column("count").type == "integer" and not back.column("receipt no").nullable


def test_overlong_text_value_rejected():
    model = row_model(validate_table_spec({"columns": ["a"]}))
    _, errors = validate_row(model, {"a": "x" * 20_001})
    assert errors and "limit is 20,000" in errors[0]


def test_differently_spelled_keys_are_aligned():
    model = row_model(validate_table_spec({"columns": ["total_amount", "Shop Name"]}))
    values, errors = validate_row(model, {"Total Amount": "5", "shop_name": "ACME", "total_amount_x": "9"})
    assert errors == [] and values == {"total_amount": "5", "Shop Name": "ACME"}
    # an exact key wins over a loose one
    values, _ = validate_row(model, {"total_amount": "1", "Total Amount": "2"})
    assert values["total_amount"] == "1"
