"""The data behind ``report --html``: time-bucketed sums read from ClickHouse, and the
pure helpers that shape them for the charts (buckets, dense grids, shares, alert episodes).

Sums are computed in ClickHouse per bucket (:func:`pick_bucket`: at most :data:`MAX_POINTS`
buckets per chart), so what the page holds does not grow with the number of calls. Kept
apart from html_report.py so that these helpers import without matplotlib.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llmops_stream.stream.core.errors import ConfigError

MAX_POINTS = 200  # time buckets per chart at most
COST_POINTS = 60  # fewer for the stacked cost: a band per tenant reads better when calmer
BUCKETS_S = (60, 300, 900, 1800, 3600, 10_800, 21_600, 43_200, 86_400, 604_800)
TOP_N = 8  # tenants / models drawn on their own in the cost charts; the rest is "other"
SHARE_TENANTS = 4  # tenants drawn beside the all-tenant share: those with the most alerts
KNOWN_TYPES = ("budget", "drift", "freshness", "model")
STATUS_RANK = {"ok": 0, "warn": 1, "exceeded": 2}


@dataclass(frozen=True)
class Thresholds:
    """The alert settings the share chart is drawn against (shares as fractions 0..1)."""

    drift: float
    stale: float
    drift_min_count: int
    stale_min_count: int
    window_s: int


def pick_bucket(span_s: float, max_points: int = MAX_POINTS) -> int:
    """The smallest bucket of :data:`BUCKETS_S` (seconds) that cuts ``span_s`` seconds into
    at most ``max_points`` buckets (whole days beyond the largest)."""
    for bucket in BUCKETS_S:
        if span_s / bucket <= max_points:
            return bucket
    return math.ceil(span_s / max_points / 86_400) * 86_400


def bucket_label(bucket_s: int) -> str:
    """``900`` → ``"15 min"``, ``3600`` → ``"1 h"``, ``86400`` → ``"1 day"``."""
    if bucket_s % 86_400 == 0:
        days = bucket_s // 86_400
        return f"{days} day" + ("s" if days > 1 else "")
    if bucket_s % 3600 == 0:
        return f"{bucket_s // 3600} h"
    if bucket_s % 60 == 0:
        return f"{bucket_s // 60} min"
    return f"{bucket_s} s"


def share(num: float, den: float, min_den: float = 1) -> float:
    """``num / den``, NaN (no point drawn) when ``den`` is below ``min_den`` or zero."""
    return num / den if den >= min_den and den > 0 else math.nan


def grid(start_s: int, end_s: int, bucket_s: int) -> list[int]:
    """Bucket starts (epoch seconds, aligned to ``bucket_s``) covering ``start_s..end_s``."""
    first = start_s // bucket_s * bucket_s
    return list(range(first, end_s // bucket_s * bucket_s + 1, bucket_s))


def dense(rows: Iterable[tuple[int, float]], times: Sequence[int], fill: float) -> list[float]:
    """``(t, value)`` rows summed per bucket of the grid ``times``; a bucket without a row
    gets ``fill`` (0 for amounts, NaN for "no value")."""
    sums: dict[int, float] = {}
    for t, value in rows:
        sums[t] = sums.get(t, 0.0) + value
    return [sums.get(t, fill) for t in times]


def worst_status(states: Iterable[tuple[Any, ...]]) -> dict[str, str]:
    """The worst budget status (exceeded > warn > ok) per tenant of budget state rows."""
    worst: dict[str, str] = {}
    for tenant, *_rest, status in states:
        if STATUS_RANK.get(status, 0) >= STATUS_RANK.get(worst.get(tenant, "ok"), 0):
            worst[tenant] = status
    return worst


def episodes(alerts: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], datetime | None]]:
    """Alert messages paired per ``alert_id``: (the firing message, the time it resolved or
    None while still firing). A resolution whose firing message is missing stands alone."""
    firing: dict[str, dict[str, Any]] = {}
    resolved: dict[str, dict[str, Any]] = {}
    for a in alerts:
        (firing if a["status"] == "firing" else resolved)[a["alert_id"]] = a
    out: list[tuple[dict[str, Any], datetime | None]] = []
    for alert_id, a in firing.items():
        end = resolved.get(alert_id)
        out.append((a, parse_iso(end["emitted_at"]) if end else None))
    out += [(a, parse_iso(a["emitted_at"])) for i, a in resolved.items() if i not in firing]
    return out


def alert_types(alerts: Iterable[dict[str, Any]]) -> list[str]:
    """The alert types present: the four of SPEC §4 in their order, then any other sorted."""
    present = {a["type"] for a in alerts}
    return [t for t in KNOWN_TYPES if t in present] + sorted(present - set(KNOWN_TYPES))


def parse_iso(text: str) -> datetime:
    """A ``…Z`` timestamp of the report (``ms_to_iso``) as a tz-aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def utc(epoch_s: int) -> datetime:
    """Epoch seconds as a tz-aware UTC datetime."""
    return datetime.fromtimestamp(epoch_s, tz=UTC)


def check_target(path: str) -> Path:
    """The output path of ``--html``; ConfigError when it cannot be a file to write."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise ConfigError(f"cannot write the HTML report to {path}: it is a directory")
    if not target.parent.is_dir():
        raise ConfigError(f"cannot write the HTML report to {path}: no such directory")
    return target


def write_page(target: Path, page: str) -> int:
    """Write ``page`` to ``target`` (UTF-8); its size in bytes. ConfigError on failure."""
    data = page.encode()
    try:
        target.write_bytes(data)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the HTML report to {target}: {exc.strerror or exc}"
        ) from None
    return len(data)


class ChartData:
    """Reads the chart data of one database (names validated by ``connect``)."""

    def __init__(self, client: Any, database: str) -> None:
        self.client = client
        self.db = database

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return list(self.client.query(sql).result_rows)

    def span(self) -> tuple[int, int] | None:
        """First and last minute (epoch s) in ``llm_usage_1m``; None when it is empty."""
        cols = "count(), toUnixTimestamp(min(minute)), toUnixTimestamp(max(minute))"
        n, lo, hi = self.rows(f"SELECT {cols} FROM {self.db}.llm_usage_1m")[0]  # noqa: S608
        return (int(lo), int(hi)) if n else None

    def cost_by(self, column: str, bucket_s: int) -> tuple[list[tuple[int, bool, str, float]], int]:
        """(bucket, in top N, key or '', USD) rows of cost per bucket of the top
        :data:`TOP_N` values of ``column`` by total cost, and how many values there are."""
        usage = f"{self.db}.llm_usage_1m"
        rows = self.rows(
            f"""SELECT toUnixTimestamp(toStartOfInterval(minute, INTERVAL {bucket_s} SECOND)) AS t,
                      {column} IN (SELECT {column} FROM {usage} GROUP BY {column}
                                   ORDER BY sum(cost_usd) DESC, {column} LIMIT {TOP_N}) AS is_top,
                      if(is_top, {column}, '') AS key, sum(cost_usd)
               FROM {usage} GROUP BY t, is_top, key ORDER BY t"""  # noqa: S608
        )
        (count,) = self.rows(f"SELECT uniqExact({column}) FROM {usage}")[0]  # noqa: S608
        return [(int(t), bool(top), str(k), float(c)) for t, top, k, c in rows], int(count)

    def shares(
        self, bucket_s: int, num: str, den: str, alert_type: str
    ) -> tuple[list[tuple[int, float, float]], list[tuple[int, str, float, float]]]:
        """Per bucket, ``sum(num)`` and ``sum(den)`` over all tenants, and per bucket and
        tenant for the :data:`SHARE_TENANTS` tenants with the most ``alert_type`` alerts."""
        usage = f"{self.db}.llm_usage_1m"
        t = f"toUnixTimestamp(toStartOfInterval(minute, INTERVAL {bucket_s} SECOND))"
        overall = self.rows(
            f"SELECT {t} AS t, sum({num}), sum({den}) FROM {usage} GROUP BY t"  # noqa: S608
        )
        tenants = self.rows(
            f"""SELECT {t} AS t, tenant_id, sum({num}), sum({den}) FROM {usage}
               WHERE tenant_id IN (
                   SELECT tenant_id FROM {self.db}.llm_alerts
                   WHERE type = '{alert_type}' AND status = 'firing'
                   GROUP BY tenant_id ORDER BY uniqExact(alert_id) DESC, tenant_id
                   LIMIT {SHARE_TENANTS})
               GROUP BY t, tenant_id"""  # noqa: S608
        )
        return (
            [(int(r[0]), float(r[1]), float(r[2])) for r in overall],
            [(int(r[0]), str(r[1]), float(r[2]), float(r[3])) for r in tenants],
        )
