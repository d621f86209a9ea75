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


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

PROPS = settings(derandomize=True, max_examples=100, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow])
_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.sampled_from('ab{}[]",:\\ \n\u00e9\u2603'), max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
_rows = st.lists(st.dictionaries(st.text(alphabet=st.sampled_from('ab{}"\\ '), max_size=6), _values, max_size=4),
                 max_size=5)


@PROPS
@given(rows=_rows, cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=20),
       indent=st.sampled_from([None, 1, 2]), ascii_only=st.booleans())
def test_any_split_gives_the_same_rows(rows, cuts, indent, ascii_only):
    text = json.dumps({"rows": rows}, indent=indent, ensure_ascii=ascii_only)
    parser = RowStreamParser()
    got = []
    position = 0
    for cut in sorted(set(cuts)):
        got += parser.feed(text[position:cut])
        position = max(position, cut)
    got += parser.feed(text[position:])
    assert got == json.loads(text)["rows"]
    result = parser.finish()
    assert not result.truncated and result.errors == []


@PROPS
@given(rows=_rows, cut=st.integers(min_value=0, max_value=2000))
def test_any_truncation_keeps_a_prefix_of_rows(rows, cut):
    text = json.dumps({"rows": rows})
    result = parse_rows(text[:cut])
    assert result.rows == rows[: len(result.rows)]
    if cut == 0:
        assert "no JSON" in result.errors[0]
    else:
        assert result.truncated == (cut < len(text))


def test_prose_with_braces_before_the_json():
    text = 'Here is {the} data [1] you asked for:\n```json\n{"rows": [{"a": 1}]}\n```'
    result = parse_rows(text)
    assert result.rows == [{"a": 1}] and result.errors == []
    assert parse_rows('{"rows": []}').errors == []


def test_fragment_inside_prose_is_not_an_answer_with_no_rows():
    # Issue 16: a real model answered in prose quoting row["record"]; the parser took
    # the bracketed fragment for a complete answer holding zero rows.
    for prose in ('see ["a"]', 'The row["record"] field holds it.', "There are [] rows here.",
                  'I found ["Ann", "Bob"] in the text.'):
        parser = RowStreamParser()
        assert parser.feed(prose) == []
        assert not parser.complete, prose
        result = parser.finish()
        assert result.rows == [] and result.errors, prose
        assert parser.head == prose
    # the requested shapes still count, also after prose or a fence
    assert parse_rows('```json\n[]\n```').errors == []
    assert parse_rows('Sure:\n{"rows": []}').errors == []
    assert parse_rows('Sure: [{"a": 1}]').rows == [{"a": 1}]
