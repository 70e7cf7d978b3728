"""Helpers to test code built on llmops-stream, without Kafka or ClickHouse.

* :class:`ManualClock`: a wall clock that moves only when told to (``advance``/``set``),
  given to the engine instead of the real one;
* :class:`MemorySource`: call events held in memory, handed out in micro-batches;
* :class:`ListSink`: keeps every engine output (calls, alerts, budget states, rejected);
* :func:`run_engine`: a source through an engine into a sink, one batch at a time.

Our own tests use them; so can yours.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from llmops_stream.stream.core.alerts import Alert

T0_MS = 1_780_000_000_000
"""A fixed instant (2026-05-28T20:26:40Z) for tests that want readable, stable times."""


class ManualClock:
    """A wall clock (epoch ms) that moves only when told; call it to read it."""

    def __init__(self, start_ms: int = T0_MS) -> None:
        self.now_ms = int(start_ms)

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> int:
        """Move forward by ``ms`` (>= 0); returns the new time."""
        if ms < 0:
            raise ValueError("a clock does not go back")
        self.now_ms += int(ms)
        return self.now_ms

    def set(self, ms: int) -> None:
        """Jump to ``ms`` (not before the current time)."""
        if ms < self.now_ms:
            raise ValueError("a clock does not go back")
        self.now_ms = int(ms)


class MemorySource:
    """Call events in memory (dicts are JSON-encoded, bytes kept as they are)."""

    def __init__(self, events: Iterable[dict[str, Any] | bytes] = ()) -> None:
        self.events = [e if isinstance(e, bytes) else orjson.dumps(e) for e in events]

    def append(self, event: dict[str, Any] | bytes) -> None:
        """Add one event at the end."""
        self.events.append(event if isinstance(event, bytes) else orjson.dumps(event))

    def batches(self, size: int) -> Iterator[list[bytes]]:
        """The events in order, ``size`` at a time."""
        for i in range(0, len(self.events), size):
            yield self.events[i : i + size]


@dataclass
class ListSink:
    """Every output of the engine, appended in order."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    budget_states: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def add(self, out: Any) -> None:
        """Keep one ``BatchOutput`` (or the output of ``Engine.tick``)."""
        self.alerts.extend(out.alerts)
        self.budget_states.extend(_rows(out.budget_states))
        self.calls.extend(_rows(getattr(out, "calls", {})))
        self.rejected.extend(_rows(getattr(out, "rejected", {})))

    def flush(self, token: str = "") -> None:
        """Nothing to write: the lists are the destination."""

    def latest_states(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The last state row of each (tenant, budget)."""
        return {(s["tenant_id"], s["budget_id"]): s for s in self.budget_states}

    def alerts_of(self, tenant_id: str, type_: str | None = None) -> list[Alert]:
        """The alerts of one tenant (of one type), in order."""
        return [a for a in self.alerts if a.tenant_id == tenant_id and type_ in (None, a.type)]


def _rows(columns: dict[str, Any]) -> list[dict[str, Any]]:
    """Columns (one array per field) as one dict per row, plain Python values."""
    if not columns:
        return []
    names = list(columns)
    n = len(columns[names[0]])
    return (
        [
            {
                k: (v.item() if isinstance(v, np.generic) else v)
                for k, v in zip(names, row, strict=True)
            }
            for row in zip(*(columns[k] for k in names), strict=True)
        ]
        if n
        else []
    )


def run_engine(engine: Any, source: MemorySource, sink: ListSink, batch_size: int = 1000) -> None:
    """Every batch of ``source`` through ``engine.process`` into ``sink``."""
    for messages in source.batches(batch_size):
        sink.add(engine.process(messages))
