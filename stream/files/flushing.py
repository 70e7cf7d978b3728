"""Where replay's flushes run: inline, or on a background thread beside the engine.

A flush of :class:`~..clickhouse.sink.ClickHouseSink` builds Arrow tables and inserts them;
much of that work (chDB's insert, Arrow's own, hashing the lines its token names) runs
without the GIL, so on a second core it overlaps the engine processing the next batches.
:class:`BackgroundFlusher` does that with two sinks over the same client: one buffers the
engine's outputs while the other is written.

Both flushers take the same calls, in the order replay makes them:

* ``add`` / ``add_alerts`` / ``add_states`` buffer outputs (no I/O);
* ``run(fn, *args)`` does side work in order with the flushes' tokens (replay hashes the
  lines there, so a flush's token, made when the jobs before it have run, covers exactly
  the lines before it);
* ``flush(token)`` writes what was buffered since the last flush, with ``token`` (or the
  string that ``token()`` returns, made in turn with the jobs) as its insert token;
* ``wait()`` returns once everything asked so far has run; ``close()`` also stops the
  threads.

A :class:`BackgroundFlusher` keeps at most one flush in flight, writes flushes in order and
runs jobs in the order they were asked for. An exception raised by a flush or a job is
raised to the caller at its next ``add``/``flush``/``run``/``wait``/``close`` (and every one
after), never lost; after it, no later flush is written (a replay that failed is run again,
and its tokens make that safe).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, Protocol

#: an insert token, or a function that returns it when the flush runs
Token = str | Callable[[], str]


class Sink(Protocol):
    """What replay needs of a sink (:class:`~..clickhouse.sink.ClickHouseSink`'s contract)."""

    def add(self, out: Any) -> None: ...

    def add_alerts(self, alerts: list[Any]) -> None: ...

    def add_states(self, states: dict[str, Any]) -> None: ...

    def flush(self, token: str) -> Any: ...


def _resolve(token: Token) -> str:
    return token if isinstance(token, str) else token()


class Flusher:
    """Flushes ``sink`` inline, on the caller's thread (``sink`` None: buffers and flushes
    nothing, side work still runs)."""

    def __init__(self, sink: Sink | None) -> None:
        self.sink = sink

    def __enter__(self) -> Flusher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
        else:  # the caller's error goes on; let what is running end
            self.shutdown()

    def add(self, out: Any) -> None:
        if self.sink is not None:
            self.sink.add(out)

    def add_alerts(self, alerts: list[Any]) -> None:
        if self.sink is not None:
            self.sink.add_alerts(alerts)

    def add_states(self, states: dict[str, Any]) -> None:
        if self.sink is not None:
            self.sink.add_states(states)

    def run(self, fn: Callable[..., Any], *args: Any) -> None:
        fn(*args)

    def flush(self, token: Token) -> None:
        if self.sink is not None:
            self.sink.flush(_resolve(token))

    def wait(self) -> None:
        """Return once every flush and job asked so far has run (inline: at once)."""

    def close(self) -> None:
        """Wait, then release what the flusher holds."""
        self.wait()
        self.shutdown()

    def shutdown(self) -> None:
        """Stop without raising (after the caller's own error)."""


class BackgroundFlusher(Flusher):
    """Flushes on one background thread, alternating between two sinks over the same client:
    while one is written, the other buffers the next batches.

    ``flush`` waits only for the flush before it (at most one in flight); buffering, jobs
    and the engine go on meanwhile. Jobs, and the tokens of the flushes, run in the order
    asked on a second thread: a job never waits behind an insert, so the lines it hashes are
    let go as fast as they come. Every sink call after construction runs on the flush thread
    or on the caller's thread while no flush of that sink is running.
    """

    def __init__(self, sink: Sink, spare: Sink) -> None:
        super().__init__(sink)
        self._sinks = (sink, spare)
        self._buffering = 0  # index of the sink that add() fills
        self._jobs = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-jobs")
        self._flushes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-flush")
        self._in_flight: Future[Any] | None = None  # the last flush asked for
        self._last_job: Future[Any] | None = None  # the last job (or token) asked for
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    @property
    def _current(self) -> Sink:
        return self._sinks[self._buffering]

    def add(self, out: Any) -> None:
        self._check()
        self._current.add(out)

    def add_alerts(self, alerts: list[Any]) -> None:
        self._check()
        self._current.add_alerts(alerts)

    def add_states(self, states: dict[str, Any]) -> None:
        self._check()
        self._current.add_states(states)

    def run(self, fn: Callable[..., Any], *args: Any) -> None:
        self._check()
        self._last_job = self._jobs.submit(self._guarded, fn, *args)

    def flush(self, token: Token) -> None:
        """Hand the buffering sink to the flush thread, once the flush before it is done."""
        if self._in_flight is not None:
            self._in_flight.result()
        self._check()
        sink = self._current
        self._buffering = 1 - self._buffering
        # the token is made on the job thread: after the jobs asked before this flush (the
        # lines it names are hashed), before those asked after it
        made = self._last_job = self._jobs.submit(self._guarded, _resolve, token)
        self._in_flight = self._flushes.submit(self._guarded, self._write, sink, made)

    def _write(self, sink: Sink, made: Future[Any]) -> None:
        token = made.result()
        if self._error is None:  # else a job before it failed: its token may be wrong
            sink.flush(token)

    def wait(self) -> None:
        for future in (self._last_job, self._in_flight):
            if future is not None:
                future.result()
        self._check()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        self._jobs.shutdown(wait=True)
        self._flushes.shutdown(wait=True)

    def _guarded(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, unless something before it failed; keeps the first error (and
        returns None)."""
        if self._error is not None:
            return None
        try:
            return fn(*args)
        except BaseException as exc:  # handed to the caller's thread by _check
            with self._lock:
                if self._error is None:
                    self._error = exc
            return None

    def _check(self) -> None:
        """Raise the first error of the flush thread on the caller's thread (at every call
        from then on: what was not written stays unwritten)."""
        with self._lock:
            error = self._error
        if error is not None:
            raise error
