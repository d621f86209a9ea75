"""Embedding models that ship with the suite.

``LocalMiniLM`` (all-MiniLM-L6-v2, int8 ONNX, 384 dimensions) runs on the CPU
with no API key and is always registered, so it is the default embedder
unless ``defaults: embed:`` names another model. Importing this package does
not import onnxruntime; the model loads on its first use.
"""

from __future__ import annotations

from .local_minilm import MODEL_ID as LOCAL_MODEL_ID
from .local_minilm import LocalMiniLM

__all__ = ["LOCAL_MODEL_ID", "LocalMiniLM", "local_embedding_models"]


def local_embedding_models() -> list[LocalMiniLM]:
    """The built-in embedding models (for the register_embedding_models hook)."""
    return [LocalMiniLM()]
