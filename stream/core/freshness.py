"""RAG freshness: which retrieved chunks, and so which queries, were stale.

A chunk is *outdated* when its source changed after it was embedded
(``source_updated_at > embedded_at``) and *too old* when the query ran more than the index's
max age after it was embedded (``ts - embedded_at > max_age``); it is *stale* when either
holds. A query is stale when any of its chunks is. For outdated chunks the lag
``ts - source_updated_at`` (how long the source had already changed when the answer was
built) feeds the per-window lag quantiles.

Chunks of a batch are flat arrays; event ``i`` owns ``chunk_offsets[i]:chunk_offsets[i+1]``.
A missing time is ``np.iinfo(np.int64).min`` (:data:`MISSING_MS`): a chunk without
``source_updated_at`` cannot be outdated, one without ``embedded_at`` is neither outdated
nor too old (nothing is known about it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ._numba import njit
from .timeutil import MS_PER_DAY

DEFAULT_MAX_AGE_MS = 30 * MS_PER_DAY
MISSING_MS = int(np.iinfo(np.int64).min)


class FreshnessConfig(BaseModel):
    """Freshness limits and alerting.

    ``default_max_age_days``: max chunk age of any index version not listed in
    ``max_age_days`` (keyed by ``retrieval.index_version``); ``stale_share_threshold``:
    stale-query share of a window above which it alerts; ``min_count``: minimum number of
    retrieval queries in the window for an alert.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    default_max_age_days: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    max_age_days: dict[str, float] = Field(default_factory=dict)
    stale_share_threshold: float = Field(default=0.2, ge=0.0, le=1.0)
    min_count: int = Field(default=20, ge=1)

    @field_validator("max_age_days")
    @classmethod
    def _positive_ages(cls, value: dict[str, float]) -> dict[str, float]:
        for index_version, days in value.items():
            if not (days > 0 and np.isfinite(days)):
                raise ValueError(
                    f"max_age_days[{index_version!r}] must be a positive number, got {days}"
                )
        return value


def _days_to_ms(days: float) -> int:
    return round(days * MS_PER_DAY)


def max_age_for(config: FreshnessConfig, index_versions: np.ndarray) -> np.ndarray:
    """Max chunk age in ms per event, ``int64[n]``, from ``index_versions`` (``object[n]``).

    ``None`` and unlisted versions get the default. Resolved once per distinct value of the
    batch, then mapped in C (no Python bytecode per event).
    """
    versions = np.asarray(index_versions, dtype=object)
    if versions.ndim != 1:
        raise ValueError(f"index_versions must be one-dimensional, got shape {versions.shape}")
    default = _days_to_ms(config.default_max_age_days)
    if not config.max_age_days:
        return np.full(versions.shape[0], default, dtype=np.int64)
    codes, uniques = pd.factorize(versions, sort=False)  # None comes back as -1
    table = [
        _days_to_ms(config.max_age_days[v]) if isinstance(v, str) and v in config.max_age_days
        else default
        for v in uniques.tolist()
    ]  # fmt: skip
    return np.asarray([*table, default], dtype=np.int64)[codes]  # -1 picks the trailing default


@dataclass(frozen=True, slots=True)
class Staleness:
    """Per-event freshness of one batch of ``n`` events with ``c`` chunks.

    ``n_chunks``/``n_stale``/``n_outdated``: ``int32[n]``; ``stale_query``: ``bool[n]``
    (any stale chunk); ``retrieval``: ``bool[n]`` (``n_chunks > 0``); ``lag_ms``:
    ``int64[o]`` = ``ts - source_updated_at`` of each of the ``o`` outdated chunks, in chunk
    order (negative when the source changed after the query: clock skew); ``lag_event``:
    ``int64[o]`` index of the event owning each lag.
    """

    n_chunks: np.ndarray
    n_stale: np.ndarray
    n_outdated: np.ndarray
    stale_query: np.ndarray
    retrieval: np.ndarray
    lag_ms: np.ndarray
    lag_event: np.ndarray


# Compiled kernels take positional arguments only (numba has no keyword-only parameters).
@njit
def _staleness_kernel(  # noqa: PLR0917
    ts_ms: np.ndarray,
    chunk_offsets: np.ndarray,
    embedded_at_ms: np.ndarray,
    source_updated_at_ms: np.ndarray,
    max_age_ms: np.ndarray,
    missing: np.int64,
    n_stale: np.ndarray,
    n_outdated: np.ndarray,
    lag_ms: np.ndarray,
    lag_event: np.ndarray,
) -> int:
    n_lags = 0
    for i in range(ts_ms.shape[0]):
        ts = ts_ms[i]
        max_age = max_age_ms[i]
        stale = 0
        outdated = 0
        for c in range(chunk_offsets[i], chunk_offsets[i + 1]):
            embedded = embedded_at_ms[c]
            if embedded == missing:
                continue
            source = source_updated_at_ms[c]
            is_outdated = source != missing and source > embedded
            # Compare ages without computing ts - embedded, which can overflow int64 for
            # absurd but representable times: ts - embedded > max_age  <=>  ts - max_age > embedded
            # when ts - max_age does not underflow (max_age >= 0, ts far from int64 min).
            is_too_old = ts - max_age > embedded
            if is_outdated:
                outdated += 1
                lag_ms[n_lags] = ts - source
                lag_event[n_lags] = i
                n_lags += 1
            if is_outdated or is_too_old:
                stale += 1
        n_stale[i] = stale
        n_outdated[i] = outdated
    return n_lags


def chunk_staleness(
    ts_ms: np.ndarray,
    chunk_offsets: np.ndarray,
    embedded_at_ms: np.ndarray,
    source_updated_at_ms: np.ndarray,
    max_age_ms: np.ndarray,
) -> Staleness:
    """Stale/outdated chunk counts per event and the lags of outdated chunks.

    ``ts_ms``: ``int64[n]`` query times; ``chunk_offsets``: ``int64[n+1]`` (starts at 0,
    non-decreasing, ends at ``c``); ``embedded_at_ms``/``source_updated_at_ms``: ``int64[c]``
    (missing = :data:`MISSING_MS`); ``max_age_ms``: ``int64[n]`` (>= 0, see
    :func:`max_age_for`). Equal times are not outdated; an age of exactly ``max_age`` is not
    too old.
    """
    arrays = {
        "ts_ms": ts_ms,
        "chunk_offsets": chunk_offsets,
        "embedded_at_ms": embedded_at_ms,
        "source_updated_at_ms": source_updated_at_ms,
        "max_age_ms": max_age_ms,
    }
    for name, array in arrays.items():
        if not isinstance(array, np.ndarray) or array.ndim != 1 or array.dtype != np.int64:
            raise ValueError(f"{name} must be a 1-d int64 numpy array")
    n = ts_ms.shape[0]
    c = embedded_at_ms.shape[0]
    if chunk_offsets.shape[0] != n + 1 or max_age_ms.shape[0] != n:
        raise ValueError(
            f"shapes: ts_ms[{n}] needs chunk_offsets[{n + 1}] and max_age_ms[{n}], got "
            f"{chunk_offsets.shape[0]} and {max_age_ms.shape[0]}"
        )
    if source_updated_at_ms.shape[0] != c:
        raise ValueError("embedded_at_ms and source_updated_at_ms must have one length")
    if chunk_offsets[0] != 0 or chunk_offsets[-1] != c or np.any(np.diff(chunk_offsets) < 0):
        raise ValueError("chunk_offsets must start at 0, not decrease and end at the chunk count")
    if n and int(max_age_ms.min()) < 0:
        raise ValueError("max_age_ms must be >= 0")
    # Keeps ``ts - max_age`` in the kernel from wrapping around (decoders reject such times).
    if n and int(ts_ms.min()) < MISSING_MS + int(max_age_ms.max()) + 1:
        raise ValueError("ts_ms too close to the int64 minimum")
    n_stale = np.empty(n, dtype=np.int32)
    n_outdated = np.empty(n, dtype=np.int32)
    lag_ms = np.empty(c, dtype=np.int64)
    lag_event = np.empty(c, dtype=np.int64)
    n_lags = _staleness_kernel(
        ts_ms,
        chunk_offsets,
        embedded_at_ms,
        source_updated_at_ms,
        max_age_ms,
        np.int64(MISSING_MS),
        n_stale,
        n_outdated,
        lag_ms,
        lag_event,
    )
    n_chunks = np.diff(chunk_offsets).astype(np.int32)
    return Staleness(
        n_chunks=n_chunks,
        n_stale=n_stale,
        n_outdated=n_outdated,
        stale_query=n_stale > 0,
        retrieval=n_chunks > 0,
        lag_ms=lag_ms[:n_lags].copy(),
        lag_event=lag_event[:n_lags].copy(),
    )
