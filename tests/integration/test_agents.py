"""``llmops-stream agents`` on a real broker: the budget view (caps, defaults, token,
restart from the changelog), webhooks (retries, isolation, a backlog that survives a
restart) and the eval-set refresh files.

The agents run as real processes (``python -m llmops_stream.stream.cli agents``), each test
with its own topics (an output prefix) and app id. Records are produced the way the worker
publishes them, with the functions of ``stream/kafka/records.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from workers import committed_offsets, end_offsets

from llmops_stream.stream.core.alerts import Alert, make_alert
from llmops_stream.stream.core.evalset import load_eval_sets
from llmops_stream.stream.dev.kafka_broker import KafkaBroker
from llmops_stream.stream.kafka.records import (
    Record,
    alert_records,
    budget_state_records,
    candidate_records,
)

pytestmark = pytest.mark.integration

PARTITIONS = 3
AS_OF_MS = 1_780_000_000_000
BUDGETS = {
    "default": [
        {"id": "h", "limit_usd": 3.0, "window": "1h", "soft": [0.5, 0.8], "hard": 1.0},
        {"id": "d", "limit_usd": 20.0, "window": "day", "soft": [0.5]},
    ],
    "tenants": {"vip": [{"id": "m", "limit_usd": 500.0, "window": "month"}]},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Agents:
    """``llmops-stream agents`` processes of one test (started and ended by PID)."""

    def __init__(
        self, broker: KafkaBroker, tmp: Path, prefix: str, app_id: str, **env: str
    ) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.data_dir = tmp / "agents-data"
        self.app_id, self.prefix = app_id, prefix
        self.bootstrap = broker.bootstrap_servers
        base = {k: v for k, v in os.environ.items() if not k.upper().startswith("LLMOPS_")}
        self.env = base | {
            "LLMOPS_KAFKA_CACHE": os.environ.get("LLMOPS_KAFKA_CACHE", ""),
            "LLMOPS_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "LLMOPS_OUTPUT_TOPIC_PREFIX": prefix,
            "LLMOPS_AGENTS_APP_ID": app_id,
            "LLMOPS_AGENTS_DATA_DIR": str(self.data_dir),
            "LLMOPS_AGENTS_PORT": str(self.port),
            "LLMOPS_PARTITIONS": str(PARTITIONS),
            "LLMOPS_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "LLMOPS_WEBHOOK_MAX_BACKOFF_S": "1",
            "LLMOPS_REFRESH_INTERVAL_S": "0.2",
            **env,
        }
        if not self.env["LLMOPS_KAFKA_CACHE"]:
            del self.env["LLMOPS_KAFKA_CACHE"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self, probe: str | None = None) -> float:
        """Start a process and wait until it answers /healthz with 200; the seconds from the
        start to then. With ``probe``, wait instead for the first 200 of
        ``GET /budgets/<probe>`` (kept in ``first_answer``): every answer before it must be a
        503 (recovering), never a made-up default."""
        self.first_answer: dict[str, Any] | None = None
        self.runs += 1
        log = (self.tmp / f"agents-{self.runs}.log").open("wb")
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmops_stream.stream.cli", "agents"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = started + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.logs()
            status, body = self.get(f"/budgets/{probe}" if probe else "/healthz")
            if status == 200:
                self.first_answer = body
                return time.monotonic() - started
            assert status in (None, 503), (status, body)
            time.sleep(0.01)
        raise AssertionError("the agents never became ready:\n" + self.logs())

    def stop(self) -> None:
        """SIGTERM and a clean exit."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(60) == 0, self.logs()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-4000:] for p in sorted(self.tmp.glob("agents-*.log"))
        )

    def get(self, path: str, token: str | None = None) -> tuple[int | None, Any]:
        """(status, JSON body) of a GET, (None, None) while nothing listens."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310 - http://
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())
        except OSError:
            return None, None

    def health(self) -> dict[str, Any]:
        status, body = self.get("/healthz")
        assert status == 200, (status, body)
        return dict(body)

    def budget(self, tenant: str, token: str | None = None) -> dict[str, Any]:
        status, body = self.get(f"/budgets/{tenant}", token)
        assert status == 200, (status, body)
        return dict(body)

    def wait_for(self, what: str, check: Any, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.logs()
            if check():
                return
            time.sleep(0.05)
        raise AssertionError(f"{what}: not within {timeout_s} s\n" + self.logs())


@pytest.fixture
def agents_of(kafka_broker: KafkaBroker, unique_name: Any, tmp_path: Path) -> Iterator[Any]:
    made: list[Agents] = []

    def make(**env: str) -> Agents:
        agents = Agents(kafka_broker, tmp_path, unique_name("ag") + ".", unique_name("app"), **env)
        made.append(agents)
        return agents

    yield make
    for agents in made:
        agents.kill()


def produce(bootstrap: str, records: list[Record]) -> None:
    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for r in records:
                await producer.send_and_wait(r.topic, r.value, key=r.key)
        finally:
            await producer.stop()

    asyncio.run(send())


def state(
    tenant: str, rows: list[tuple[str, str, float, float, str]], as_of_ms: int = AS_OF_MS
) -> Record:
    """The ``llm.budget.state`` record of one tenant, as the worker publishes it; ``rows``:
    (budget_id, window, limit_usd, spend_usd, status) per budget."""
    n = len(rows)
    columns = {
        "tenant_id": np.array([tenant] * n, dtype=object),
        "budget_id": np.array([r[0] for r in rows], dtype=object),
        "window": np.array([r[1] for r in rows], dtype=object),
        "limit_usd": np.array([r[2] for r in rows]),
        "spend_usd": np.array([r[3] for r in rows]),
        "remaining_usd": np.array([r[2] - r[3] for r in rows]),
        "status": np.array([r[4] for r in rows], dtype=object),
        "as_of_ms": np.full(n, as_of_ms, dtype=np.int64),
        "period_start_ms": np.full(n, as_of_ms - 3_600_000, dtype=np.int64),
        "current": np.ones(n, dtype=bool),
    }
    return budget_state_records(columns)[0]


def at_prefix(records: list[Record], prefix: str) -> list[Record]:
    return [r._replace(topic=prefix + r.topic) for r in records]


def test_hard_cap_default_policy_and_token(agents_of: Any, tmp_path: Path) -> None:
    budgets = tmp_path / "budgets.json"
    budgets.write_text(json.dumps(BUDGETS))
    token = "s3cret"  # noqa: S105 - the test's own token
    agents = agents_of(LLMOPS_BUDGETS=str(budgets), LLMOPS_AGENTS_TOKEN=token)
    agents.start()

    # a wrong or missing token: 401 with a JSON error; /healthz needs none
    for given in (None, "wrong", "s3cre", "s3cret2"):
        status, body = agents.get("/budgets/acme", given)
        assert status == 401 and "bearer token" in body["error"], (given, status, body)
    assert agents.get("/healthz")[0] == 200

    # an unknown tenant gets its default policy, nothing spent
    assert agents.budget("newcomer", token) == {
        "tenant_id": "newcomer",
        "allow": True,
        "status": "ok",
        "budgets": [
            {"budget_id": "h", "window": "1h", "spend_usd": 0.0, "limit_usd": 3.0,
             "remaining_usd": 3.0, "status": "ok", "as_of": None},
            {"budget_id": "d", "window": "day", "spend_usd": 0.0, "limit_usd": 20.0,
             "remaining_usd": 20.0, "status": "ok", "as_of": None},
        ],
    }  # fmt: skip
    vip = agents.budget("vip", token)  # a listed tenant: its own rules
    assert [(b["budget_id"], b["limit_usd"]) for b in vip["budgets"]] == [("m", 500.0)]

    # the tenant crosses its hourly cap, then the hour rolls over
    produce(
        agents.bootstrap,
        at_prefix(
            [
                state("acme", [("h", "1h", 3.0, 1.0, "ok"), ("d", "day", 20.0, 5.0, "ok")]),
                state("acme", [("h", "1h", 3.0, 3.2, "exceeded"), ("d", "day", 20.0, 7.0, "ok")]),
            ],
            agents.prefix,
        ),
    )
    agents.wait_for("the cap", lambda: not agents.budget("acme", token)["allow"])
    capped = agents.budget("acme", token)
    assert capped["status"] == "exceeded"
    assert capped["budgets"][0] == {
        "budget_id": "h",
        "window": "1h",
        "spend_usd": 3.2,
        "limit_usd": 3.0,
        "remaining_usd": pytest.approx(-0.2),
        "status": "exceeded",
        "as_of": "2026-05-28T20:26:40.000Z",
    }
    # a warn level is no cap
    produce(
        agents.bootstrap,
        at_prefix([state("acme", [("h", "1h", 3.0, 2.5, "warn")], AS_OF_MS + 1)], agents.prefix),
    )
    agents.wait_for("back under the cap", lambda: agents.budget("acme", token)["allow"])
    assert agents.budget("acme", token)["status"] == "warn"

    # a record the agents cannot read is skipped, and the next one still applies
    bad = Record(agents.prefix + "llm.budget.state", b"acme", b'{"tenant_id": "acme"}', [])
    good = state("acme", [("h", "1h", 3.0, 4.0, "exceeded")], AS_OF_MS + 2)
    produce(agents.bootstrap, [bad, *at_prefix([good], agents.prefix)])
    agents.wait_for("the cap again", lambda: not agents.budget("acme", token)["allow"])
    assert agents.health()["budgets"]["rejected"] == 1
    agents.stop()


def test_restart_answers_at_once_from_the_changelog(agents_of: Any) -> None:
    agents = agents_of()
    agents.start()
    tenants = [f"t{i:03d}" for i in range(200)]
    records = [state(t, [("h", "1h", 3.0, 1.0, "ok")]) for t in tenants]
    records.append(state("t007", [("h", "1h", 3.0, 3.5, "exceeded")], AS_OF_MS + 1))
    produce(agents.bootstrap, at_prefix(records, agents.prefix))
    agents.wait_for("all records", lambda: agents.health()["budgets"]["applied"] == 201)
    assert not agents.budget("t007")["allow"]
    assert agents.budget("t150")["budgets"][0]["spend_usd"] == 1.0

    topic = agents.prefix + "llm.budget.state"
    end = asyncio.run(end_offsets(agents.bootstrap, topic, PARTITIONS))
    assert sum(end.values()) == 201

    def committed() -> dict[int, int]:
        return asyncio.run(committed_offsets(agents.bootstrap, agents.app_id, topic))

    agents.wait_for("offsets committed", lambda: committed() == end)
    agents.stop()

    for wipe_local_state in (False, True):
        if wipe_local_state:
            # without its RocksDB files the table comes back from its changelog topic
            shutil.rmtree(agents.data_dir)
        seconds = agents.start(probe="t007")
        # the first answer after the start is the state it had: no default before it
        assert agents.first_answer is not None and not agents.first_answer["allow"]
        assert agents.first_answer["budgets"][0]["spend_usd"] == 3.5
        assert agents.budget("t150")["budgets"][0]["spend_usd"] == 1.0
        assert agents.budget("t199")["budgets"][0]["as_of"] == "2026-05-28T20:26:40.000Z"
        # and llm.budget.state was not read again: the agent applied no record
        assert agents.health()["budgets"]["applied"] == 0
        assert committed() == end
        assert seconds < 60, seconds
        agents.stop()
    assert "budget_table_ready" in agents.logs()


class Hooks:
    """A local webhook receiver: ``/a`` answers 500 while ``failing``, ``/b`` always 200.
    Records every request as (path, Idempotency-Key, body, status answered)."""

    def __init__(self) -> None:
        self.failing = True
        self.requests: list[tuple[str, str, bytes, int]] = []
        self.lock = threading.Lock()
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 500 if self.path == "/a" and hooks.failing else 200
                with hooks.lock:
                    hooks.requests.append(
                        (self.path, self.headers.get("Idempotency-Key", ""), body, status)
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted(self, path: str) -> dict[str, bytes]:
        """Idempotency key → body of the requests to ``path`` answered 2xx."""
        with self.lock:
            return {k: b for p, k, b, s in self.requests if p == path and s == 200}

    def tries(self, path: str) -> int:
        with self.lock:
            return sum(1 for p, *_ in self.requests if p == path)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def alerts(tag: str) -> list[Alert]:
    """A firing and a resolved budget alert, and a drift alert, for each of two tenants."""
    out = []
    for tenant in ("acme", "beta"):
        for status in ("firing", "resolved"):
            out.append(
                make_alert(
                    type="budget", severity="critical", tenant_id=tenant, app="chat",
                    metric="spend_usd", value=3.2, threshold=3.0, window_start_ms=AS_OF_MS,
                    window_end_ms=AS_OF_MS + 60_000, id_parts=(tenant, tag, "h"), status=status,
                    emitted_at_ms=AS_OF_MS,
                )
            )  # fmt: skip
        out.append(
            make_alert(
                type="drift", severity="warning", tenant_id=tenant, app="chat",
                metric="uncovered_share", value=0.3, threshold=0.15, window_start_ms=AS_OF_MS,
                window_end_ms=AS_OF_MS + 60_000, id_parts=(tenant, tag, "drift"),
                emitted_at_ms=AS_OF_MS,
            )
        )  # fmt: skip
    return out


def keys_of(batch: list[Alert]) -> set[str]:
    return {f"{a.alert_id}:{a.status}" for a in batch}


def test_webhooks_retry_isolate_and_survive_a_restart(agents_of: Any, tmp_path: Path) -> None:
    hooks = Hooks()
    routes = tmp_path / "webhooks.json"
    routes.write_text(
        json.dumps(
            {
                "routes": [
                    {
                        "url": hooks.url + "/a",
                        "types": ["budget"],
                        "tenants": ["*"],
                        "severities": ["*"],
                    },
                    {
                        "url": hooks.url + "/b",
                        "types": ["*"],
                        "tenants": ["acme"],
                        "severities": ["warning", "critical"],
                        "headers": {"X-Team": "oncall"},
                    },
                ]
            }
        )
    )
    agents = agents_of(LLMOPS_WEBHOOKS=str(routes))
    try:
        agents.start()
        first = alerts("first")
        produce(agents.bootstrap, alert_records(first, agents.prefix))
        to_a = keys_of([a for a in first if a.type == "budget"])
        to_b = keys_of([a for a in first if a.tenant_id == "acme"])
        # /a fails: /b gets its alerts meanwhile, and /a is retried
        agents.wait_for("route b", lambda: set(hooks.accepted("/b")) == to_b)
        agents.wait_for("retries of a", lambda: hooks.tries("/a") >= 3)
        assert hooks.accepted("/a") == {}
        assert agents.health()["webhooks"]["pending"] == len(to_a)

        # stopped with /a's backlog pending, once the alert topics are committed: after the
        # restart, the backlog alone knows what /a still needs
        alert_topics = [agents.prefix + f"llm.alerts.{t}" for t in ("budget", "drift")]

        def all_committed() -> bool:
            for topic in alert_topics:
                end = asyncio.run(end_offsets(agents.bootstrap, topic, PARTITIONS))
                got = asyncio.run(committed_offsets(agents.bootstrap, agents.app_id, topic))
                if got != {p: e for p, e in end.items() if e}:
                    return False
            return True

        agents.wait_for("alert offsets committed", all_committed)
        agents.stop()
        agents.start()
        assert agents.health()["webhooks"]["pending"] == len(to_a)
        second = alerts("second")
        produce(agents.bootstrap, alert_records(second, agents.prefix))
        to_a |= keys_of([a for a in second if a.type == "budget"])
        to_b |= keys_of([a for a in second if a.tenant_id == "acme"])
        agents.wait_for("route b again", lambda: set(hooks.accepted("/b")) == to_b)
        time.sleep(1.5)  # /a keeps failing a while longer
        hooks.failing = False
        agents.wait_for("route a", lambda: set(hooks.accepted("/a")) == to_a)
        agents.wait_for("backlog empty", lambda: agents.health()["webhooks"]["pending"] == 0)

        published = {f"{a.alert_id}:{a.status}": a for a in first + second}
        for path in ("/a", "/b"):
            for key, body in hooks.accepted(path).items():
                sent = json.loads(body)  # the alert message as published
                assert sent == json.loads(alert_records([published[key]])[0].value)
                assert key == f"{sent['alert_id']}:{sent['status']}"
        # nothing went where it does not match
        assert {p for p, *_ in hooks.requests} == {"/a", "/b"}
        assert all(published[k].type == "budget" for p, k, *_ in hooks.requests if p == "/a")
        assert all(published[k].tenant_id == "acme" for p, k, *_ in hooks.requests if p == "/b")
        agents.stop()
    finally:
        hooks.close()


def candidates(rows: list[tuple[str, str, list[float]]]) -> dict[str, Any]:
    """Candidate columns (as the engine emits them) of (event_id, model, embedding) rows."""
    n = len(rows)
    return {
        "event_id": [r[0] for r in rows],
        "ts": np.full(n, AS_OF_MS, dtype=np.int64),
        "tenant_id": ["acme"] * n,
        "app": ["chat"] * n,
        "embedding_model": [r[1] for r in rows],
        "eval_set_version": ["v1"] * n,
        "nn_sim": np.full(n, 0.2),
        "centroid_sim": np.full(n, 0.1),
        "nearest_eval_id": ["e1"] * n,
        "embedding": [np.asarray(r[2], dtype=np.float32) for r in rows],
    }


def test_refresh_files_are_deduplicated_and_capped(agents_of: Any, tmp_path: Path) -> None:
    out = tmp_path / "refresh"
    agents = agents_of(LLMOPS_REFRESH_DIR=str(out), LLMOPS_REFRESH_MAX="3")
    agents.start()
    rows = [
        ("c1", "small", [1.0, 0.0, 0.0]),
        ("c2", "small", [0.0, 1.0, 0.0]),
        ("c3", "small", [1.0, 0.0, 0.0]),  # the same input as c1: a duplicate
        ("c2", "small", [0.0, 1.0, 0.0]),  # c2 again (a redelivery)
        ("m1", "org/large-v2", [0.5, 0.5, 0.0, 0.0]),
        ("m2", "org/large-v2", [0.0, 0.5, 0.5, 0.0]),
        ("m3", "org/large-v2", [0.0, 0.0, 0.5, 0.5]),
        ("m4", "org/large-v2", [0.5, 0.0, 0.0, 0.5]),  # over the cap: m1 goes
        ("m5", "org/large-v2", [0.5, 0.0, 0.0]),  # another dimension: skipped
    ]
    produce(agents.bootstrap, candidate_records(candidates(rows), agents.prefix))
    small = out / "small.jsonl"

    def written() -> bool:
        files = sorted(out.glob("*.jsonl"))
        if len(files) != 2 or not small.exists():
            return False
        lines = sum(len(f.read_text().splitlines()) for f in files)
        return lines == 5 and agents.health()["refresh"]["skipped"] == 1

    agents.wait_for("refresh files", written)
    large = next(f for f in out.glob("*.jsonl") if f != small)
    assert large.name.startswith("org_large-v2-")  # '/' is no file-name character
    lines = [json.loads(line) for line in small.read_text().splitlines()]
    assert [(x["id"], x["embedding_model"]) for x in lines] == [("c1", "small"), ("c2", "small")]
    assert [json.loads(x)["id"] for x in large.read_text().splitlines()] == ["m2", "m3", "m4"]
    # the eval-set format: the loader takes the files as they are, vectors intact
    sets = load_eval_sets(small)
    assert sets["small"].ids == ["c1", "c2"]
    np.testing.assert_allclose(sets["small"].vectors, [[1, 0, 0], [0, 1, 0]])
    assert load_eval_sets(large)["org/large-v2"].size == 3
    assert agents.health()["refresh"]["duplicates"] == 2
    assert not list(out.glob(".*"))  # no temporary file left behind
    agents.stop()
