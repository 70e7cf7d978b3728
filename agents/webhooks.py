"""Alert routing: every alert message of ``llm.alerts.*`` POSTed to the webhooks that match it.

Job
---
The routing file (``--webhooks``, ``LLMOPS_WEBHOOKS``)::

    {"routes": [{"url": "https://oncall.example/hook", "types": ["budget"],
                 "tenants": ["*"], "severities": ["critical"],
                 "headers": {"Authorization": "Bearer ..."}, "id": "oncall"}]}

``types``, ``tenants`` and ``severities`` list what a route takes (``"*"``: any; each
defaults to ``["*"]``); ``headers`` are sent with every POST; ``id`` (default: the URL)
names the route's backlog, so keep it when editing the URL of a route with alerts pending.

Each alert message, firing and resolved, is POSTed as it was published (the JSON of
``stream/core/alerts.py`` ``Alert``) to every matching route, with the header
``Idempotency-Key: <alert_id>:<status>``: delivery is at least once (a receiver drops a
repeat by that key).

Durability: the agent that reads the alert topics does not POST; it writes one entry per
(route, message) into a changelog-backed table, the backlog, and moves on. Each route has
its own delivery loop that POSTs the route's entries oldest first and deletes an entry once
the receiver accepted it (2xx). So a failing route never holds up another one or the alert
topics, and a restart recovers the backlog from its changelog and delivers what was pending.
An alert whose entry is not yet in the changelog when the process dies was not committed
on its topic either (faust flushes the changelog before committing offsets): it is read
again.

Retries: a network error, a timeout or an answer of 5xx, 401, 403, 404, 408, 409, 425 or
429 (the route is down, overloaded or misconfigured: that gets fixed) is retried with
exponential backoff (0.5 s doubling up to ``LLMOPS_WEBHOOK_MAX_BACKOFF_S``, or the
receiver's ``Retry-After`` if longer), forever. Any other 4xx says that this message will
never be accepted: it is dropped with an error log naming the route, the status and the key
(retrying it would block the route for good). Redirects are not followed (point the route
at the final URL).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import faust
import msgspec
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llmops_stream.stream.core.alerts import ALERT_TYPES
from llmops_stream.stream.core.errors import ConfigError

log = logging.getLogger(__name__)

TABLE = "webhook-backlog"
BASE_BACKOFF_S = 0.5
_SEP = "\x1f"  # between the route id and the idempotency key in a backlog key
_RESERVED_HEADERS = {"content-type", "idempotency-key", "content-length"}
# Answers that a retry can outlive: the receiver is down, overloaded or misconfigured.
_RETRY_4XX = {401, 403, 404, 408, 409, 425, 429}

Outcome = Literal["delivered", "rejected", "retry"]


class Route(BaseModel):
    """One route of the routing file (see the module doc)."""

    model_config = ConfigDict(extra="forbid")

    url: str
    types: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    tenants: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    severities: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)
    id: str | None = Field(default=None, min_length=1)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL, got {url!r}")
        return url

    @field_validator("types")
    @classmethod
    def _known_types(cls, types: list[str]) -> list[str]:
        for t in types:
            if t != "*" and t not in ALERT_TYPES:
                raise ValueError(f"unknown alert type {t!r}: use {', '.join(ALERT_TYPES)} or *")
        return types

    @field_validator("headers")
    @classmethod
    def _own_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name in headers:
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by the agents, not by a route")
        return headers

    @model_validator(mode="after")
    def _default_id(self) -> Route:
        if self.id is None:
            self.id = self.url
        return self

    @property
    def route_id(self) -> str:
        return self.id if self.id is not None else self.url

    def matches(self, alert: AlertHead) -> bool:
        return (
            ("*" in self.types or alert.type in self.types)
            and ("*" in self.tenants or alert.tenant_id in self.tenants)
            and ("*" in self.severities or alert.severity in self.severities)
        )


class WebhookConfig(BaseModel):
    """The routing file."""

    model_config = ConfigDict(extra="forbid")

    routes: list[Route]

    @model_validator(mode="after")
    def _distinct_ids(self) -> WebhookConfig:
        seen: set[str] = set()
        for i, route in enumerate(self.routes):
            if route.route_id in seen:
                raise ValueError(
                    f"routes.{i}: a second route with the id {route.route_id!r} (routes with the "
                    'same URL need distinct "id"s)'
                )
            seen.add(route.route_id)
        return self


def load_webhooks(path: str | Path) -> WebhookConfig:
    """Read and validate a routing file; :class:`ConfigError` with one line otherwise."""
    p = Path(path)
    where = f"webhook file {p}"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{where}: not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read it ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{where}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    try:
        return WebhookConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(part) for part in err["loc"]) or "(top level)"
            problems.append(f"{loc}: {str(err['msg']).removeprefix('Value error, ')}")
        raise ConfigError(f"{where}: {'; '.join(problems)}") from None


class AlertHead(msgspec.Struct):
    """The fields of an alert message that routing and the idempotency key need."""

    alert_id: str
    status: Literal["firing", "resolved"]
    type: str
    severity: str
    tenant_id: str


_decode_head = msgspec.json.Decoder(AlertHead).decode


def parse_alert(value: bytes) -> AlertHead:
    """The routing fields of an alert message; ``ValueError`` if it is not one."""
    try:
        return _decode_head(value)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not an alert message: {exc}") from None


def idempotency_key(alert: AlertHead) -> str:
    return f"{alert.alert_id}:{alert.status}"


def backlog_key(route_id: str, idem: str) -> bytes:
    return f"{route_id}{_SEP}{idem}".encode()


def split_backlog_key(key: bytes) -> tuple[str, str]:
    route_id, _, idem = key.decode().rpartition(_SEP)
    return route_id, idem


def classify(status: int) -> Outcome:
    """What an HTTP answer means for a message (see the module doc)."""
    if 200 <= status < 300:
        return "delivered"
    if 400 <= status < 500 and status not in _RETRY_4XX:
        return "rejected"
    return "retry"


def retry_after_s(value: str | None) -> float:
    """Seconds of a ``Retry-After: <seconds>`` header (an HTTP date counts as none)."""
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0


def next_delay(previous: float, max_backoff_s: float) -> float:
    """Exponential backoff: 0.5 s, 1 s, 2 s, … capped at ``max_backoff_s``."""
    return min(max_backoff_s, max(BASE_BACKOFF_S, previous * 2))


class RouteState:
    """A route's queue (backlog keys, oldest first) and counters."""

    def __init__(self, route: Route) -> None:
        self.route = route
        self.queue: OrderedDict[bytes, None] = OrderedDict()
        self.wake = asyncio.Event()
        self.delivered = 0
        self.rejected = 0
        self.failures = 0  # consecutive failed tries of the oldest message
        self.last_error: str | None = None

    def add(self, key: bytes) -> None:
        self.queue[key] = None
        self.wake.set()


class AlertRouter:
    """The backlog table, the agent that fills it and one delivery loop per route."""

    def __init__(
        self,
        app: faust.App,
        topic: faust.TopicT,
        config: WebhookConfig,
        *,
        timeout_s: float,
        max_backoff_s: float,
    ) -> None:
        self.routes = {r.route_id: RouteState(r) for r in config.routes}
        self.timeout_s = timeout_s
        self.max_backoff_s = max_backoff_s
        self.unreadable = 0
        # use_partitioner: the delivery loops delete entries outside of any stream event,
        # which faust allows when a key's partition comes from its hash.
        self.table = app.Table(
            TABLE,
            key_type=bytes,
            value_type=bytes,
            use_partitioner=True,
            on_recover=self._on_recover,
            help="alert messages not yet accepted by a route, by route and idempotency key",
        )
        app.agent(topic, name="alert-router")(self._route)
        # faust starts tasks once the tables are recovered, so the queues are built by then
        app.task(self._deliver_all)

    async def _on_recover(self) -> None:
        for state in self.routes.values():
            state.queue.clear()
        orphans: list[bytes] = []
        for key in list(self.table.keys()):
            route_id, _ = split_backlog_key(key)
            owner = self.routes.get(route_id)
            if owner is None:
                orphans.append(key)
            else:
                owner.add(key)
        for key in orphans:
            # the route was removed from the routing file: nobody is left to deliver to
            log.warning({"event": "webhook_backlog_orphan", "key": key.decode(errors="replace")})
            self.table.pop(key, None)
        pending = sum(len(s.queue) for s in self.routes.values())
        log.info({"event": "webhook_backlog_recovered", "pending": pending})

    async def _route(self, stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            self.enqueue(event.value)

    def enqueue(self, value: bytes | None) -> int:
        """Put one alert message into the backlog of every matching route; their number."""
        if value is None:
            return 0
        try:
            alert = parse_alert(value)
        except ValueError as exc:
            self.unreadable += 1
            log.warning({"event": "alert_unreadable", "error": str(exc)})
            return 0
        idem = idempotency_key(alert)
        n = 0
        for state in self.routes.values():
            if state.route.matches(alert):
                key = backlog_key(state.route.route_id, idem)
                self.table[key] = value
                state.add(key)
                n += 1
        return n

    async def _deliver_all(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(*(self._deliver(s, session) for s in self.routes.values()))

    async def _deliver(self, state: RouteState, session: aiohttp.ClientSession) -> None:
        delay = 0.0
        while True:
            key = next(iter(state.queue), None)
            if key is None:
                state.wake.clear()
                await state.wake.wait()
                continue
            body = self.table.get(key)
            if body is None:  # delivered meanwhile under the same key
                state.queue.pop(key, None)
                continue
            _, idem = split_backlog_key(key)
            outcome, wait_s, error = await self._post(session, state.route, idem, body)
            if outcome == "retry":
                state.failures += 1
                state.last_error = error
                delay = next_delay(delay, self.max_backoff_s)
                wait = min(self.max_backoff_s, max(delay, wait_s))
                log.warning(
                    {
                        "event": "webhook_retry",
                        "route": state.route.route_id,
                        "key": idem,
                        "error": error,
                        "failures": state.failures,
                        "retry_in_s": wait,
                    }
                )
                await asyncio.sleep(wait)
                continue
            if outcome == "rejected":
                state.rejected += 1
                log.error(
                    {
                        "event": "webhook_rejected",
                        "route": state.route.route_id,
                        "key": idem,
                        "error": error,
                        "action": "dropped: the receiver refuses this message",
                    }
                )
            else:
                state.delivered += 1
            state.failures, state.last_error, delay = 0, None, 0.0
            state.queue.pop(key, None)
            self.table.pop(key, None)

    async def _post(
        self, session: aiohttp.ClientSession, route: Route, idem: str, body: bytes
    ) -> tuple[Outcome, float, str | None]:
        headers = {
            **route.headers,
            "Content-Type": "application/json",
            "Idempotency-Key": idem,
            "User-Agent": "llmops-stream-agents",
        }
        try:
            async with session.post(
                route.url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                await resp.read()
                status, after = resp.status, resp.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            return "retry", 0.0, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # never let one odd failure end the route's loop
            log.exception({"event": "webhook_error", "route": route.route_id})
            return "retry", 0.0, f"{type(exc).__name__}: {exc}"
        outcome = classify(status)
        return outcome, retry_after_s(after), None if outcome == "delivered" else f"HTTP {status}"

    def health(self) -> dict[str, Any]:
        return {
            "routes": len(self.routes),
            "pending": sum(len(s.queue) for s in self.routes.values()),
            "delivered": sum(s.delivered for s in self.routes.values()),
            "rejected": sum(s.rejected for s in self.routes.values()),
            "failing_routes": sum(1 for s in self.routes.values() if s.failures),
            "unreadable_alerts": self.unreadable,
        }
