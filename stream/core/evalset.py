"""Eval sets: loading, versioning, coverage-threshold calibration and hot reload.

An eval-set file is JSONL, one ``{"id", "embedding", "embedding_model"}`` object per line,
the embedding encoded as in call events (base64 of little-endian float32, or a JSON number
array). One file may hold the sets of several embedding models; vectors of different
models are never compared, so the file yields one :class:`EvalSet` per model.

Each set is versioned by the content hash of its own lines, so editing one model's set does
not change the others' versions (and a reload keeps their scorers). The coverage threshold
defaults to a low percentile of the set's leave-one-out nearest-neighbour similarities:
an input less similar to its nearest eval item than almost every eval item is to its own
nearest neighbour is something the eval set does not cover.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .drift import exact_nearest
from .errors import ConfigError

log = logging.getLogger(__name__)

# Leave-one-out calibration runs on at most this many rows (each against the whole set):
# a 5th percentile is stable to about a hundredth with 2,000 samples, and the cost stays
# bounded (about 1.5 GFLOP per 1,000 eval vectors at d=384).
CALIBRATION_SAMPLE = 2_000
_CALIBRATION_SEED = 20_240_601


@dataclass(frozen=True, slots=True, eq=False)
class EvalSet:
    """One embedding model's eval set.

    ``version``: first 16 hex digits of the sha256 of this model's lines of the file;
    ``ids``: item ids in file order; ``vectors``: ``float32[m, d]`` unit-length,
    C-contiguous; ``centroid``: ``float32[d]`` unit-length mean direction (all zeros in the
    degenerate case of a zero mean); ``threshold``: nearest-neighbour cosine similarity
    below which an input is uncovered; ``dim``: ``d``.
    """

    embedding_model: str
    version: str
    ids: list[str]
    vectors: np.ndarray
    centroid: np.ndarray
    threshold: float
    dim: int

    @property
    def size(self) -> int:
        """Number of eval vectors ``m``."""
        return int(self.vectors.shape[0])


def decode_embedding(value: str | list[Any]) -> np.ndarray:
    """Decode one embedding as carried in events and eval files into ``float32[d]``.

    ``value``: base64 (standard alphabet, padded) of little-endian float32, or a list of
    JSON numbers. Raises ``ValueError`` on bad base64, a byte length that is not a multiple
    of 4, an empty vector, or a list holding anything but numbers. Finiteness is not
    checked here (see :func:`~.drift.finite_rows`).
    """
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"bad base64 embedding: {exc}") from None
        if len(raw) % 4:
            raise ValueError(f"embedding has {len(raw)} bytes, not a multiple of 4")
        if not raw:
            raise ValueError("embedding is empty")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if isinstance(value, list):
        if not value:
            raise ValueError("embedding is empty")
        # bool is an int subclass; numpy would also turn numeric strings into numbers.
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int | float):
                raise ValueError("embedding array must hold numbers only")
        try:
            # Out-of-range numbers become ±inf (rejected as non-finite), not a warning.
            with np.errstate(over="ignore"):
                return np.asarray(value, dtype=np.float32)
        except OverflowError as exc:
            raise ValueError(f"embedding value out of range: {exc}") from None
    raise ValueError(
        f"embedding must be a base64 string or a number array, not {type(value).__name__}"
    )


def calibration_rows(m: int) -> np.ndarray:
    """Rows (``int64``, ascending) whose leave-one-out similarity calibrates a set of ``m``.

    All rows up to :data:`CALIBRATION_SAMPLE`, else a fixed pseudo-random sample of that
    size: the same set always gets the same threshold.
    """
    if m <= CALIBRATION_SAMPLE:
        return np.arange(m, dtype=np.int64)
    rng = np.random.default_rng(_CALIBRATION_SEED)
    return np.sort(rng.choice(m, size=CALIBRATION_SAMPLE, replace=False)).astype(np.int64)


def calibrate_threshold(vectors: np.ndarray, percentile: float) -> float:
    """``percentile``-th percentile of leave-one-out nearest-neighbour cosine similarities.

    ``vectors``: ``float32[m, d]`` unit-length, ``m >= 2``. For ``m`` above
    :data:`CALIBRATION_SAMPLE` the rows of a fixed pseudo-random sample of that size are each
    matched against the whole set (minus themselves). Percentile as ``numpy.percentile``
    with linear interpolation.
    """
    m = vectors.shape[0]
    if m < 2:
        raise ValueError("leave-one-out calibration needs at least 2 vectors")
    rows = calibration_rows(m)
    centroid = np.zeros(vectors.shape[1], dtype=np.float32)
    _, nn_sim, _, _ = exact_nearest(
        np.ascontiguousarray(vectors[rows]), vectors, centroid, exclude=rows
    )
    return float(np.percentile(nn_sim.astype(np.float64), percentile))


def _fail(path: str, lineno: int | None, message: str) -> ConfigError:
    where = f"{path}:{lineno}" if lineno is not None else path
    return ConfigError(f"eval set {where}: {' '.join(message.split())}")


def _parse(
    data: bytes, path: str, threshold: float | None, percentile: float
) -> dict[str, EvalSet]:
    if threshold is not None and not math.isfinite(threshold):
        raise _fail(path, None, f"threshold must be a finite number, got {threshold}")
    if not 0.0 <= percentile <= 100.0:
        raise _fail(path, None, f"percentile must be in [0, 100], got {percentile}")
    by_model: dict[str, tuple[list[str], list[np.ndarray], list[bytes], int]] = {}
    seen: dict[str, set[str]] = {}
    dim: int | None = None
    dim_line = 0
    for lineno, raw_line in enumerate(data.split(b"\n"), start=1):
        line = raw_line.strip()
        if not line:
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise _fail(path, lineno, f"bad JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise _fail(path, lineno, "each line must be a JSON object")
        item_id = obj.get("id")
        model = obj.get("embedding_model")
        if isinstance(item_id, bool) or not isinstance(item_id, str | int):
            raise _fail(path, lineno, 'missing or invalid "id" (string expected)')
        if not isinstance(model, str) or not model:
            raise _fail(path, lineno, 'missing or invalid "embedding_model" (string expected)')
        if "embedding" not in obj:
            raise _fail(path, lineno, 'missing "embedding"')
        try:
            vector = decode_embedding(obj["embedding"])
        except ValueError as exc:
            raise _fail(path, lineno, str(exc)) from None
        if not np.isfinite(vector).all():
            raise _fail(path, lineno, "embedding contains NaN or infinity")
        norm = float(np.linalg.norm(vector.astype(np.float64)))
        if norm == 0.0:
            raise _fail(path, lineno, "embedding is the zero vector")
        if dim is None:
            dim, dim_line = vector.shape[0], lineno
        elif vector.shape[0] != dim:
            raise _fail(
                path,
                lineno,
                f"embedding has dimension {vector.shape[0]}, line {dim_line} has {dim}",
            )
        item_id = str(item_id)
        ids_seen = seen.setdefault(model, set())
        if item_id in ids_seen:
            raise _fail(path, lineno, f"duplicate id {item_id!r} for model {model!r}")
        ids_seen.add(item_id)
        ids, vecs, lines, _ = by_model.setdefault(model, ([], [], [], lineno))
        ids.append(item_id)
        vecs.append((vector.astype(np.float64) / norm).astype(np.float32))
        lines.append(line)
    if not by_model:
        raise _fail(path, None, "the file holds no eval items")
    sets: dict[str, EvalSet] = {}
    for model, (ids, vecs, lines, first_line) in by_model.items():
        vectors = np.ascontiguousarray(np.stack(vecs))
        mean = vectors.astype(np.float64).mean(axis=0)
        mean_norm = float(np.linalg.norm(mean))
        centroid = (mean / mean_norm if mean_norm > 0 else mean).astype(np.float32)
        if threshold is not None:
            model_threshold = float(threshold)
        elif vectors.shape[0] < 2:
            raise _fail(
                path,
                first_line,
                f"the set of {model!r} has one vector; calibrating its threshold needs at "
                "least 2 (add items or give an explicit threshold)",
            )
        else:
            model_threshold = calibrate_threshold(vectors, percentile)
        version = hashlib.sha256(b"\n".join(lines)).hexdigest()[:16]
        sets[model] = EvalSet(
            embedding_model=model,
            version=version,
            ids=ids,
            vectors=vectors,
            centroid=centroid,
            threshold=model_threshold,
            dim=int(vectors.shape[1]),
        )
    return sets


def _read(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise _fail(str(path), None, f"cannot read: {exc.strerror or exc}") from None


def load_eval_sets(
    path: str | os.PathLike[str], *, threshold: float | None = None, percentile: float = 5.0
) -> dict[str, EvalSet]:
    """Load an eval-set JSONL file into ``{embedding_model: EvalSet}``.

    ``threshold`` overrides the calibrated coverage threshold of every set; otherwise each
    set's threshold is the ``percentile``-th percentile (0-100) of its leave-one-out
    nearest-neighbour similarities (see :func:`calibrate_threshold`). Any problem (missing
    file, bad JSON, bad base64, NaN/inf, zero vector, inconsistent dimensions, duplicate id,
    empty file) raises :class:`ConfigError` with one line naming the file and line.
    """
    return _parse(_read(path), str(path), threshold, percentile)


class EvalSetWatcher:
    """Keeps the eval sets of one file current.

    :meth:`maybe_reload` is cheap enough to call per batch: a ``stat`` (mtime, size, inode)
    and, only when that changed, a read and content hash; parsing happens only when the
    content changed. A broken new file keeps the previous sets and logs a warning. Sets
    whose version did not change are kept as the same objects, so their scorers (and hnswlib
    indexes) can be kept too.
    """

    def __init__(self, path: str | os.PathLike[str], **load_kwargs: Any) -> None:
        unknown = set(load_kwargs) - {"threshold", "percentile"}
        if unknown:
            raise TypeError(f"unknown load_eval_sets arguments: {sorted(unknown)}")
        self.path = str(path)
        self._kwargs: Mapping[str, Any] = dict(load_kwargs)
        data = _read(self.path)
        self._stat = self._stat_key()
        self._digest = hashlib.sha256(data).digest()
        self.current: dict[str, EvalSet] = _parse(data, self.path, **self._load_args())

    def _load_args(self) -> dict[str, Any]:
        return {
            "threshold": self._kwargs.get("threshold"),
            "percentile": self._kwargs.get("percentile", 5.0),
        }

    def _stat_key(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def maybe_reload(self) -> bool:
        """Reload when the file's content changed; True when :attr:`current` was replaced."""
        key = self._stat_key()
        if key == self._stat:
            return False
        self._stat = key
        if key is None:
            log.warning("eval set %s disappeared; keeping the loaded sets", self.path)
            return False
        try:
            data = _read(self.path)
        except ConfigError as exc:
            log.warning("%s; keeping the loaded sets", exc)
            return False
        digest = hashlib.sha256(data).digest()
        if digest == self._digest:
            return False
        try:
            new = _parse(data, self.path, **self._load_args())
        except ConfigError as exc:
            log.warning("%s; keeping the loaded sets", exc)
            return False
        self._digest = digest
        for model, evalset in list(new.items()):
            old = self.current.get(model)
            if old is not None and old.version == evalset.version:
                new[model] = old
        self.current = new
        return True
