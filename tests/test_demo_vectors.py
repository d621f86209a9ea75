"""The demo's shipped vectors (demo_data/vectors.npz): used only when they match.

``make demo`` indexes about 1,600 rows on a fresh clone; their vectors ship
with the demo so that it serves quickly (docs/reliability.md has the timing).
These tests keep that honest: the file must cover every text the demo
indexes (else it is stale: rebuild it with ``python demo_data/seed_vectors.py``),
its vectors must match what the model computes, and a file that does not
match (tampered, another model) must not be used.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from datasette_llm_rag.seedvectors import export_seed, load_seed

from .rag_helpers import make_db
from .test_rag_cli import _metadata, cli  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "demo_data" / "vectors.npz"


def _vectors(side: str) -> dict[str, np.ndarray]:
    conn = sqlite3.connect(side)
    try:
        return {h: np.frombuffer(q8, np.int8).astype(np.float32) * s for h, q8, s in conn.execute(
            "select e.hash, v.q8, v.scale from entries e join vectors v on v.entry_id = e.id")}
    finally:
        conn.close()


def _cosines(a: dict, b: dict) -> list[float]:
    assert a.keys() == b.keys()
    return [float(a[k] @ b[k] / (np.linalg.norm(a[k]) * np.linalg.norm(b[k]))) for k in a]


def test_seed_file_is_used_when_it_matches_and_refused_when_not(tmp_path, cli, fake_models):  # noqa: F811
    db = make_db(tmp_path / "news.db", [(i, f"T{i}", f"body of story {i}") for i in range(30)], [])
    meta = _metadata(tmp_path)
    runner = CliRunner()
    first = str(tmp_path / "first.llm-rag.db")
    result = runner.invoke(cli, ["llm-rag", "index", db, "-m", meta, "--sidecar", first])
    assert result.exit_code == 0, result.output
    seeds = tmp_path / "seeds.npz"
    assert export_seed([first], seeds) == ("hash-embed", 30)

    second = str(tmp_path / "second.llm-rag.db")
    result = runner.invoke(cli, ["llm-rag", "index", db, "-m", meta, "--sidecar", second, "--vectors", str(seeds)])
    assert result.exit_code == 0, result.output
    assert "30 texts embedded, 30 of them from seeds.npz" in result.output
    assert min(_cosines(_vectors(first), _vectors(second))) > 0.999

    # Tampered: every stored vector turned around. The sample check fails, the
    # file is not used and every text is embedded by the model.
    with np.load(seeds) as data:
        parts = dict(data)
    parts["q8"] = -parts["q8"]
    bad = tmp_path / "bad.npz"
    np.savez(bad, **parts)
    third = str(tmp_path / "third.llm-rag.db")
    result = runner.invoke(cli, ["llm-rag", "index", db, "-m", meta, "--sidecar", third, "--vectors", str(bad)])
    assert result.exit_code == 0, result.output
    assert "the file is not used, every text is embedded" in result.output
    assert "0 of them from bad.npz" in result.output
    assert min(_cosines(_vectors(first), _vectors(third))) > 0.999

    # Another model's file is not even opened for vectors.
    parts["model"] = np.array("all-MiniLM-L6-v2")
    other = tmp_path / "other.npz"
    np.savez(other, **parts)
    assert load_seed(other, "hash-embed") is None
    fourth = str(tmp_path / "fourth.llm-rag.db")
    result = runner.invoke(cli, ["llm-rag", "index", db, "-m", meta, "--sidecar", fourth, "--vectors", str(other)])
    assert result.exit_code == 0, result.output
    assert "holds vectors of another model than hash-embed: not used" in result.output
    assert min(_cosines(_vectors(first), _vectors(fourth))) > 0.999


def test_shipped_demo_vectors_cover_the_demo_and_match_the_model(tmp_path):
    """The real demo data and model, through ``datasette llm-rag index`` as
    ``make demo`` runs it: nothing left to embed, and the vectors match."""
    pytest.importorskip("onnxruntime")
    assert SEEDS.exists(), "demo_data/vectors.npz is missing: run python demo_data/seed_vectors.py"
    sys.path.insert(0, str(ROOT / "demo_data"))
    try:
        from build import build
        from serve import indexed_databases
    finally:
        sys.path.remove(str(ROOT / "demo_data"))
    shutil.copy(ROOT / "metadata.yml", tmp_path / "metadata.yml")  # its relative paths land in tmp_path
    paths = build(tmp_path / "demo_data" / "build")
    seeds = load_seed(SEEDS, "x")  # noqa: F841 - only checks the file opens
    for name in indexed_databases(tmp_path / "metadata.yml"):
        side = tmp_path / f"{name}.llm-rag.db"
        run = subprocess.run([sys.executable, "-m", "datasette", "llm-rag", "index", str(paths[name]),
                              "-m", "metadata.yml", "--sidecar", str(side), "--vectors", str(SEEDS)],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        found = re.search(r"(\d+) texts embedded, (\d+) of them from vectors.npz", run.stdout)
        assert found, run.stdout + run.stderr[-2000:]
        embedded, stored = map(int, found.groups())
        assert embedded > 100 and stored == embedded, (
            f"{name}: {embedded - stored} of {embedded} texts are not in demo_data/vectors.npz: "
            "run python demo_data/seed_vectors.py")
