"""The embedding world of synthetic traffic: cluster centres on the unit sphere.

Job
---
:class:`_World` draws the Gaussian-mixture clusters that embeddings of the traffic, eval
sets and bad events are sampled from: ``_N_BASE`` clusters the eval set covers and
``_N_NEW`` drift clusters absent from it. :func:`_b64_rows` writes vectors as the wire's
base64 of little-endian float32.
"""

from __future__ import annotations

import base64
import zlib

import numpy as np
import pybase64

_N_BASE = 24
_N_NEW = 12


class _World:
    """Cluster centres on the unit sphere: rows ``[0, _N_BASE)`` are covered by eval sets,
    ``[_N_BASE, _N_BASE + _N_NEW)`` are the drift clusters. ``centres`` float64[k, dim]."""

    def __init__(self, world_seed: int, dim: int, embedding_model: str) -> None:
        rng = np.random.default_rng([world_seed, dim, zlib.crc32(embedding_model.encode())])
        k = _N_BASE + _N_NEW
        shared = rng.standard_normal(dim)
        shared /= np.linalg.norm(shared)
        own = rng.standard_normal((k, dim))
        own /= np.linalg.norm(own, axis=1, keepdims=True)
        # cos(centre_a, centre_b) ~ 0.3: the common direction carries 30 % of the energy.
        centres = np.sqrt(0.3) * shared + np.sqrt(0.7) * own
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        # Noise per dimension so that |noise|^2 ~ 0.2..0.4: cos(sample, centre) ~ 0.85..0.9.
        self.sigma = np.sqrt(rng.uniform(0.2, 0.4, k) / dim)
        # float32 copies, cast once: a gather per sample then costs a tenth (same values)
        self._centres32 = self.centres.astype(np.float32)
        self._sigma32 = self.sigma.astype(np.float32)
        popularity = 1.0 / np.arange(1, _N_BASE + 1) ** 0.7
        self.base_p = popularity / popularity.sum()
        self.dim = dim

    def sample(self, clusters: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Unit vectors ``float32[len(clusters), dim]`` around the given cluster centres."""
        noise = rng.standard_normal((len(clusters), self.dim), dtype=np.float32)
        vectors = self._centres32[clusters]
        noise *= self._sigma32[clusters, None]
        vectors += noise
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors

    def clusters(self, new: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A cluster per event: a new (drift) cluster where ``new`` is true, else a base one."""
        base = rng.choice(_N_BASE, size=len(new), p=self.base_p)
        fresh = _N_BASE + rng.integers(0, _N_NEW, size=len(new))
        return np.where(new, fresh, base)


def _b64_rows(vectors: np.ndarray) -> list[str]:
    """Base64 of each row's little-endian float32 bytes, as ``str``."""
    raw = np.ascontiguousarray(vectors, dtype="<f4")
    row_bytes = raw.shape[1] * 4
    if row_bytes % 3 == 0:
        # Rows of a multiple of 3 bytes encode without padding, so one call encodes them
        # all and the text splits at fixed offsets (much faster than a call per row);
        # pybase64 (SIMD) writes the same text as the standard library, ~3x faster.
        text = pybase64.b64encode(raw.data).decode("ascii")
        step = row_bytes // 3 * 4
        return [text[i : i + step] for i in range(0, len(text), step)]
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in raw]
