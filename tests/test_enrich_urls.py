"""Image and PDF URLs in source columns: sent as URL parts to a provider that fetches them
(OpenAI ``image_url``; Anthropic ``image`` / ``document`` blocks with ``source: {type:
url}``), never fetched by the suite, never sent as URL parts to a server that has not
said it fetches them (``accepts_urls``), and never logged or shown with their credentials.

Through the real openai and anthropic SDKs behind ``httpx2.MockTransport``
(``tests/vendor_payloads.py``), and the enrich command against the scripted
OpenAI-compatible server (a real HTTP server)."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest
from click.testing import CliRunner
from datasette.app import Datasette

from datasette_llm_core.errors import CapabilityError
from datasette_llm_core.gateway import llm_gateway
from datasette_llm_core.providers import builtin
from datasette_llm_core.types import ChatRequest, ImageUrlPart, Message, PdfUrlPart
from datasette_llm_extract.enrich import file_url_kind, row_document, row_files

from .enrich_helpers import COLUMNS, answer, table_rows
from .fake_openai_server import FakeOpenAIServer
from .vendor_payloads import (
    Reply,
    VendorServer,
    anthropic_message,
    anthropic_text_block,
    openai_completion,
)

IMAGE = "https://example.org/scans/complaint-7.JPG?sig=abc"
PDF = "https://example.org/filings/order%2012.pdf"
SECRET_URL = "https://reporter:hunter2pass@files.example.org/a.png?token=SECRETTOKEN123"


# ------------------------------------------------------------------ which cells are file URLs
@pytest.mark.parametrize("value,marked,kind", [
    (IMAGE, None, "image"),
    ("  https://example.org/a.webp  ", None, "image"),
    (PDF, None, "pdf"),
    ("https://example.org/photo", None, None),  # nothing says what it is...
    ("https://example.org/photo", "image", "image"),  # ...unless the column is marked
    ("https://example.org/doc?id=3", "pdf", "pdf"),
    ("http://example.org/a.jpg", None, None),  # plain http stays text
    ("http://example.org/a.jpg", "image", None),
    ("ftp://example.org/a.pdf", None, None),
    ("file:///etc/passwd.png", "image", None),
    ("https:///a.png", None, None),  # no host
    ("see https://example.org/a.png", None, None),  # a URL inside text stays text
    ("https://example.org/a.png.html", None, None),
    ("https://example.org/page.html", "pdf", "pdf"),
    (b"https://example.org/a.png", None, None),
    (12, "image", None),
])
def test_which_cells_are_file_urls(value, marked, kind):
    assert file_url_kind(value, marked) == kind


def test_row_parts_and_document_name_the_url_without_credentials():
    row = {"scan": IMAGE, "filing": PDF, "note": "see https://example.org/a.png", "secret": SECRET_URL}
    parts = row_files(row, ["scan", "filing", "note", "secret"])
    assert [type(p).__name__ for p in parts] == ["ImageUrlPart", "PdfUrlPart", "ImageUrlPart"]
    assert parts[0].url == IMAGE and parts[1].url == PDF and parts[1].filename == "order 12.pdf"
    assert parts[2].url == SECRET_URL  # the provider needs the URL as it is to fetch it...
    assert "hunter2pass" not in repr(parts[2]) and "SECRETTOKEN123" not in repr(parts[2])  # ...logs do not
    document = row_document(row, ["scan", "filing", "note", "secret"])
    assert "[scan]\n(attached image from https://example.org/scans/complaint-7.JPG" in document
    assert "see https://example.org/a.png" in document
    assert "hunter2pass" not in document and "SECRETTOKEN123" not in document
    assert "[REDACTED]" in document


# ------------------------------------------------------------------ request bodies, real SDKs
@pytest.fixture
def servers(monkeypatch):
    servers = {"anthropic": VendorServer("anthropic"), "openai": VendorServer("openai"),
               "openai-compatible": VendorServer("openai")}
    monkeypatch.setattr(builtin, "make_http_client", lambda config: servers[config.provider].client())
    return servers


async def gateway_with(models):
    ds = Datasette(memory=True, metadata={"plugins": {"datasette-llm-newsroom": {
        "state_database": ":memory:", "models": models, "retries": {"max_attempts": 1}}}})
    await ds.invoke_startup()
    return await llm_gateway(ds)


def url_request(*parts) -> ChatRequest:
    return ChatRequest([Message.user("Read the attached file.", *parts)], max_tokens=50)


async def test_openai_sends_an_image_url_part_and_refuses_a_pdf_url(servers, fake_api_keys):
    servers["openai"].queue(Reply(json=openai_completion("A receipt.")))
    gw = await gateway_with([{"id": "gpt", "provider": "openai", "model": "gpt-4.1-mini"}])
    response = await gw.complete(url_request(ImageUrlPart(IMAGE)), purpose="extract", prompt_version="v",
                                 model_id="gpt")
    assert response.text == "A receipt."
    body = servers["openai"].requests[0].body
    assert body["messages"][-1] == {"role": "user", "content": [
        {"type": "text", "text": "Read the attached file."},
        {"type": "image_url", "image_url": {"url": IMAGE}}]}
    # Chat Completions takes PDFs as file data only: refused before anything is sent
    with pytest.raises(CapabilityError, match="PDF URLs"):
        await gw.complete(url_request(PdfUrlPart(PDF)), purpose="extract", prompt_version="v", model_id="gpt")
    assert len(servers["openai"].requests) == 1


async def test_anthropic_sends_image_and_document_blocks_with_url_sources(servers, fake_api_keys):
    servers["anthropic"].queue(Reply(json=anthropic_message([anthropic_text_block("An order.")])))
    gw = await gateway_with([{"id": "claude", "provider": "anthropic", "model": "claude-haiku-4-5"}])
    await gw.complete(url_request(ImageUrlPart(IMAGE), PdfUrlPart(PDF, "order 12.pdf")), purpose="extract",
                      prompt_version="v", model_id="claude")
    content = servers["anthropic"].requests[0].body["messages"][0]["content"]
    assert content == [
        {"type": "text", "text": "Read the attached file."},
        {"type": "image", "source": {"type": "url", "url": IMAGE}},
        {"type": "document", "source": {"type": "url", "url": PDF}, "title": "order 12.pdf"},
    ]


async def test_a_compatible_server_gets_url_parts_only_when_its_config_says_it_fetches_them(
        servers, fake_api_keys):
    base = {"provider": "openai-compatible", "model": "local", "base_url": "http://127.0.0.1:9/v1",
            "supports": ["streaming", "schema", "images"]}
    gw = await gateway_with([{"id": "local", **base}, {"id": "fetching", **base, "accepts_urls": True}])
    with pytest.raises(CapabilityError, match="image URLs"):
        await gw.complete(url_request(ImageUrlPart(IMAGE)), purpose="extract", prompt_version="v",
                          model_id="local")
    assert servers["openai-compatible"].requests == []
    servers["openai-compatible"].queue(Reply(json=openai_completion("ok")))
    await gw.complete(url_request(ImageUrlPart(IMAGE)), purpose="extract", prompt_version="v", model_id="fetching")
    sent = servers["openai-compatible"].requests[0].body["messages"][-1]["content"]
    assert sent[-1] == {"type": "image_url", "image_url": {"url": IMAGE}}
    # an Anthropic-format server at base_url (llama.cpp's /v1/messages) is not assumed to fetch either
    local_claude = (await gateway_with([{"id": "lc", "provider": "anthropic", "model": "m",
                                         "base_url": "http://127.0.0.1:9"}])).get_chat_model("lc")
    assert "image_urls" not in local_claude.capabilities()


async def test_a_vendor_error_quoting_the_url_loses_its_credentials(servers, fake_api_keys):
    message = f"Unable to download the file at {SECRET_URL}: 403 Forbidden"
    servers["anthropic"].queue(Reply(status=400, json={"type": "error", "error": {
        "type": "invalid_request_error", "message": message}}))
    gw = await gateway_with([{"id": "claude", "provider": "anthropic", "model": "claude-haiku-4-5"}])
    with pytest.raises(Exception) as caught:
        await gw.complete(url_request(ImageUrlPart(SECRET_URL)), purpose="extract", prompt_version="v",
                          model_id="claude")
    assert servers["anthropic"].requests[0].body["messages"][0]["content"][1]["source"]["url"] == SECRET_URL
    text = str(caught.value)
    assert "Unable to download" in text
    assert "hunter2pass" not in text and "SECRETTOKEN123" not in text


# ------------------------------------------------------------------ the enrich command
def make_scans_db(path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("create table complaints (id integer primary key, narrative text, scan text, page text)")
    conn.executemany("insert into complaints values (?, ?, ?, ?)", [
        (1, "Complaint 1: tenant reported no heat on 2024-03-02. Inspector issued a fine of 101 dollars.",
         "https://example.org/scans/1.jpg", "https://example.org/view?doc=1"),
        (2, "Complaint 2: tenant reported no heat on 2024-03-03. Inspector issued a fine of 102 dollars.",
         SECRET_URL, "https://example.org/view?doc=2"),
        (3, "Complaint 3: tenant reported no heat on 2024-03-04. Inspector issued a fine of 103 dollars.",
         "http://example.org/scans/3.jpg", None),
    ])
    conn.commit()
    conn.close()


def test_enrich_command_sends_url_columns_as_url_parts(tmp_path):
    from datasette.cli import cli

    db = tmp_path / "news.db"
    make_scans_db(db)
    schema = tmp_path / "fines.json"
    schema.write_text(json.dumps({"columns": COLUMNS}))
    with FakeOpenAIServer(handler=answer) as chat:
        model = {"provider": "openai-compatible", "model": "fake-model", "base_url": chat.base_url,
                 "supports": ["streaming", "schema", "images"]}
        config = tmp_path / "config.json"
        config.write_text(json.dumps({"plugins": {"datasette-llm-newsroom": {
            "state_database": str(tmp_path / "state.db"),
            "models": [{"id": "local", **model}, {"id": "fetching", **model, "accepts_urls": True}],
            "defaults": {"extract": "local"}}}}))
        args = ["llm-extract", "enrich", str(db), "complaints", "--source", "narrative", "--source", "scan",
                "--schema", str(schema), "-c", str(config)]
        refused = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert refused.exit_code == 1
        assert "cannot read URL columns" in refused.output and "accepts_urls: true" in refused.output
        assert chat.chat_requests() == []
        marked = CliRunner().invoke(cli, args + ["--model", "fetching", "--source", "page", "--url-column",
                                                 "page:image"], catch_exceptions=False)
        assert marked.exit_code == 0, marked.output
        assert "3 row(s) answered, 0 failed, 3 written" in marked.output, marked.output
        sent = {}
        for request in chat.chat_requests():
            content = request["messages"][-1]["content"]
            text = " ".join(p.get("text", "") for p in content) if isinstance(content, list) else content
            row = int(text.split("Complaint ")[1].split(":")[0])
            sent[row] = [p["image_url"]["url"] for p in content if isinstance(p, dict) and p["type"] == "image_url"] \
                if isinstance(content, list) else []
            if row == 3:
                assert "http://example.org/scans/3.jpg" in text  # plain http: text, not a URL part
    assert sent == {1: ["https://example.org/scans/1.jpg", "https://example.org/view?doc=1"],
                    2: [SECRET_URL, "https://example.org/view?doc=2"], 3: []}
    assert dict(table_rows(db, "select id, fine from complaints")) == {1: 101, 2: 102, 3: 103}
    state = sqlite3.connect(tmp_path / "state.db")
    dumped = "\n".join(str(r) for t in ("llm_enrich_jobs", "llm_enrich_items", "llm_calls")
                       for r in state.execute(f"select * from {t}"))  # noqa: S608 - fixed names
    state.close()
    assert "hunter2pass" not in dumped and "SECRETTOKEN123" not in dumped
    assert '"page": "image"' in dumped  # the mark is kept with the job (a resume reads it)


def test_the_budget_counts_a_url_part_like_the_file():
    from datasette_llm_core.budget import TOKENS_PER_IMAGE, TOKENS_PER_PDF_PAGE, estimate

    plain = estimate(url_request(), None)[0]
    assert estimate(url_request(ImageUrlPart(IMAGE)), None)[0] == plain + TOKENS_PER_IMAGE
    assert estimate(url_request(PdfUrlPart(PDF)), None)[0] == plain + TOKENS_PER_PDF_PAGE


async def test_the_api_estimate_says_which_models_read_url_columns(tmp_path):
    """In-process, root on both lines: the estimate for a URL column names the problem for a
    local model, and counts the image for one that fetches URLs; a bad mark is refused."""
    from .extract_web_helpers import V1, cookies

    db = tmp_path / "news.db"
    make_scans_db(db)
    local = {"provider": "openai-compatible", "model": "m", "base_url": "http://127.0.0.1:9/v1",
             "supports": ["streaming", "schema", "images"], "input_cost_per_mtok": 1, "output_cost_per_mtok": 1}
    config = {"plugins": {"datasette-llm-newsroom": {
        "state_database": str(tmp_path / "state.db"),
        "models": [{"id": "local", **local}, {"id": "fetching", **local, "accepts_urls": True}]}}}
    ds = Datasette([str(db)], **({"config": config} if V1 else {"metadata": config}))
    if V1:
        ds.root_enabled = True
    body = {"database": "news", "table": "complaints", "source_columns": ["narrative", "scan"],
            "columns": COLUMNS, "estimate_only": True}

    async def post(**extra):
        r = await ds.client.post("/-/llm-extract/enrich/api/jobs", json={**body, **extra},
                                 cookies=cookies(ds, "root"))
        return r.status_code, r.json()

    status, data = await post(model="local")
    assert status == 400 and "cannot read URL columns" in data["error"], data
    assert "never fetches a URL" in data["error"]
    status, text_only = await post(model="fetching", source_columns=["narrative"])
    status, data = await post(model="fetching")
    assert status == 200, data
    assert data["input_tokens"] > text_only["input_tokens"] + 400  # 2 of 3 rows carry an image
    status, data = await post(model="fetching", url_columns={"scan": "video"})
    assert status == 400 and "url_columns" in data["error"], data
    status, data = await post(model="fetching", url_columns=["scan"])
    assert status == 400 and "url_columns is an object" in data["error"], data


async def test_the_start_page_marks_a_column_as_holding_image_urls(tmp_path):
    """The web form's "What <column> holds" select reaches the job: an address with no
    file ending counts as an image only once its column is marked, and a mark the suite
    does not know is refused with what to pick."""
    from .extract_web_helpers import V1, cookies, post_form

    db = tmp_path / "news.db"
    make_scans_db(db)
    fetching = {"provider": "openai-compatible", "model": "m", "base_url": "http://127.0.0.1:9/v1",
                "supports": ["streaming", "schema", "images"], "accepts_urls": True,
                "input_cost_per_mtok": 1, "output_cost_per_mtok": 1}
    config = {"plugins": {"datasette-llm-newsroom": {
        "state_database": str(tmp_path / "state.db"), "models": [{"id": "fetching", **fetching}]}}}
    ds = Datasette([str(db)], **({"config": config} if V1 else {"metadata": config}))
    if V1:
        ds.root_enabled = True
    page = "/-/llm-extract/enrich/new/news/complaints"
    assert 'name="url-page"' in (await ds.client.get(page, cookies=cookies(ds, "root"))).text
    form = {"source": ["narrative", "page"], "col-0-name": "fine", "col-0-type": "integer",
            "model": "fetching", "action": "estimate"}

    async def tokens(**marks) -> int:
        r = await post_form(ds, page, {**form, **marks}, cookies(ds, "root"))
        assert r.status_code == 200, r.text
        return int(re.search(r"About ([\d,]+) input", r.text).group(1).replace(",", ""))

    plain = await tokens()
    marked = await tokens(**{"url-page": "image"})
    assert marked > plain + 400  # 2 of the 3 "page" cells are https addresses: now images
    r = await post_form(ds, page, {**form, "url-page": "video"}, cookies(ds, "root"))
    assert r.status_code == 400 and "url_columns marks" in r.text and "image or pdf" in r.text
