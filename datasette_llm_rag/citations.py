"""Citations in model answers: parse, validate, drop forged ones, render safely.

Pure logic, nothing from Datasette. A model answer is untrusted text: it may
cite a source number that was never retrieved (``[99]``), repeat a citation
that a retrieved row planted, or carry markdown images and links to outside
sites. Everything here turns that text into a small whitelisted structure
(paragraphs, list items, text runs, citation chips with numbers we checked)
that is rendered with every piece of text escaped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

from markupsafe import Markup, escape

#: ``[1]``, ``[1, 2]``, ``[1][3]`` (each bracket is matched on its own).
CITATION_RE = re.compile(r"\[(\s*\d{1,4}(?:\s*[,;]\s*\d{1,4})*\s*)\]")
_IMAGE_RE = re.compile(r"!\[([^\]\n]{0,200})\]\([^)\n]{0,2000}\)")
_LINK_RE = re.compile(r"(?<!!)\[([^\]\n]{1,200})\]\((?:[^)\n]{0,2000})\)")
_AUTOLINK_RE = re.compile(r"<(https?://[^>\s]{1,2000})>")
_BOLD_RE = re.compile(r"\*\*(.+?)\*\*")
_BULLET_RE = re.compile(r"^\s*(?:[-*•]|\d{1,3}[.)])\s+")


@dataclass
class CitationCheck:
    """Result of validating the citations in one answer."""

    text: str  # the answer with forged citations removed
    cited: list[int] = field(default_factory=list)  # valid numbers, first-use order
    dropped: list[int] = field(default_factory=list)  # forged numbers removed


def _numbers(group: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", group)]


def validate_citations(text: str, allowed: Iterable[int]) -> CitationCheck:
    """Keep only citations whose numbers are in ``allowed``; drop the rest.

    A bracket mixing valid and forged numbers keeps the valid ones.
    """
    allowed_set = set(allowed)
    cited: list[int] = []
    dropped: list[int] = []

    def replace(match: re.Match) -> str:
        keep = []
        for n in _numbers(match.group(1)):
            if n in allowed_set:
                keep.append(n)
                if n not in cited:
                    cited.append(n)
            else:
                dropped.append(n)
        return "".join(f"[{n}]" for n in keep)

    clean = CITATION_RE.sub(replace, text)
    return CitationCheck(text=clean, cited=cited, dropped=dropped)


class CitationStreamFilter:
    """Drop forged citations from a stream of text deltas as they arrive.

    Text after an opening ``[`` is held back until the bracket closes (or can
    no longer be a citation), so a forged ``[99]`` never reaches the browser.
    """

    MAX_HOLD = 40

    def __init__(self, allowed: Iterable[int]):
        self.allowed = set(allowed)
        self._buffer = ""
        self.dropped: list[int] = []

    def _could_be_citation(self, pending: str) -> bool:
        return bool(re.fullmatch(r"\[[\d\s,;]*", pending)) and len(pending) <= self.MAX_HOLD

    def feed(self, delta: str) -> str:
        self._buffer += delta
        out = []
        while self._buffer:
            start = self._buffer.find("[")
            if start == -1:
                out.append(self._buffer)
                self._buffer = ""
                break
            out.append(self._buffer[:start])
            rest = self._buffer[start:]
            match = CITATION_RE.match(rest)
            if match:
                check = validate_citations(match.group(0), self.allowed)
                self.dropped.extend(check.dropped)
                out.append(check.text)
                self._buffer = rest[match.end():]
                continue
            if self._could_be_citation(rest):
                self._buffer = rest  # wait for more text
                break
            out.append("[")
            self._buffer = rest[1:]
        return "".join(out)

    def flush(self) -> str:
        rest, self._buffer = self._buffer, ""
        return rest


def _strip_outside_references(text: str) -> str:
    """Remove markdown images, turn links into their text, drop raw HTML tags."""
    text = _IMAGE_RE.sub(lambda m: f"(image removed: {m.group(1)})" if m.group(1) else "(image removed)", text)
    text = _LINK_RE.sub(lambda m: m.group(1), text)
    text = _AUTOLINK_RE.sub(lambda m: m.group(1), text)
    return text


def _inline(text: str, allowed: set[int]) -> list[dict]:
    """Split a line into text / bold / cite runs."""
    runs: list[dict] = []
    pos = 0
    for match in CITATION_RE.finditer(text):
        if match.start() > pos:
            runs.extend(_bold_runs(text[pos:match.start()]))
        for n in _numbers(match.group(1)):
            if n in allowed:
                runs.append({"type": "cite", "n": n})
        pos = match.end()
    if pos < len(text):
        runs.extend(_bold_runs(text[pos:]))
    return runs


def _bold_runs(text: str) -> list[dict]:
    runs = []
    pos = 0
    for match in _BOLD_RE.finditer(text):
        if match.start() > pos:
            runs.append({"type": "text", "text": text[pos:match.start()]})
        runs.append({"type": "strong", "text": match.group(1)})
        pos = match.end()
    if pos < len(text):
        runs.append({"type": "text", "text": text[pos:]})
    return runs


def answer_structure(text: str, allowed: Iterable[int]) -> list[dict]:
    """The answer as blocks: ``{"type": "p"|"li", "runs": [...]}``.

    Runs are ``text``/``strong`` (plain text, escaped when rendered) or
    ``cite`` (a number already checked against ``allowed``). Images, outside
    links and HTML never survive: only their text does.
    """
    allowed_set = set(allowed)
    text = _strip_outside_references(text.replace("\r\n", "\n"))
    blocks: list[dict] = []
    paragraph: list[str] = []

    def end_paragraph():
        if paragraph:
            runs = _inline(" ".join(paragraph), allowed_set)
            if runs:
                blocks.append({"type": "p", "runs": runs})
            paragraph.clear()

    for line in text.split("\n"):
        stripped = line.strip()
        if not stripped:
            end_paragraph()
            continue
        if _BULLET_RE.match(line):
            end_paragraph()
            runs = _inline(_BULLET_RE.sub("", line, count=1).strip(), allowed_set)
            if runs:
                blocks.append({"type": "li", "runs": runs})
            continue
        paragraph.append(stripped.lstrip("#").strip() if stripped.startswith("#") else stripped)
    end_paragraph()
    return blocks


def render_html(blocks: list[dict], link_for: Callable[[int], str | None]) -> Markup:
    """Render ``answer_structure`` output; ``link_for(n)`` gives a row URL on this site."""
    out: list[str] = []
    in_list = False
    for block in blocks:
        if block["type"] == "li" and not in_list:
            out.append("<ul>")
            in_list = True
        elif block["type"] != "li" and in_list:
            out.append("</ul>")
            in_list = False
        tag = "li" if block["type"] == "li" else "p"
        inner = []
        for run in block["runs"]:
            if run["type"] == "cite":
                href = link_for(run["n"])
                label = escape(f"[{run['n']}]")
                if href:
                    inner.append(
                        f'<a class="llm-rag-cite" href="{escape(href)}">{label}</a>'
                    )
                else:
                    inner.append(f'<span class="llm-rag-cite">{label}</span>')
            elif run["type"] == "strong":
                inner.append(f"<strong>{escape(run['text'])}</strong>")
            else:
                inner.append(str(escape(run["text"])))
        out.append(f"<{tag}>{''.join(inner)}</{tag}>")
    if in_list:
        out.append("</ul>")
    return Markup("\n".join(out))


def is_local_path(href: str) -> bool:
    """True for a site-relative path (``/db/table/1``), never ``//host`` or a scheme."""
    return href.startswith("/") and not href.startswith("//") and "\\" not in href
