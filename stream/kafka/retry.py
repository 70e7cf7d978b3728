"""Retrying a call to a service (ClickHouse, Kafka) until it succeeds, with backoff.

Shared by the worker and the OTLP relay: a failure worth retrying never drops data, the
delay doubles from 0.2 s up to :data:`MAX_BACKOFF_S`, and a process asked to stop during an
outage leaves (offsets uncommitted) instead of retrying for ever. :class:`.Fenced` and
:class:`.FatalKafkaError` are raised at once: retrying cannot help, the caller decides.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

from .transactions import FatalKafkaError, Fenced

MAX_BACKOFF_S = 10.0


async def retry(
    what: str,
    fn: Callable[[], Any],
    *,
    log: logging.Logger,
    stop: asyncio.Event | None = None,
    on_failure: Callable[[], object] | None = None,
) -> Any:
    """Run ``fn`` (sync or async) until it succeeds and return its result. Each failure is
    logged as ``"<what> write failed (<type>: <message>); retrying in <s> s"`` and counted
    with ``on_failure``; once ``stop`` is set and the backoff is at its maximum, the last
    error is raised."""
    delay = 0.2
    while True:
        try:
            result = fn()
            if inspect.isawaitable(result):
                result = await result
            return result
        except (Fenced, FatalKafkaError):
            raise
        except Exception as exc:  # any failure of the service: retry, never drop data
            if on_failure is not None:
                on_failure()
            log.warning(
                "%s write failed (%s: %s); retrying in %.1f s",
                what,
                type(exc).__name__,
                str(exc)[:200],
                delay,
            )
            if stop is not None and stop.is_set() and delay >= MAX_BACKOFF_S:
                raise  # shutting down during an outage: leave, offsets stay uncommitted
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)
