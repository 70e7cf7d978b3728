"""Event-time helpers: epoch milliseconds (int64) <-> RFC 3339 strings, UTC."""

from datetime import UTC, datetime

MS_PER_MINUTE = 60_000
MS_PER_HOUR = 3_600_000
MS_PER_DAY = 86_400_000


def ms_to_iso(ms: int) -> str:
    """RFC 3339 UTC string with millisecond precision, e.g. ``2026-11-23T17:20:39.123Z``."""
    dt = datetime.fromtimestamp(ms / 1000.0, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ms) % 1000:03d}Z"


def iso_to_ms(text: str) -> int:
    """Epoch ms of an RFC 3339 string with offset (inverse of :func:`ms_to_iso`)."""
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise ValueError(f"timestamp without offset: {text!r}")
    return int(dt.timestamp() * 1000 + (0.5 if dt.timestamp() >= 0 else -0.5))


def now_ms() -> int:
    """Wall-clock now in epoch milliseconds (only for ``emitted_at``-style fields)."""
    return int(datetime.now(tz=UTC).timestamp() * 1000)
