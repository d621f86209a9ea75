import json

from datasette_llm_extract.streamparse import RowStreamParser, parse_rows

ROWS = [
    {"name": 'He said "hi" {not a brace}', "n": 1, "nested": {"a": [1, 2, {"b": "]"}]}},
    {"name": "back\\slash \u00e9", "n": None},
    {"name": "third", "n": 3.5},
]


def feed_all(text, size):
    parser = RowStreamParser()
    arrivals = []
    for i in range(0, len(text), size):
        for row in parser.feed(text[i:i + size]):
            arrivals.append((row, i + size))
    return parser, arrivals


def test_rows_arrive_as_soon_as_closed():
    text = json.dumps({"rows": ROWS}, indent=2)
    for size in (1, 3, 7, 1000):
        parser, arrivals = feed_all(text, size)
        assert [r for r, _ in arrivals] == ROWS
        result = parser.finish()
        assert not result.truncated and result.errors == []
    parser, arrivals = feed_all(text, 1)
    # the first row is yielded at the character that closes it, long before the end
    first_close = text.index("\n    }") + len("\n    }")
    assert arrivals[0][1] == first_close
    assert first_close < len(text) * 0.7


def test_code_fence_prose_and_other_keys():
    text = 'Here you go:\n```json\n{"note": "rows", "count": 2, "rows": [{"a": 1}, {"a": 2}]}\n```'
    result = parse_rows(text)
    assert result.rows == [{"a": 1}, {"a": 2}] and not result.truncated and result.errors == []


def test_bare_array():
    assert parse_rows('[{"a": 1}, {"a": 2}]').rows == [{"a": 1}, {"a": 2}]


def test_truncated_stream_keeps_complete_rows():
    text = json.dumps({"rows": ROWS})
    cut = text[: text.index('"third"')]
    result = parse_rows(cut)
    assert result.rows == ROWS[:2]
    assert result.truncated and "cut off after 2 complete rows" in result.errors[0]


def test_no_json_and_missing_rows_key():
    assert "no JSON" in parse_rows("I cannot help with that.").errors[0]
    result = parse_rows('{"records": [{"a": 1}]}')
    assert result.rows == [] and any("no 'rows' list" in e for e in result.errors)


def test_escaped_quote_before_brace():
    text = '{"rows": [{"q": "a \\"}\\" b"}, {"q": "c"}]}'
    assert parse_rows(text).rows == [{"q": 'a "}" b'}, {"q": "c"}]
