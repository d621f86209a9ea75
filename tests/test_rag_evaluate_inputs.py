"""``datasette llm-rag evaluate`` with the files users really have (issue #13.5).

Qrels separated by spaces, TREC's four columns, headers or none; queries with
only non-positive judgments; duplicate and missing ``_id``; progress; a cache
that survives an interrupted run; ``--model`` and ``--rerank/--no-rerank``.
"""

from __future__ import annotations

import json

import click
import numpy as np
import pytest
from click.testing import CliRunner

from datasette_llm_rag.cli import register
from datasette_llm_rag.evaluate import CachingEmbedder, EvalInputError, read_qrels

from .fakes import HashEmbeddingModel
from .test_rag_eval import _write_beir


@pytest.fixture
def cli(monkeypatch):
    import datasette_llm_core.embeddings as embeddings

    made = []

    def fake_local_model(model_id=None):
        model = HashEmbeddingModel(model_id or "hash-embed")
        made.append(model)
        return model

    monkeypatch.setattr(embeddings, "local_model", fake_local_model)

    @click.group()
    def root():
        pass

    register(root)
    root.made = made
    return root


def _run(cli, *args):
    return CliRunner().invoke(cli, ["llm-rag", "evaluate", *map(str, args)])


def _files(tmp_path, qrels_text: str):
    corpus, queries, _q = _write_beir(tmp_path)
    path = tmp_path / "qrels.txt"
    path.write_text(qrels_text)
    return corpus, queries, str(path)


@pytest.mark.parametrize("text, fmt", [
    ("q0 d0 1\nq1 d1 1\nq2 d2 1\n", "tsv"),  # spaces, no header
    ("q0\td0\t1\nq1\td1\t1\nq2\td2\t1\n", "tsv"),  # tabs, no header
    ("query-id corpus-id score\nq0 d0 1\nq1 d1 1\nq2 d2 1\n", "tsv"),  # spaces, header
    ("q0 0 d0 1\nq1 0 d1 1\nq2 Q0 d2 1\n", "trec"),  # TREC qrels
])
def test_qrels_formats_are_read_and_scored(tmp_path, cli, text, fmt):
    corpus, queries, qrels = _files(tmp_path, text)
    result = _run(cli, corpus, queries, qrels, "--no-rerank")
    assert result.exit_code == 0, result.output
    assert "3 queries, 3 judgments" in result.output
    assert ("TREC 4 columns" in result.output) == (fmt == "trec")
    hybrid = next(line for line in result.output.splitlines() if line.startswith("| hybrid (RRF)"))
    assert float(hybrid.split("|")[2]) > 0.5, result.output  # not 0.0000 everywhere


def test_queries_without_a_positive_judgment_are_skipped(tmp_path, cli):
    corpus, queries, qrels = _files(tmp_path, "q0 d0 1\nq1 d1 1\nq2 d4 0\nq3 x1 -1\n")
    loaded, info = read_qrels(qrels)
    assert set(loaded) == {"q0", "q1"} and info.no_positive == ["q2", "q3"]
    result = _run(cli, corpus, queries, qrels, "--no-rerank")
    assert result.exit_code == 0, result.output
    assert "Scoring 2 queries" in result.output and "Skipped 2 with no positive judgment" in result.output
    assert "10 documents, 2 queries scored" in result.output


@pytest.mark.parametrize("which, lines, message", [
    ("corpus", ['{"_id": "zz1", "text": "a"}', '{"_id": "zz1", "text": "b"}'], "_id 'zz1' was already used on line 11"),
    ("corpus", ['{"_id": "zz1", "text": "a"}', '{"text": "no id"}'], "line 12: every line needs an \"_id\""),
    ("queries", ['{"_id": "zq", "text": "a"}', '{"_id": "zq", "text": "b"}'], "_id 'zq' was already used"),
    ("queries", ['{"_id": "zq", "text": "a"}', 'not json'], "line 7: not valid JSON"),
])
def test_bad_ids_are_refused_clearly(tmp_path, cli, which, lines, message):
    corpus, queries, qrels = _write_beir(tmp_path)
    target = corpus if which == "corpus" else queries
    with open(target, "a") as f:
        f.write("\n" + "\n".join(lines) + "\n")
    result = _run(cli, corpus, queries, qrels, "--no-rerank")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert message in result.output and "Traceback" not in result.output


def test_unusable_qrels_are_refused_not_scored_as_zero(tmp_path, cli):
    corpus, queries, qrels = _files(tmp_path, "q0,d0,1\nq1,d1,1\n")
    result = _run(cli, corpus, queries, qrels, "--no-rerank")
    assert result.exit_code == 1 and "expected 3 columns" in result.output, result.output
    corpus, queries, qrels = _files(tmp_path, "other0 d0 1\nother1 d1 1\n")
    result = _run(cli, corpus, queries, qrels, "--no-rerank")
    assert result.exit_code == 1 and "are these files of the same data set" in result.output
    with pytest.raises(EvalInputError, match="no query with a positive"):
        read_qrels(_files(tmp_path, "q0 d0 0\n")[2])


def test_progress_model_and_rerank_options(tmp_path, cli, monkeypatch):
    corpus, queries, qrels = _write_beir(tmp_path)
    scored = []

    class FakeEncoder:
        def ensure_ready(self):
            pass

        def score(self, question, passages, max_tokens=128):
            scored.append(len(passages))
            return np.array([len(set(question.split()) & set(p.lower().split())) for p in passages], float)

    import datasette_llm_core.embeddings.cross_encoder as ce

    monkeypatch.setattr(ce, "CrossEncoder", FakeEncoder)
    result = _run(cli, corpus, queries, qrels, "--model", "my-model", "--rerank-depth", "4")
    assert result.exit_code == 0, result.output
    assert cli.made[-1].model_id == "my-model" and "model my-model" in result.output
    assert "| hybrid + rerank (cross-encoder) |" in result.output and scored and max(scored) <= 4
    assert "embedding documents: 10/10" in result.output and "searching: 5/5" in result.output
    result = _run(cli, corpus, queries, qrels, "--no-rerank")
    assert "hybrid + rerank" not in result.output


class StopsAfter(HashEmbeddingModel):
    """Embeds ``limit`` texts, then the user presses Ctrl+C."""

    def __init__(self, limit):
        super().__init__("hash-embed")
        self.limit = limit
        self.done = 0

    def embed_sync(self, texts):
        if self.done + len(texts) > self.limit:
            raise KeyboardInterrupt
        self.done += len(texts)
        return super().embed_sync(texts)


def test_interrupted_run_keeps_what_it_embedded(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"_id": f"d{i}", "title": "", "text": f"document number {i}"})
                                for i in range(600)))
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"_id": "q0", "text": "document number 7"}))
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("q0\td7\t1\n")
    cache = tmp_path / "cache.npz"
    import datasette_llm_core.embeddings as embeddings

    model = StopsAfter(320)
    monkeypatch.setattr(embeddings, "local_model", lambda model_id=None: model)

    @click.group()
    def root():
        pass

    register(root)
    result = CliRunner().invoke(root, ["llm-rag", "evaluate", str(corpus), str(queries), str(qrels),
                                       "--cache", str(cache), "--no-rerank"])
    assert result.exit_code != 0  # interrupted
    kept = CachingEmbedder(HashEmbeddingModel("hash-embed"), str(cache))
    assert len(kept.cache) == model.done >= 256, (len(kept.cache), model.done)
    # the next run embeds only the rest
    model2 = StopsAfter(10_000)
    monkeypatch.setattr(embeddings, "local_model", lambda model_id=None: model2)
    result = CliRunner().invoke(root, ["llm-rag", "evaluate", str(corpus), str(queries), str(qrels),
                                       "--cache", str(cache), "--no-rerank"])
    assert result.exit_code == 0, result.output
    assert model2.done == 600 + 1 - model.done
    assert f"{model.done} vectors in the cache" in result.output
