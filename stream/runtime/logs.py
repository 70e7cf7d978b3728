"""Structured logs: one JSON object per line on stderr.

A record whose message is a dict is merged into the line (``log.info({"event": ...})``);
otherwise the formatted message goes under ``msg``. Settings never reach a log record
unredacted: secrets are ``SecretStr`` and URLs are redacted before logging.

Client libraries repeat themselves while a service is down (aiokafka logs every failed
connect, ~200 lines/s with the broker gone): :class:`RepeatFilter` lets the first of a kind
through and then one per window, carrying how many were held back.

The level (``LLMOPS_LOG_LEVEL``, :func:`set_log_level`) is the project's loggers' level
(``llmops_stream…``); other libraries log at it too, but never below WARNING: their INFO
and DEBUG lines would drown the project's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
PROJECT_LOGGER = "llmops_stream"


class JsonFormatter(logging.Formatter):
    """Format records as single-line JSON objects."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        repeated = getattr(record, "repeated", None)
        if repeated:
            line["repeated"] = repeated
        if isinstance(record.msg, dict):
            line.update(record.msg)
        else:
            line["msg"] = record.getMessage()
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class RepeatFilter(logging.Filter):
    """At most one record per ``window_s`` seconds of each kind (logger, level, message
    template) from other libraries; the next one let through says how many were dropped
    (``repeated``). Records of ``own_prefix`` loggers always pass: each says something."""

    def __init__(
        self,
        window_s: float = 10.0,
        *,
        own_prefix: str = PROJECT_LOGGER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.window_s = window_s
        self.own_prefix = own_prefix
        self.clock = clock
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}  # → (passed at, held)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(self.own_prefix) or isinstance(record.msg, dict):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.window_s:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            record.repeated = last[1]
        if len(self._seen) > 10_000:  # messages with ever-new templates: forget, stay small
            self._seen.clear()
        self._seen[key] = (now, 0)
        return True


def setup_logging(level: str = "WARNING") -> None:
    """Route every log record through :class:`JsonFormatter` on stderr, with other
    libraries' repeats thinned by :class:`RepeatFilter`, at ``level`` (see
    :func:`set_log_level`)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_log_level(level)


def set_log_level(level: str) -> None:
    """The project's loggers log at ``level`` (one of :data:`LOG_LEVELS`, any case); the
    root logger, hence other libraries, at ``level`` but not below WARNING. ValueError for
    an unknown level."""
    name = level.strip().upper()
    if name not in LOG_LEVELS:
        raise ValueError(f"unknown log level {level!r}: one of {', '.join(LOG_LEVELS)}")
    number = logging.getLevelNamesMapping()[name]
    logging.getLogger(PROJECT_LOGGER).setLevel(number)
    logging.getLogger().setLevel(max(number, logging.WARNING))
