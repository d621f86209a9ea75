"""Int8 scalar quantisation of embedding vectors, one scale per vector.

``q8 = round(v / scale)`` with ``scale = max|v| / 127`` keeps every vector's
largest component exact to the byte and costs one byte per dimension (384
bytes for MiniLM instead of 1,536 for float32). Dot products of dequantised
vectors differ from float32 ones by well under 1e-3 for unit vectors, which
leaves the top of a ranking intact.

Models whose vectors share a large common component (bge-small: cosines of
unrelated texts ~0.6-0.7, a question's top ten within ~0.03) need finer
steps than that: the sidecar stores a *centre* (the mean of its first batch)
and quantises ``v - centre``; a dot product is then ``q . (q8 * scale) + q .
centre``. Sidecars written before have no centre (zero), and read as before.

The int8 rounding error (up to half a step, ~4e-4 a coordinate for bge-small)
is about the size of the gap between a question's 10th and 11th best rows in
a million, so int8 scores swap near-ties. Sidecars written since version 3 of
the schema also keep a *residual* per vector: what rounding lost, as a signed
4-bit code in steps of ``scale / 14`` (half a byte per dimension, never
loaded into memory). Search reads it only for its few best rows and rescores
them to within ~2e-5 of float32 (store.py).
"""

from __future__ import annotations

import base64

import numpy as np

#: Residual steps per int8 step: the residual's step is ``scale / RESIDUAL_STEPS``.
RESIDUAL_STEPS = 14
#: What ``meta.residual`` says when ``vectors.r4`` holds ``residual_codes``.
RESIDUAL_FORMAT = "int4-step-scale/14"
#: Vectors a first batch needs before its mean becomes the sidecar's centre.
MIN_CENTRE_BATCH = 16


def quantize(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(q8 int8 (n, d), scale float32 (n,))`` for float vectors of shape (n, d)."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"expected a 2-d array of vectors, got shape {v.shape}")
    peak = np.abs(v).max(axis=1)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q8 = np.rint(v / scale[:, None]).clip(-127, 127).astype(np.int8)
    return q8, scale


def dequantize(q8: np.ndarray, scale: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Float32 vectors back from codes and scales (optionally into ``out``)."""
    if out is None:
        out = np.empty(q8.shape, dtype=np.float32)
    np.multiply(q8, scale[:, None], out=out, dtype=np.float32, casting="unsafe")
    return out


def choose_centre(vectors: np.ndarray) -> np.ndarray | None:
    """The centre for a new sidecar: the mean of its first batch, if large enough."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2 or v.shape[0] < MIN_CENTRE_BATCH:
        return None
    return v.mean(axis=0).astype(np.float32)


def encode_centre(centre: np.ndarray) -> str:
    """The centre as text for the sidecar's ``meta`` table (float32, base64)."""
    return base64.b64encode(np.asarray(centre, "<f4").tobytes()).decode("ascii")


def decode_centre(text: str | None, dims: int) -> np.ndarray | None:
    """The centre stored by ``encode_centre``, or None (no centre, or not ``dims`` long)."""
    if not text:
        return None
    try:
        centre = np.frombuffer(base64.b64decode(text), "<f4").astype(np.float32)
    except ValueError:
        return None
    return centre if centre.shape == (dims,) else None


def residual_codes(vectors: np.ndarray, q8: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """What ``q8 * scale`` lost of ``vectors``, as 4-bit codes, two per byte.

    The residual is at most half an int8 step, so ``round(residual * 14 /
    scale)`` lies in -7..7; it is stored plus 8 (1..15), dimension ``2i`` in
    the low nibble of byte ``i`` and ``2i + 1`` in the high one. Shape (n, ceil(d/2)).
    """
    v = np.asarray(vectors, dtype=np.float32)
    lost = v - dequantize(q8, scale)
    r = np.rint(lost * (RESIDUAL_STEPS / scale[:, None])).clip(-7, 7).astype(np.int8) + 8
    r = r.astype(np.uint8)
    if r.shape[1] % 2:
        r = np.pad(r, ((0, 0), (0, 1)), constant_values=8)
    return np.ascontiguousarray(r[:, 0::2] | (r[:, 1::2] << 4))


def residual_values(packed: np.ndarray, dims: int) -> np.ndarray:
    """The residuals of ``residual_codes`` in int8 steps (float32, shape (n, dims)):
    a vector is ``(q8 + residual_values(...)) * scale`` (+ centre)."""
    p = np.asarray(packed, dtype=np.uint8)
    out = np.empty((p.shape[0], 2 * p.shape[1]), np.float32)
    out[:, 0::2] = p & 15
    out[:, 1::2] = p >> 4
    out -= 8
    out *= 1.0 / RESIDUAL_STEPS
    return out[:, :dims]
