"""Structured logs: one JSON object per line; other libraries' repeats are thinned."""

from __future__ import annotations

import logging

import orjson

from llmops_stream.stream.runtime.logs import JsonFormatter, RepeatFilter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(name: str, msg: object, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_repeats_pass_once_per_window_with_the_count_held_back() -> None:
    clock = Clock()
    f = RepeatFilter(10.0, clock=clock)
    template = "Unable connect to node with id %s: %s"
    passed = []
    for i in range(50):  # 5 s of a failing connect every 100 ms, then another 10 s
        clock.now = i * 0.3
        r = record("aiokafka", template, 1, f"refused {i}")
        if f.filter(r):
            passed.append((clock.now, getattr(r, "repeated", None)))
    # t=0 passes; t=0.3..9.9 held (33); t=10.2 passes with the count; t=10.5..14.7 held
    assert passed == [(0.0, None), (10.2, 33)]


def test_kinds_are_apart_and_own_records_always_pass() -> None:
    clock = Clock()
    f = RepeatFilter(10.0, clock=clock)
    assert f.filter(record("aiokafka", "a %s", 1))
    assert f.filter(record("aiokafka", "b %s", 1))  # another template
    assert f.filter(record("aiokafka.consumer", "a %s", 1))  # another logger
    assert f.filter(record("aiokafka", "a %s", 1, level=logging.WARNING))  # another level
    assert not f.filter(record("aiokafka", "a %s", 2))
    for _ in range(5):
        assert f.filter(record("llmops_stream.worker", "assigned %s", "t[0]"))
        assert f.filter(record("other", {"event": "health"}))


def test_json_line_carries_the_repeat_count() -> None:
    r = record("aiokafka", "lost %s", "node 1")
    r.repeated = 7
    line = orjson.loads(JsonFormatter().format(r))
    assert line["msg"] == "lost node 1" and line["repeated"] == 7
    assert line["level"] == "error" and line["logger"] == "aiokafka"
    assert "repeated" not in orjson.loads(JsonFormatter().format(record("x", "once")))
