"""The alert message of every threshold topic, and its deterministic id.

Alerts have a lifecycle: a level that is crossed **fires** once (``status="firing"``) and is
later **resolved** (``status="resolved"``) under the same ``alert_id``. The id names the
episode (tenant, rule, level, episode start), never when it was emitted, so re-processing
the same events after a crash yields the same id, and ``(alert_id, status)`` identifies one
message: consumers (and ClickHouse's ReplacingMergeTree) drop a repeat.
"""

import hashlib
from typing import Any

import msgspec

from .timeutil import ms_to_iso, now_ms

ALERT_TYPES = ("budget", "drift", "freshness", "model")
FIRING = "firing"
RESOLVED = "resolved"


class Alert(msgspec.Struct, kw_only=True):
    """One alert, as published on ``llm.alerts.<type>`` and stored in ``llm_alerts``.

    ``window_start``/``window_end`` are RFC 3339 UTC strings; ``emitted_at`` too.
    ``status`` is ``"firing"`` or ``"resolved"`` (same ``alert_id`` for both).
    """

    alert_id: str
    status: str
    type: str
    severity: str
    tenant_id: str
    app: str
    metric: str
    value: float
    threshold: float
    window_start: str
    window_end: str
    emitted_at: str
    details: dict[str, Any] = msgspec.field(default_factory=dict)


def alert_id(*parts: object) -> str:
    """Deterministic 32-hex-char id from the parts that identify a crossing."""
    text = "\x1f".join(str(p) for p in parts)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def make_alert(
    *,
    type: str,  # noqa: A002 - the field is called "type" in the contract
    severity: str,
    tenant_id: str,
    app: str,
    metric: str,
    value: float,
    threshold: float,
    window_start_ms: int,
    window_end_ms: int,
    id_parts: tuple[object, ...],
    details: dict[str, Any] | None = None,
    status: str = FIRING,
    emitted_at_ms: int | None = None,
) -> Alert:
    """Build an :class:`Alert`; ``id_parts`` identify the episode (see module doc)."""
    if type not in ALERT_TYPES:
        raise ValueError(f"unknown alert type {type!r}")
    if status not in (FIRING, RESOLVED):
        raise ValueError(f"unknown alert status {status!r}")
    return Alert(
        alert_id=alert_id(type, *id_parts),
        status=status,
        type=type,
        severity=severity,
        tenant_id=tenant_id,
        app=app,
        metric=metric,
        value=float(value),
        threshold=float(threshold),
        window_start=ms_to_iso(window_start_ms),
        window_end=ms_to_iso(window_end_ms),
        emitted_at=ms_to_iso(now_ms() if emitted_at_ms is None else emitted_at_ms),
        details=details or {},
    )
