"""The pure pieces behind the request-layer defences (no server): body caps,
JSON checks, the streamed multipart reader and the CSRF route table."""

from __future__ import annotations

import pytest

from datasette_llm_core import bodies
from datasette_llm_core.permissions import body_route_kind, skip_csrf_body
from datasette_llm_extract.forms import FormLimits, read_form


def receiver(body: bytes, chunk: int = 1000):
    pieces = [body[i:i + chunk] for i in range(0, len(body), chunk)] or [b""]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1} for i, p in enumerate(pieces)]
    read = {"n": 0}

    async def receive():
        read["n"] += 1
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return receive, read


def headers(content_type: str, length: int | None = None):
    out = [(b"content-type", content_type.encode())]
    if length is not None:
        out.append((b"content-length", str(length).encode()))
    return out


@pytest.mark.parametrize("body, phrase", [
    (b"[1, 2]", "must be an object"),
    (b"{nope", "not valid JSON"),
    (b'{"q": "\xff"}', "not UTF-8"),
    (b'{"q": "a\\ud800b"}', "surrogate"),
    (b'{"\\udc00": 1}', "surrogate"),
    (b'{"q": ["x", {"y": "\\uDBFF"}]}', "surrogate"),
])
def test_bad_json_bodies(body, phrase):
    with pytest.raises(bodies.BodyError) as e:
        bodies.parse_json_object(body)
    assert e.value.status == 400 and phrase in str(e.value)


def test_surrogate_pairs_are_text():
    assert bodies.parse_json_object(b'{"q": "\\ud83d\\ude00"}') == {"q": "\U0001f600"}


async def test_declared_length_over_the_cap_reads_nothing():
    receive, read = receiver(b"x" * 5000)
    with pytest.raises(bodies.BodyError) as e:
        await bodies.read_json(receive, headers("application/json", 5000), 1024)
    assert e.value.status == 413 and "1 KB" in str(e.value)
    assert read["n"] == 0


async def test_undeclared_body_stops_at_the_cap():
    receive, read = receiver(b"x" * 50_000)
    with pytest.raises(bodies.BodyError) as e:
        await bodies.read_limited(receive, 4096)
    assert e.value.status == 413 and read["n"] <= 5


async def test_json_routes_want_json():
    receive, read = receiver(b"{}")
    for content_type in ("text/plain", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded", ""):
        with pytest.raises(bodies.BodyError) as e:
            await bodies.read_json(receive, headers(content_type), 1024)
        assert e.value.status == 415
    assert read["n"] == 0
    assert await bodies.read_json(receive, headers("application/json; charset=utf-8"), 1024) == {}


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "B") -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            out += b"Content-Type: text/plain\r\n"
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


LIMITS = FormLimits(total=100_000, fields=1000, file=2000, files=2, parts=10)


async def test_multipart_fields_and_files():
    body = multipart([("a", None, "é".encode()), ("files", "one.txt", b"1" * 1500), ("files", "", b"")])
    receive, _ = receiver(body, chunk=7)
    form = await read_form(receive, headers("multipart/form-data; boundary=B"), LIMITS)
    assert form.get("a") == "é"
    assert [(u.filename, u.size, u.data[:3]) for u in form.files["files"]] == [("one.txt", 1500, b"111")]
    form.close()


@pytest.mark.parametrize("parts, phrase", [
    ([("files", "big.txt", b"x" * 2001)], "big.txt is too large: the limit is"),
    ([("files", f"{i}.txt", b"x") for i in range(3)], "At most 2 files"),
    ([("f", None, b"x" * 1001)], "text fields"),
    ([("f", None, b"x") for _ in range(11)], "more than 10 parts"),
])
async def test_multipart_limits(parts, phrase):
    receive, _ = receiver(multipart(parts))
    with pytest.raises(bodies.BodyError) as e:
        await read_form(receive, headers("multipart/form-data; boundary=B"), LIMITS)
    assert e.value.status == 413 and phrase in str(e.value)


async def test_multipart_garbage_and_truncation_are_400():
    for body in (b"not a multipart body at all", multipart([("a", None, b"1")])[:-10]):
        receive, _ = receiver(body)
        with pytest.raises(bodies.BodyError) as e:
            await read_form(receive, headers("multipart/form-data; boundary=B"), LIMITS)
        assert e.value.status == 400


def test_form_token_check():
    cookie = [(b"cookie", b"ds_actor=x; ds_csrftoken=tok")]
    assert bodies.form_token_ok(cookie, {"ds_csrftoken": "tok"}, "tok")
    assert bodies.form_token_ok(cookie + [(b"x-csrftoken", b"tok")], {"ds_csrftoken": "tok"}, "")
    assert not bodies.form_token_ok(cookie, {"ds_csrftoken": "tok"}, "other")
    assert not bodies.form_token_ok(cookie, {}, "")
    assert bodies.form_token_ok([], {}, "")  # no cookie: no ambient credentials


@pytest.mark.parametrize("path, kind", [
    ("/-/llm-extract/api/runs", "json"),
    ("/-/llm-extract/api/runs/0123456789abcdef/undo", "json"),
    ("/-/llm-extract/templates", "json"),
    ("/-/llm-extract/templates/12/delete", "json"),
    ("/-/llm-rag/news/ask.json", "json"),
    ("/-/llm-rag/feedback.json", "json"),
    ("/-/llm-extract/new/news", "form"),
    ("/-/llm-extract/into/news/target", "form"),
    ("/-/llm-extract/estimate", "form"),
    ("/-/llm-extract/runs/0123456789abcdef/insert", "form"),
    ("/-/llm-rag/index/news", "form"),
    ("/news/target/-/insert", None),
    ("/-/llm-extract/api/runs/x/../../../other", None),
])
def test_csrf_route_table(path, kind):
    assert body_route_kind(path) == kind
    assert skip_csrf_body({"type": "http", "path": path}) == (True if kind else None)
