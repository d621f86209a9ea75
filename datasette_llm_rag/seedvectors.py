"""Vectors computed earlier, reused by the indexer when the text and model match.

The demo indexes the same 1,600 rows on every fresh clone; embedding them is
most of the time ``make demo`` takes on a laptop. A seed file holds, for one
embedding model, the int8 vectors of texts keyed by the indexer's own text
hash (``textbuild.text_hash``), exported from a sidecar that model built
(``export_seed``). ``seeded_embed`` wraps the indexer's embed function: texts
found in the file take their stored vector, the others are embedded as
usual. Before the first stored vector is used, a few of the texts it covers
are embedded for real and compared with their stored vectors; if they
differ (another model, a changed file, a different runtime), the file is not
used at all and everything is embedded, so a seed file can make indexing
faster but never change what is indexed beyond int8 rounding, which the
sidecar applies anyway.

Nothing here imports Datasette.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence

import numpy as np

from .quant import decode_centre, quantize
from .textbuild import text_hash

#: Stored vectors re-embedded and compared before a seed file is used.
VERIFY_SAMPLE = 4
#: Cosine a re-embedded vector must reach with its stored one (int8 rounding
#: alone keeps it above 0.999).
MIN_COSINE = 0.99

EmbedFn = Callable[..., Awaitable[Sequence[Sequence[float]]]]


@dataclass
class SeedVectors:
    """Stored vectors of one model, by text hash; counts what was used."""

    model_id: str
    rows: dict[str, int]
    q8: np.ndarray
    scale: np.ndarray
    used: int = 0
    #: None until checked; then True, or False with ``reason``
    verified: bool | None = None
    reason: str = ""
    notes: list[str] = field(default_factory=list)

    def vector(self, text: str) -> np.ndarray | None:
        i = self.rows.get(text_hash(text))
        if i is None:
            return None
        return self.q8[i].astype(np.float32) * float(self.scale[i])

    def __len__(self) -> int:
        return len(self.rows)


def load_seed(path: str | os.PathLike, model_id: str) -> SeedVectors | None:
    """The seed file at ``path`` if it was made with ``model_id``; None (and
    why, in the returned object's absence, is not an error) otherwise."""
    with np.load(path, allow_pickle=False) as data:
        if str(data["model"]) != model_id:
            return None
        hashes = data["hashes"].tolist()
        return SeedVectors(model_id, {h: i for i, h in enumerate(hashes)},
                           np.asarray(data["q8"], np.int8), np.asarray(data["scale"], np.float32))


def export_seed(sidecars: Sequence[str | os.PathLike], out: str | os.PathLike) -> tuple[str, int]:
    """Write the vectors of every entry of ``sidecars`` (one model) to ``out``;
    returns (model id, vectors written)."""
    model_id = None
    hashes: list[str] = []
    parts: list[np.ndarray] = []
    seen: set[str] = set()
    for path in sidecars:
        conn = sqlite3.connect(f"file:{os.fspath(path)}?mode=ro", uri=True)
        try:
            meta = dict(conn.execute("select key, value from meta").fetchall())
            if model_id is None:
                model_id = meta["embedding_model"]
            elif meta["embedding_model"] != model_id:
                raise ValueError(f"{path} was built with {meta['embedding_model']}, not {model_id}")
            dims = int(meta.get("dimensions") or 0)
            centre = decode_centre(meta.get("centre"), dims)
            for h, code, scale in conn.execute(
                "select e.hash, v.q8, v.scale from entries e join vectors v on v.entry_id = e.id order by e.id"
            ):
                if h not in seen:
                    seen.add(h)
                    hashes.append(h)
                    v = np.frombuffer(code, np.int8).astype(np.float32) * np.float32(scale)
                    parts.append(v + centre if centre is not None else v)
        finally:
            conn.close()
    if model_id is None:
        raise ValueError("no sidecar given")
    # stored uncentred (a seed file may serve any sidecar): q8 * scale ~= v
    q8, scales = quantize(np.stack(parts)) if parts else (np.zeros((0, 0), np.int8), np.zeros(0, np.float32))
    tmp = os.fspath(out) + ".tmp.npz"
    np.savez_compressed(tmp, model=np.array(model_id), hashes=np.array(hashes),
                        q8=q8, scale=scales)
    os.replace(tmp, out)
    return model_id, len(hashes)


def seeded_embed(embed: EmbedFn, seeds: SeedVectors, *, sample: int = VERIFY_SAMPLE) -> EmbedFn:
    """``embed`` that takes stored vectors for the texts ``seeds`` holds, once
    ``sample`` of them re-embedded by ``embed`` matched their stored vectors."""

    async def run(texts: Sequence[str], *, kind: str = "document"):
        stored = [seeds.vector(t) if kind == "document" and seeds.verified is not False else None
                  for t in texts]
        have = [i for i, v in enumerate(stored) if v is not None]
        if have and seeds.verified is None:
            check = have[:sample]
            fresh = np.asarray(await embed([texts[i] for i in check], kind=kind), np.float32)
            worst = 1.0
            for row, i in enumerate(check):
                a, b = fresh[row], stored[i]
                worst = min(worst, float(a @ b / max(1e-12, np.linalg.norm(a) * np.linalg.norm(b))))
            seeds.verified = worst >= MIN_COSINE
            if not seeds.verified:
                seeds.reason = (f"a re-embedded text matched its stored vector only to cosine {worst:.3f} "
                                f"(needs {MIN_COSINE}): the file is not used, every text is embedded")
                stored = [None] * len(texts)
                have = []
        todo = [i for i, v in enumerate(stored) if v is None]
        out: list = list(stored)
        if todo:
            vectors = await embed([texts[i] for i in todo], kind=kind)
            for i, v in zip(todo, vectors):
                out[i] = np.asarray(v, np.float32)
        seeds.used += len(have)
        return np.stack(out) if out else np.zeros((0, seeds.q8.shape[1]), np.float32)

    return run
