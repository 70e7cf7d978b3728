"""File replay: JSONL events (or OTLP JSON span lines) through the engine into a sink.

Used by ``replay`` and ``demo``. Positions are (file number, line number), blank lines
included. Replaying the same files again stores nothing twice, whatever the batch size:

* flushes fall at fixed lines: every ``flush_rows`` lines counted from the start of each
  file (and at its end), and engine batches are cut so that none crosses such a boundary;
* a flush's insert token names its line range and the file's content up to the range's
  end: ``replay:{first}-{end}:{digest}``, ``digest`` = BLAKE2b-128 of lines ``[0, end)``
  (each line ended by one LF, whatever its line ending), hashed as they are read, so
  stdin works the same as a path, and a file's tokens do not depend on its name or on the
  files replayed with it;
* the engine's outputs for a range do not depend on where batches are cut inside it (its
  clock, budgets, dedup and windows work per event), so a repeated token always stands for
  the same calls, rejects, alerts and budget states (usage rows may be split differently
  across batches, with the same sums): ClickHouse drops the repeated insert;
* the final flush (closed windows, last budget states) is ``replay:final:{digest}`` over
  the digests of every file, in order.

Flushes go through a :class:`~.flushing.Flusher`: given a plain sink, replay flushes it
inline; given a :class:`~.flushing.BackgroundFlusher` (what ``replay`` and ``demo`` use),
each flush (Arrow encoding, the insert) and the hashing of the lines its token names run on
one background thread while the engine processes the next batches. Either way a flush holds
the same rows under the same token; replay returns once the final flush is written. The
background costs memory: two sinks' buffers, and the lines of up to one flush range waiting
to be hashed while a flush runs.

The tokens depend on ``flush_rows``: replays meant to deduplicate must use the same value.

``--format otlp-json`` files hold one OTLP ``ExportTraceServiceRequest`` per line (as the
OTel Collector's file exporter writes them); :func:`feed_otlp` converts each line's GenAI
spans to events (:mod:`..core.otlp`). One line may hold thousands of spans, so there
positions count spans, not lines: the offset of a span's event (or reject) is its number
in the file, counting every span (a line that is no readable request counts as one), and a
flush falls after each line where that count passes a multiple of ``flush_rows``; tokens
still name line ranges, with the digest seeded by the format and tenant attribute (the
same file read as JSONL, or with another tenant attribute, holds other rows). All of it
follows from the content, so a rerun gives the same positions, flushes and tokens.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from llmops_stream.stream.core.budgets import BudgetConfig, load_budgets
from llmops_stream.stream.core.engine import BatchOutput, Engine, EngineConfig
from llmops_stream.stream.core.evalset import EvalSet, load_eval_sets
from llmops_stream.stream.core.freshness import FreshnessConfig
from llmops_stream.stream.core.otlp import DEFAULT_TENANT_ATTRIBUTE, SpanReject, spans_to_events
from llmops_stream.stream.core.pricing import PriceTable, load_price_overrides
from llmops_stream.stream.runtime.settings import Settings

from .flushing import Flusher, Sink, Token

#: file formats of ``replay --format``
FORMATS = ("jsonl", "otlp-json")


def build_engine(settings: Settings) -> Engine:
    """An :class:`Engine` configured from settings (files loaded and validated here)."""
    return Engine(build_engine_config(settings))


def build_engine_config(
    settings: Settings, eval_sets: dict[str, EvalSet] | None = None
) -> EngineConfig:
    """The :class:`EngineConfig` for settings (price, budget and eval-set files loaded;
    ``eval_sets`` given: already loaded, e.g. by an :class:`EvalSetWatcher`)."""
    overrides = load_price_overrides(settings.prices) if settings.prices else None
    budgets = load_budgets(settings.budgets) if settings.budgets else BudgetConfig()
    if eval_sets is None:
        eval_sets = (
            load_eval_sets(settings.eval_set, threshold=settings.eval_threshold)
            if settings.eval_set
            else {}
        )
    return EngineConfig(
        prices=PriceTable(overrides),
        budgets=budgets,
        eval_sets=eval_sets,
        freshness=FreshnessConfig(
            default_max_age_days=settings.freshness_max_age_days,
            stale_share_threshold=settings.freshness_threshold,
            min_count=settings.freshness_min_count,
        ),
        drift_threshold=settings.drift_threshold,
        drift_min_count=settings.drift_min_count,
        window_ms=settings.window_minutes * 60_000,
        candidate_share=settings.candidate_share,
        dedup_horizon_ms=int(settings.dedup_horizon_s * 1000),
        max_future_skew_ms=int(settings.max_future_skew_s * 1000),
        idle_ms=settings.clock_idle_ms,
        budget_hysteresis=settings.budget_hysteresis,
        alert_max_window_ms=int(settings.alert_max_window_h * 3_600_000),
        share_hysteresis=settings.share_hysteresis,
        model_min_calls=settings.model_min_calls,
        model_settle_ms=int(settings.model_settle_h * 3_600_000),
    )


@dataclass
class ReplayStats:
    """Counters of a replay: engine stats summed over batches, plus alerts fired by type
    and alert messages by status."""

    stats: Counter[str] = field(default_factory=Counter)
    alerts: Counter[str] = field(default_factory=Counter)
    alert_statuses: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    generate_seconds: float = 0.0  # of ``seconds``, spent making the traffic (demo only)


def read_batches(stream: BinaryIO, batch_size: int) -> Iterator[tuple[list[bytes], int]]:
    """Yield (non-blank lines without newline, bytes consumed) batches from a JSONL stream.

    A line is one event; blank lines are skipped. Line numbers are the caller's to count
    from the batch sizes (blank lines count as lines).
    """
    lines: list[bytes] = []
    consumed = 0
    for raw in stream:
        consumed += len(raw)
        lines.append(raw.rstrip(b"\r\n"))
        if len(lines) >= batch_size:
            yield lines, consumed
            lines, consumed = [], 0
    if lines:
        yield lines, consumed


def flush_ranges(first: int, n: int, every: int) -> list[tuple[int, int]]:
    """Lines ``[first, first + n)`` cut at the multiples of ``every``: the ``(from, to)``
    pieces, in order, none crossing a multiple of ``every`` (which is where replay flushes).

    >>> flush_ranges(8, 7, 5)
    [(8, 10), (10, 15)]
    """
    if every < 1:
        raise ValueError(f"flush boundary every {every} lines: must be >= 1")
    pieces: list[tuple[int, int]] = []
    end = first + n
    while first < end:
        to = min(end, (first // every + 1) * every)
        pieces.append((first, to))
        first = to
    return pieces


def replay(
    sources: list[str],
    engine: Engine,
    sink: Sink | Flusher | None,
    *,
    batch_size: int,
    flush_rows: int,
    on_progress: Callable[[int, int], None] | None = None,
    fmt: str = "jsonl",
    tenant_attribute: str = DEFAULT_TENANT_ATTRIBUTE,
) -> ReplayStats:
    """Replay ``sources`` (paths, ``-`` = stdin) of format ``fmt`` (one of :data:`FORMATS`)
    through ``engine`` into ``sink``.

    ``on_progress(bytes_consumed, events)`` is called after every batch. Flushes fall every
    ``flush_rows`` lines of each file (spans, for ``otlp-json``) whatever ``batch_size``
    (see the module doc). ``tenant_attribute`` names the span or resource attribute holding
    the tenant of ``otlp-json`` spans. Returns once every flush is written (a flush's error
    is raised); a :class:`BackgroundFlusher` given as ``sink`` stays open, its owner closes it.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown replay format {fmt!r}: one of {', '.join(FORMATS)}")
    flusher = as_flusher(sink)
    result = ReplayStats()
    started = time.perf_counter()
    digests: list[hashlib.blake2b] = []
    for file_no, src in enumerate(sources):
        name = "stdin" if src == "-" else Path(src).name
        stream = sys.stdin.buffer if src == "-" else open(src, "rb")  # noqa: SIM115
        try:
            if fmt == "otlp-json":
                digest = feed_otlp(
                    name,
                    file_no,
                    stream,
                    engine,
                    flusher,
                    result,
                    batch_size=batch_size,
                    flush_rows=flush_rows,
                    tenant_attribute=tenant_attribute,
                    on_progress=on_progress,
                )
            else:
                digest = feed(
                    name,
                    file_no,
                    read_batches(stream, batch_size),
                    engine,
                    flusher,
                    result,
                    flush_rows=flush_rows,
                    on_progress=on_progress,
                )
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()
        digests.append(digest)
    finish(engine, flusher, result, token=partial(_final_token, digests))
    result.seconds = time.perf_counter() - started
    return result


def feed(  # noqa: PLR0917 - a source's name, number and batches, then where they go
    name: str,
    file_no: int,
    batches: Iterable[tuple[list[bytes], int]],
    engine: Engine,
    sink: Sink | Flusher | None,
    result: ReplayStats,
    *,
    flush_rows: int,
    on_progress: Callable[[int, int], None] | None = None,
) -> hashlib.blake2b:
    """Process ``(lines, bytes)`` batches of one source; flush to ``sink`` every
    ``flush_rows`` lines, counted from the source's first line.

    Batches are cut at those boundaries, so flushes, their tokens and what they hold do
    not depend on how the caller batched the lines. Line numbers (blank lines included)
    are the offsets stored with each call; ``name`` is stored as the calls' source.
    Returns the digest of the whole source (BLAKE2b-128 of its lines), complete once the
    flusher has run what it was given (``wait()``).
    """
    flusher = as_flusher(sink)
    line_no = 0
    pending_from = 0
    digest = hashlib.blake2b(digest_size=16)
    for batch, consumed in batches:
        pieces = flush_ranges(line_no, len(batch), flush_rows)
        for k, (lo, hi) in enumerate(pieces):
            lines = batch[lo - line_no : hi - line_no] if len(pieces) > 1 else batch
            flusher.run(_hash_lines, digest, lines)  # in order with the flushes' tokens
            keep = [i for i, line in enumerate(lines) if line.strip()]
            messages = [lines[i] for i in keep] if len(keep) != len(lines) else lines
            out = engine.process(
                messages,
                source=f"replay:{name}",
                partitions=np.full(len(messages), file_no, np.int32),
                offsets=lo + np.asarray(keep, dtype=np.int64),
            )
            result.stats.update(out.stats)
            result.alerts.update(a.type for a in out.alerts if a.status == "firing")
            result.alert_statuses.update(a.status for a in out.alerts)
            flusher.add(out)
            if hi % flush_rows == 0:
                flusher.flush(partial(_token, pending_from, hi, digest))
                pending_from = hi
            if on_progress is not None:
                on_progress(consumed if k == len(pieces) - 1 else 0, len(messages))
        line_no += len(batch)
    if line_no > pending_from:
        flusher.flush(partial(_token, pending_from, line_no, digest))
    return digest


def feed_otlp(  # noqa: PLR0917 - as feed: a source's name, number and lines, then where they go
    name: str,
    file_no: int,
    lines: Iterable[bytes],
    engine: Engine,
    sink: Sink | Flusher | None,
    result: ReplayStats,
    *,
    batch_size: int,
    flush_rows: int,
    tenant_attribute: str = DEFAULT_TENANT_ATTRIBUTE,
    on_progress: Callable[[int, int], None] | None = None,
) -> hashlib.blake2b:
    """Process the OTLP JSON ``lines`` of one source (one ``ExportTraceServiceRequest``
    each): their inference spans' events through ``engine``, in batches of about
    ``batch_size``; conversion rejects into the rejected rows, skipped spans counted as
    ``spans_skipped``. Positions and flushes as the module doc says. Returns the digest of
    the source (BLAKE2b-128 of its lines, seeded by the format and tenant attribute),
    complete once the flusher has run what it was given."""
    flusher = as_flusher(sink)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(b"otlp-json\x00" + tenant_attribute.encode() + b"\n")
    unhashed: list[bytes] = []  # lines read since the last hash job
    batch = _SpanBatch()
    line_no = pending_from = position = 0
    block = 0  # flush_rows blocks of positions already flushed
    for raw in lines:
        line = raw.rstrip(b"\r\n")
        unhashed.append(line)
        line_no += 1
        batch.consumed += len(raw)
        if line.strip():
            spans = spans_to_events(line, "otlp_json", tenant_attribute=tenant_attribute)
            n = len(spans.events)
            batch.events += spans.events
            batch.offsets.extend(range(position, position + n))
            batch.rejects += [(rej, position + n + j) for j, rej in enumerate(spans.rejected)]
            position += n + len(spans.rejected) + spans.skipped
            result.stats["spans_skipped"] += spans.skipped
        if position // flush_rows > block:
            batch = _process(batch, engine, name, file_no, flusher, result, on_progress)
            block = position // flush_rows
            flusher.run(_hash_lines, digest, unhashed)
            unhashed = []
            flusher.flush(partial(_token, pending_from, line_no, digest))
            pending_from = line_no
        elif len(batch.events) >= batch_size:
            batch = _process(batch, engine, name, file_no, flusher, result, on_progress)
            flusher.run(_hash_lines, digest, unhashed)
            unhashed = []
    _process(batch, engine, name, file_no, flusher, result, on_progress)
    flusher.run(_hash_lines, digest, unhashed)
    if line_no > pending_from:
        flusher.flush(partial(_token, pending_from, line_no, digest))
    return digest


@dataclass
class _SpanBatch:
    """Converted spans waiting for the engine: events with their offsets, and rejects."""

    events: list[bytes] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    rejects: list[tuple[SpanReject, int]] = field(default_factory=list)
    consumed: int = 0  # bytes read for them


def _process(  # noqa: PLR0917 - one batch, then where it goes
    batch: _SpanBatch,
    engine: Engine,
    name: str,
    file_no: int,
    flusher: Flusher,
    result: ReplayStats,
    on_progress: Callable[[int, int], None] | None,
) -> _SpanBatch:
    """Run ``batch`` through the engine, add its conversion rejects, hand it to the sink;
    returns a fresh batch."""
    if not batch.events and not batch.rejects:
        return batch
    source = f"replay:{name}"
    n = len(batch.events)
    out = engine.process(
        batch.events,
        source=source,
        partitions=np.full(n, file_no, np.int32),
        offsets=np.asarray(batch.offsets, dtype=np.int64),
    )
    if batch.rejects:
        _add_rejects(out, batch.rejects, source, file_no)
    result.stats.update(out.stats)
    result.alerts.update(a.type for a in out.alerts if a.status == "firing")
    result.alert_statuses.update(a.status for a in out.alerts)
    flusher.add(out)
    if on_progress is not None:
        on_progress(batch.consumed, n + len(batch.rejects))
    return _SpanBatch()


def _add_rejects(
    out: BatchOutput, rejects: list[tuple[SpanReject, int]], source: str, file_no: int
) -> None:
    """Append span rejects to the engine's rejected columns and counts (a reject is an
    event seen, as a rejected JSON event is)."""
    cols: dict[str, Any] = out.rejected
    for rej, _ in rejects:
        cols["reason"].append(rej.reason)
        cols["detail"].append(rej.detail)
        cols["tenant_id"].append(rej.tenant_id)
        cols["event_id"].append(rej.event_id)
        cols["source"].append(source)
        cols["raw"].append(rej.raw)
        out.stats[f"rejected:{rej.reason}"] += 1
    k = len(rejects)
    cols["kafka_partition"] = np.concatenate(
        [cols["kafka_partition"], np.full(k, file_no, np.int32)]
    )
    cols["kafka_offset"] = np.concatenate(
        [cols["kafka_offset"], np.array([pos for _, pos in rejects], np.int64)]
    )
    out.stats["rejected"] += k
    out.stats["events"] += k


def as_flusher(sink: Sink | Flusher | None) -> Flusher:
    """``sink`` itself if it is a flusher, else an inline :class:`Flusher` of it."""
    return sink if isinstance(sink, Flusher) else Flusher(sink)


def _hash_lines(digest: hashlib.blake2b, lines: list[bytes]) -> None:
    """Hash ``lines``, each ended by one LF (hashlib releases the GIL for the bulk)."""
    if lines:
        digest.update(b"\n".join(lines))
        digest.update(b"\n")


def _token(first: int, end: int, digest: hashlib.blake2b) -> str:
    """The insert token of lines ``[first, end)``; ``digest`` has hashed lines ``[0, end)``."""
    return f"replay:{first}-{end}:{digest.hexdigest()}"


def _final_token(digests: list[hashlib.blake2b]) -> str:
    """The final flush's token: the digests of every source, in order."""
    whole = hashlib.blake2b(digest_size=16)
    for digest in digests:
        whole.update(digest.hexdigest().encode("ascii") + b"\n")
    return f"replay:final:{whole.hexdigest()}"


def finish(engine: Engine, sink: Sink | Flusher | None, result: ReplayStats, token: Token) -> None:
    """Close open windows, write the final alerts and budget states, and wait until every
    flush is written (raising a flush's error)."""
    flusher = as_flusher(sink)
    final = engine.finish()
    result.alerts.update(a.type for a in final.alerts if a.status == "firing")
    result.alert_statuses.update(a.status for a in final.alerts)
    flusher.add_alerts(final.alerts)
    flusher.add_states(final.budget_states)
    flusher.flush(token)
    flusher.wait()
