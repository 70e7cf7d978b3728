"""RFC 3339 kernel against Python's datetime (the slow, obviously correct reference)."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmops_stream.stream.core.rfc3339 import (
    INVALID,
    MISSING,
    WRONG_TYPE,
    _parse_json_many,
    _parse_many,
    json_times_ms,
    parse_rfc3339_ms,
)


def reference_ms(text: str) -> int:
    dt = datetime.fromisoformat(text.replace("z", "Z").replace("t", "T"))
    assert dt.tzinfo is not None
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return delta // timedelta(milliseconds=1)


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(min_value=datetime(1000, 1, 2), max_value=datetime(9999, 12, 30)),  # noqa: DTZ001 - naive on purpose: the offset is drawn separately
    st.integers(-23 * 60 - 59, 23 * 60 + 59),
    st.sampled_from(["", ".1", ".12", ".123", ".123456", ".123456789"]),
    st.sampled_from(["T", " ", "t"]),
    st.booleans(),
)
def test_matches_datetime(dt: datetime, off: int, frac: str, sep: str, zulu: bool) -> None:
    base = dt.strftime(f"%Y-%m-%d{sep}%H:%M:%S") + frac
    if zulu:
        text = base + "Z"
    else:
        sign = "+" if off >= 0 else "-"
        text = base + f"{sign}{abs(off) // 60:02d}:{abs(off) % 60:02d}"
    # datetime keeps microseconds; both sides floor to the millisecond (what we store)
    assert parse_rfc3339_ms([text])[0] == reference_ms(text.replace(" ", "T"))


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-23T10:00:00",  # no offset
        "2026-11-23",
        "2026-13-01T00:00:00Z",
        "2026-02-29T00:00:00Z",  # not a leap year
        "2026-11-23T24:00:00Z",
        "2026-11-23T10:00:00.Z",
        "2026-11-23T10:00:00+0100",
        "2026-11-23T10:00:00Zjunk",
        "2026-11-23T10:00:00.1234567890Z",
        "hello world, not a time",
        "２０２６-11-23T10:00:00Z",
        "",
    ],
)
def test_rejects(text: str) -> None:
    assert parse_rfc3339_ms([text])[0] == INVALID


def test_leap_day_and_mixed_ints() -> None:
    assert parse_rfc3339_ms(["2024-02-29T00:00:00Z"])[0] == reference_ms("2024-02-29T00:00:00Z")
    raws = [
        b"5",
        b'"1970-01-01T00:00:01.5+00:00"',
        b"-7",
        b"null",
        b'"bad"',
        b"1.5",
        b"true",
        b'{"a":1}',
        b'"2026-01-01T00:00:00\\u005a"',
        b"1e3",
        b"",
        b"12345678901234567890",
    ]
    got = json_times_ms(raws)
    assert got.tolist() == [
        5,
        1500,
        -7,
        MISSING,
        INVALID,
        WRONG_TYPE,
        WRONG_TYPE,
        WRONG_TYPE,
        INVALID,
        WRONG_TYPE,
        WRONG_TYPE,
        INVALID,
    ]
    assert json_times_ms([]).tolist() == []


def test_non_ascii_neighbours_do_not_shift_offsets() -> None:
    got = parse_rfc3339_ms(["é", "2026-01-01T00:00:00Z"])
    assert got[0] == INVALID
    assert got[1] == int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)


def test_kernel_python_equals_compiled() -> None:
    texts = ["2026-11-23T10:00:00.5+05:30", "1999-12-31 23:59:59z", "bad"]
    enc = "".join(texts).encode()
    off = np.cumsum([0] + [len(t) for t in texts]).astype(np.int64)
    buf = np.frombuffer(enc, np.uint8)
    assert _parse_many.py_func(buf, off).tolist() == _parse_many(buf, off).tolist()
    raws = [b'"2026-11-23T10:00:00.5+05:30"', b"1795428000123", b"null", b"x"]
    jbuf = np.frombuffer(b"".join(raws), np.uint8)
    joff = np.cumsum([0] + [len(r) for r in raws]).astype(np.int64)
    assert _parse_json_many.py_func(jbuf, joff).tolist() == _parse_json_many(jbuf, joff).tolist()
