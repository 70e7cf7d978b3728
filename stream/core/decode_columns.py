"""Raw columns of a decoded batch, before the semantic checks of :func:`.decode.decode_batch`.

They come from two sources: msgspec structs (:func:`raw_from_events`, the exact reference
path, taken by any message the scanner declines) and the numba scanner
(:func:`raw_from_scan`, on spans of one joined buffer). :func:`merge` puts rows of both back
into input order, so the checks that follow, and their reject reasons, are the same
whichever path read a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import numpy as np
import pandas as pd

from .interning import INTERNED
from .json_scan import INTS, STRINGS, CallScan
from .rfc3339 import json_times_ms
from .span_codes import span_labels, span_strs

USAGE_FIELDS = INTS[:6]  # the token counts, in Usage's order
# the label spans of the scanner are the interned columns, in the same order
assert STRINGS[1:11] == INTERNED  # noqa: S101 - a layout invariant checked at import


@dataclass
class RawColumns:
    """``n`` decoded rows in input order, unchecked.

    ``src`` int64[n] input indices (increasing); ``ints`` name → int64[n] for every name of
    :data:`.json_scan.INTS` but ``n_chunks`` (``status`` as a code, ``route_escalated`` 0/1,
    absent counts 0); ``floats`` ``latency_ms``/``ttft_ms`` → float64[n] (NaN absent);
    ``event_id`` object[n] of ``str``; ``labels`` interned column name → (int32[n] codes,
    object[u] distinct values in order of first appearance); ``embedding`` per row None, a
    base64 ``str``/``bytes`` or a list of floats; ``chunk_counts`` int64[n] and the chunk
    times int64[c] (rows' chunks in order).
    """

    src: np.ndarray
    ints: dict[str, np.ndarray]
    floats: dict[str, np.ndarray]
    event_id: np.ndarray
    labels: dict[str, tuple[np.ndarray, np.ndarray]]
    embedding: list[Any]
    chunk_counts: np.ndarray
    chunk_embedded_at_ms: np.ndarray
    chunk_source_updated_at_ms: np.ndarray


def _attr(objs: list[Any], name: str) -> list[Any]:
    """The attribute ``name`` of every object (the fastest transpose CPython offers)."""
    return list(map(attrgetter(name), objs))


def _strs(values: list[str | None]) -> np.ndarray:
    """object[n] of str, None → ""."""
    if None in values:
        values = [v or "" for v in values]
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def _ints(values: list[int | None]) -> np.ndarray:
    """int64[n], None → 0."""
    if None in values:
        values = [0 if v is None else v for v in values]
    return np.array(values, dtype=np.int64)


def _factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    codes, uniques = pd.factorize(values, sort=False)
    return codes.astype(np.int32), np.asarray(uniques, dtype=object)


def raw_from_events(events: list[Any], src: np.ndarray, status_code: dict[Any, int]) -> RawColumns:
    """Columns of msgspec ``CallEvent`` structs decoded from input messages ``src``."""
    n = len(events)
    usage = _attr(events, "usage")
    ints = {name: _ints(_attr(usage, name)) for name in USAGE_FIELDS}
    ints["context_window"] = _ints(_attr(events, "context_window"))
    ints["ts_ms"] = json_times_ms(_attr(events, "ts"))
    ints["status"] = np.array(list(map(status_code.__getitem__, _attr(events, "status"))), np.int64)
    routes = _attr(events, "route")
    tiers = [r.tier if r is not None else None for r in routes]
    ints["route_escalated"] = np.array(
        [bool(r is not None and r.escalated) for r in routes], dtype=np.int64
    )
    retrieval = _attr(events, "retrieval")
    strs = {
        "route_tier": tiers,
        "index_version": [r.index_version if r is not None else None for r in retrieval],
    }
    labels = {
        name: _factorize(_strs(strs[name] if name in strs else _attr(events, name)))
        for name in INTERNED
    }
    chunk_lists = [r.chunks if r is not None and r.chunks else () for r in retrieval]
    chunks = [c for cl in chunk_lists for c in cl]
    return RawColumns(
        src=np.asarray(src, dtype=np.int64),
        ints=ints,
        floats={
            name: np.array(_attr(events, name), dtype=np.float64)  # None → NaN
            for name in ("latency_ms", "ttft_ms")
        },
        event_id=_strs(_attr(events, "event_id")),
        labels=labels,
        embedding=_attr(events, "embedding"),
        chunk_counts=np.fromiter(map(len, chunk_lists), dtype=np.int64, count=n),
        chunk_embedded_at_ms=json_times_ms(_attr(chunks, "embedded_at")),
        chunk_source_updated_at_ms=json_times_ms(_attr(chunks, "source_updated_at")),
    )


def raw_from_scan(data: bytes, buf: np.ndarray, scan: CallScan, rows: np.ndarray) -> RawColumns:
    """Columns of the accepted messages ``rows`` (int64[m], increasing) of ``scan``, which
    read ``buf`` (uint8 view of ``data``)."""
    starts, ends = scan.starts, scan.ends
    ints = {name: scan.ints[k, rows] for k, name in enumerate(INTS) if name != "n_chunks"}
    emb_start = starts[STRINGS.index("embedding"), rows]
    emb_end = ends[STRINGS.index("embedding"), rows]
    embedding: list[Any] = [None] * len(rows)
    for j in np.flatnonzero(emb_start >= 0).tolist():
        embedding[j] = data[emb_start[j] : emb_end[j]]
    return RawColumns(
        src=rows,
        ints=ints,
        floats={"latency_ms": scan.floats[0, rows], "ttft_ms": scan.floats[1, rows]},
        event_id=span_strs(buf, starts[0, rows], ends[0, rows]),
        labels=dict(
            zip(INTERNED, span_labels(data, buf, starts[1:11], ends[1:11], rows), strict=True)
        ),
        embedding=embedding,
        chunk_counts=scan.ints[INTS.index("n_chunks"), rows],
        chunk_embedded_at_ms=scan.chunk_embedded_at_ms,
        chunk_source_updated_at_ms=scan.chunk_source_updated_at_ms,
    )


def _chunk_dest(counts: np.ndarray, new_off: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Where each chunk of a part (rows at merged positions ``pos``) goes."""
    off = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=off[1:])
    return np.repeat(new_off[pos] - off[:-1], counts) + np.arange(off[-1])


def merge(a: RawColumns, b: RawColumns) -> RawColumns:
    """The rows of ``a`` and ``b`` (disjoint inputs) together, in input order."""
    if len(b.src) == 0:
        return a
    if len(a.src) == 0:
        return b
    src = np.concatenate([a.src, b.src])
    order = np.argsort(src, kind="stable")
    n = len(src)
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)
    pa, pb = pos[: len(a.src)], pos[len(a.src) :]

    def put(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = np.empty(n, dtype=x.dtype)
        out[pa] = x
        out[pb] = y
        return out

    labels = {}
    for name, (ca, ua) in a.labels.items():
        cb, ub = b.labels[name]
        # renumber by first appearance in the merged order (a value both parts hold gets
        # two local numbers; interning maps both to one code)
        codes, first = pd.factorize(put(ca, cb + np.int32(len(ua))), sort=False)
        labels[name] = (codes.astype(np.int32), np.concatenate([ua, ub])[first])
    embedding: list[Any] = [None] * n
    for p, v in zip(pa.tolist(), a.embedding, strict=True):
        embedding[p] = v
    for p, v in zip(pb.tolist(), b.embedding, strict=True):
        embedding[p] = v
    counts = put(a.chunk_counts, b.chunk_counts)
    new_off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=new_off[1:])
    da = _chunk_dest(a.chunk_counts, new_off, pa)
    db = _chunk_dest(b.chunk_counts, new_off, pb)
    emb_at = np.empty(new_off[-1], dtype=np.int64)
    src_at = np.empty(new_off[-1], dtype=np.int64)
    emb_at[da], emb_at[db] = a.chunk_embedded_at_ms, b.chunk_embedded_at_ms
    src_at[da], src_at[db] = a.chunk_source_updated_at_ms, b.chunk_source_updated_at_ms
    return RawColumns(
        src=src[order],
        ints={k: put(v, b.ints[k]) for k, v in a.ints.items()},
        floats={k: put(v, b.floats[k]) for k, v in a.floats.items()},
        event_id=put(a.event_id, b.event_id),
        labels=labels,
        embedding=embedding,
        chunk_counts=counts,
        chunk_embedded_at_ms=emb_at,
        chunk_source_updated_at_ms=src_at,
    )
