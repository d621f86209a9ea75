from datasette_llm_extract.chunking import chunk_chars_for_model, chunk_text, locate_quote


def test_short_text_single_chunk():
    chunks = chunk_text("hello world", 100, 10)
    assert len(chunks) == 1 and chunks[0].text == "hello world" and chunks[0].end == 11


def test_chunks_cover_text_with_offsets_and_overlap():
    paragraphs = [f"Paragraph {i}. " + "Some words here. " * 20 for i in range(30)]
    text = "\n\n".join(paragraphs)
    chunks = chunk_text(text, 1200, 150)
    assert len(chunks) > 5
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    for a, b in zip(chunks, chunks[1:]):
        assert text[a.start:a.end] == a.text
        assert b.start < a.end  # overlap
        assert a.end - b.start <= 150
        assert b.start > a.start
    for c in chunks:
        assert len(c.text) <= 1200
    # cuts land on paragraph boundaries when one is available
    assert all(c.text.endswith("\n\n") for c in chunks[:-1])


def test_no_boundaries_still_progresses():
    text = "x" * 5000
    chunks = chunk_text(text, 1000, 100)
    assert chunks[-1].end == 5000 and all(len(c.text) <= 1000 for c in chunks)


def test_chunk_size_from_context():
    assert chunk_chars_for_model(8000) < chunk_chars_for_model(128_000)
    assert chunk_chars_for_model(100) >= 500


def test_locate_quote_whitespace_and_case():
    source = "The  court\nsentenced JOHN DOE to 10 years, said the “judge”."
    assert locate_quote(source, "sentenced JOHN") == (11, 25)
    start, end = locate_quote(source, "the court sentenced john doe")
    assert source[start:end] == "The  court\nsentenced JOHN DOE"
    start, end = locate_quote(source, 'the "judge"')
    assert source[start:end] == "the “judge”"
    assert locate_quote(source, "not there") is None
    assert locate_quote(source, "") is None


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(derandomize=True, max_examples=100, deadline=None, database=None)
@given(text=st.text(alphabet=st.sampled_from("ab .\n"), max_size=3000),
       size=st.integers(min_value=50, max_value=800), overlap=st.integers(min_value=0, max_value=300))
def test_chunks_cover_everything_in_order(text, size, overlap):
    chunks = chunk_text(text, size, overlap)
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    covered = 0
    for i, c in enumerate(chunks):
        assert c.index == i and text[c.start:c.end] == c.text
        assert len(c.text) <= max(size, 50)
        assert c.start <= covered  # no gap
        covered = max(covered, c.end)
        if i:
            assert c.start > chunks[i - 1].start
    assert covered == len(text)


@settings(derandomize=True, max_examples=100, deadline=None, database=None)
@given(text=st.text(alphabet=st.sampled_from("ab \n\t\u00a0"), min_size=1, max_size=200), data=st.data())
def test_quote_located_whatever_the_spacing(text, data):
    start = data.draw(st.integers(min_value=0, max_value=len(text) - 1))
    end = data.draw(st.integers(min_value=start + 1, max_value=len(text)))
    quote = " ".join(text[start:end].split())  # the model collapses whitespace
    span = locate_quote(text, quote)
    if quote:
        assert span is not None
        assert " ".join(text[span[0]:span[1]].split()) == quote
