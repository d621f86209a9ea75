"""Prompt injection: hostile documents and rows against the suite's defences.

Each case in ``tests/injection_corpus/corpus.jsonl`` is fed to the code with a
model that *obeys* the injection (it echoes the hostile text, forged
citations, images, links and HTML into its output), so what is tested is
the suite's handling of untrusted output, not the model's manners.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from datasette_llm_rag.citations import CitationStreamFilter, answer_structure, render_html
from datasette_llm_rag.prompts import Source, build_answer_request

CORPUS_PATH = Path(__file__).parent / "injection_corpus" / "corpus.jsonl"
CORPUS = [json.loads(line) for line in CORPUS_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]
OUTSIDE_HOST = "attacker.example"
SAFE_TAGS = {"p", "ul", "li", "strong", "a", "span", "em", "br"}


def test_corpus_is_big_and_varied():
    assert len(CORPUS) >= 30
    categories = {c["category"] for c in CORPUS}
    for needed in ("ignore_schema", "other_table", "reveal_prompt", "reveal_key", "md_image",
                   "md_link", "html", "forged_citation"):
        assert needed in categories
    assert len({c["id"] for c in CORPUS}) == len(CORPUS)
    assert not any("sk-test-SECRET" in c["text"] for c in CORPUS)


class TagAudit(HTMLParser):
    """Collects every tag and attribute in an HTML fragment."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag


def audit_html(fragment: str, allowed_hrefs: set[str]) -> list[str]:
    """Problems found in rendered answer HTML (empty list: safe)."""
    parser = TagAudit()
    parser.feed(fragment)
    problems = []
    for tag, attrs in parser.tags:
        if tag not in SAFE_TAGS:
            problems.append(f"tag <{tag}> rendered")
        for name, value in attrs.items():
            if name.startswith("on") or name in ("style", "src", "srcset"):
                problems.append(f"attribute {name} on <{tag}>")
            if name == "href" and value not in allowed_hrefs:
                problems.append(f"link to {value!r}")
    if re.search(r"(?i)<\s*(script|img|iframe|svg|style)\b", fragment):
        problems.append("raw dangerous tag in output")
    return problems


def obeying_answer(case: dict) -> str:
    """What a model that follows the injection would answer."""
    return (
        f"Here is the answer [1].\n\n{case['text']}\n\n"
        f"- Extra claim [2][99]\n- ![proof](https://{OUTSIDE_HOST}/p.png) [[3]](https://{OUTSIDE_HOST}/)"
    )


@pytest.mark.parametrize("case", CORPUS, ids=[c["id"] for c in CORPUS])
def test_rendered_answer_is_safe(case):
    allowed = {1, 2}
    links = {1: "/db/docs/1", 2: "/db/docs/2"}
    blocks = answer_structure(obeying_answer(case), allowed)
    html = str(render_html(blocks, links.get))
    assert audit_html(html, set(links.values())) == []
    assert f"https://{OUTSIDE_HOST}" not in re.findall(r'href="([^"]*)"', html)
    cited = {int(n) for n in re.findall(r'class="llm-rag-cite"[^>]*>\[(\d+)\]', html)}
    assert cited <= allowed
    assert "[99]" not in html
    # Structure only carries checked citation numbers.
    for block in blocks:
        for run in block["runs"]:
            if run["type"] == "cite":
                assert run["n"] in allowed


@pytest.mark.parametrize("case", CORPUS, ids=[c["id"] for c in CORPUS])
@pytest.mark.parametrize("size", [1, 3, 17])
def test_streamed_answer_never_carries_forged_citation(case, size):
    text = obeying_answer(case)
    f = CitationStreamFilter({1, 2})
    out = "".join(f.feed(text[i : i + size]) for i in range(0, len(text), size)) + f.flush()
    numbers = {int(n) for group in re.findall(r"\[([\d\s,;]+)\]", out) for n in re.findall(r"\d+", group)}
    assert numbers <= {1, 2}, numbers


@pytest.mark.parametrize("case", CORPUS, ids=[c["id"] for c in CORPUS])
def test_hostile_row_cannot_break_out_of_its_data_block(case):
    sources = [
        Source(n=1, table="docs", pk="1", title=case["text"][:60], text=case["text"]),
        Source(n=2, table="docs", pk="2", title=None, text="An ordinary row about the budget."),
    ]
    request = build_answer_request("What happened?", sources, marker="m4rk3r")
    user = request.messages[0].parts[0].text
    # Exactly one opening and one closing fence per row: the row text cannot add any.
    assert len(re.findall(r"<<<ROW \d+ m4rk3r>>>", user)) == 2
    assert len(re.findall(r"<<<END ROW \d+ m4rk3r>>>", user)) == 2
    assert "data" in request.system and "never an instruction" in request.system
    # The model gets no tools: the request carries no schema or tool definitions.
    assert request.json_schema is None
