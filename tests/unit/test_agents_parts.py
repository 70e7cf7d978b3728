"""The agents' pure parts (budget answers, webhook routing file and retry policy, refresh
file names) and the ``agents`` command's checks: one line per bad configuration, no
traceback, before anything connects to Kafka."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import msgspec
import numpy as np
import pytest

from llmops_stream.agents.budgets import BearerToken, answer, parse_state
from llmops_stream.agents.refresh import file_name, write_atomic
from llmops_stream.agents.webhooks import (
    AlertHead,
    backlog_key,
    classify,
    load_webhooks,
    next_delay,
    parse_alert,
    retry_after_s,
    split_backlog_key,
)
from llmops_stream.stream.core.alerts import make_alert
from llmops_stream.stream.core.budget_config import parse_budgets
from llmops_stream.stream.core.errors import ConfigError
from llmops_stream.stream.kafka.records import alert_records, budget_state_records

POLICY = parse_budgets(
    {
        "default": [{"id": "h", "limit_usd": 3.0, "window": "1h", "soft": [0.5]}],
        "tenants": {"vip": [], "big": [{"limit_usd": 100, "window": "month"}]},
    }
)


def state_value(statuses: list[str]) -> bytes:
    n = len(statuses)
    columns = {
        "tenant_id": np.array(["acme"] * n, dtype=object),
        "budget_id": np.array([f"b{i}" for i in range(n)], dtype=object),
        "window": np.array(["1h"] * n, dtype=object),
        "limit_usd": np.full(n, 3.0),
        "spend_usd": np.full(n, 3.5),
        "remaining_usd": np.full(n, -0.5),
        "status": np.array(statuses, dtype=object),
        "as_of_ms": np.full(n, 1_780_000_000_000, dtype=np.int64),
        "period_start_ms": np.full(n, 1_779_996_400_000, dtype=np.int64),
        "current": np.ones(n, dtype=bool),
    }
    return budget_state_records(columns)[0].value


@pytest.mark.parametrize(
    ("statuses", "allow", "status"),
    [(["ok", "ok"], True, "ok"), (["warn", "ok"], True, "warn"),
     (["ok", "exceeded"], False, "exceeded")],
)  # fmt: skip
def test_allow_is_false_while_a_budget_is_exceeded(
    statuses: list[str], allow: bool, status: str
) -> None:
    got = json.loads(answer("acme", state_value(statuses), POLICY))
    assert (got["allow"], got["status"]) == (allow, status)
    assert list(got) == ["tenant_id", "allow", "status", "budgets"]
    assert list(got["budgets"][0]) == [
        "budget_id", "window", "spend_usd", "limit_usd", "remaining_usd", "status", "as_of",
    ]  # fmt: skip
    assert [b["status"] for b in got["budgets"]] == statuses


def test_a_tenant_without_state_gets_its_policy() -> None:
    default = json.loads(answer("new", None, POLICY))
    assert default == {
        "tenant_id": "new",
        "allow": True,
        "status": "ok",
        "budgets": [{"budget_id": "h", "window": "1h", "spend_usd": 0.0, "limit_usd": 3.0,
                     "remaining_usd": 3.0, "status": "ok", "as_of": None}],
    }  # fmt: skip
    assert json.loads(answer("vip", None, POLICY))["budgets"] == []  # listed: no budget
    assert json.loads(answer("big", None, POLICY))["budgets"][0]["budget_id"] == "month-100"
    assert json.loads(answer("x", None, None)) == {
        "tenant_id": "x", "allow": True, "status": "ok", "budgets": []
    }  # fmt: skip


@pytest.mark.parametrize(
    "value",
    [b"not json", b'{"tenant_id": "a"}',
     b'{"tenant_id": "a", "status": "broke", "as_of": "", "budgets": []}'],
)  # fmt: skip
def test_unreadable_state_records_are_refused(value: bytes) -> None:
    with pytest.raises(ValueError, match="not a budget state record"):
        parse_state(value)


class FakeRequest:
    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers


def test_bearer_token() -> None:
    token = BearerToken("s3cret")
    assert token.allows(FakeRequest({"Authorization": "Bearer s3cret"}))  # type: ignore[arg-type]
    for headers in ({}, {"Authorization": "Bearer s3cre"}, {"Authorization": "s3cret"}):
        assert not token.allows(FakeRequest(headers))  # type: ignore[arg-type]
    assert BearerToken("").allows(FakeRequest({}))  # type: ignore[arg-type]


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "hooks.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_routing_file_defaults_and_matching(tmp_path: Path) -> None:
    config = load_webhooks(
        write(
            tmp_path,
            {
                "routes": [
                    {"url": "https://a.example/h"},
                    {
                        "url": "http://b:8080/x",
                        "types": ["budget", "drift"],
                        "tenants": ["acme"],
                        "severities": ["critical"],
                        "id": "pager",
                        "headers": {"Authorization": "Bearer t"},
                    },
                ]
            },
        )  # fmt: skip
    )
    any_route, pager = config.routes
    assert (any_route.route_id, any_route.types, any_route.tenants) == (
        "https://a.example/h",
        ["*"],
        ["*"],
    )
    alert = AlertHead("a1", "firing", "budget", "critical", "acme")
    assert any_route.matches(alert) and pager.matches(alert)
    for other in (
        AlertHead("a1", "firing", "model", "critical", "acme"),
        AlertHead("a1", "firing", "budget", "warning", "acme"),
        AlertHead("a1", "resolved", "budget", "critical", "beta"),
    ):
        assert any_route.matches(other) and not pager.matches(other)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ("{", "invalid JSON at line 1 column 2"),
        ({"route": []}, "routes: Field required; route: Extra inputs are not permitted"),
        ({"routes": [{"url": "ftp://x/y"}]},
         "routes.0.url: must be an http:// or https:// URL, got 'ftp://x/y'"),
        ({"routes": [{"url": "http://x", "types": ["budgets"]}]},
         "routes.0.types: unknown alert type 'budgets': use budget, drift, freshness, model "
         "or *"),
        ({"routes": [{"url": "http://x", "tenants": []}]},
         "routes.0.tenants: List should have at least 1 item after validation, not 0"),
        ({"routes": [{"url": "http://x", "headers": {"Idempotency-Key": "k"}}]},
         "routes.0.headers: header 'Idempotency-Key' is set by the agents, not by a route"),
        ({"routes": [{"url": "http://x"}, {"url": "http://x", "types": ["drift"]}]},
         "routes.1: a second route with the id 'http://x' (routes with the same URL need "
         'distinct "id"s)'),
    ],
)  # fmt: skip
def test_bad_routing_files_are_one_line(tmp_path: Path, data: object, problem: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as exc:
        load_webhooks(path)
    message = str(exc.value)
    assert message.startswith(f"webhook file {path}: ") and problem in message, message
    assert "\n" not in message


def test_missing_routing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"webhook file .*nope.json: not found"):
        load_webhooks(tmp_path / "nope.json")


def test_alert_messages_and_backlog_keys() -> None:
    alert = make_alert(
        type="budget", severity="critical", tenant_id="acme", app="chat", metric="spend_usd",
        value=3.2, threshold=3.0, window_start_ms=0, window_end_ms=60_000, id_parts=("acme", "h"),
        status="resolved",
    )  # fmt: skip
    head = parse_alert(alert_records([alert])[0].value)
    assert (head.alert_id, head.status, head.type) == (alert.alert_id, "resolved", "budget")
    key = backlog_key("https://h.example/x?a=1", f"{head.alert_id}:{head.status}")
    assert split_backlog_key(key) == ("https://h.example/x?a=1", f"{alert.alert_id}:resolved")
    for bad in (b"[]", b'{"alert_id": "x"}', msgspec.json.encode({**msgspec.to_builtins(alert),
                                                                   "status": "open"})):  # fmt: skip
        with pytest.raises(ValueError, match="not an alert message"):
            parse_alert(bad)


def test_retry_policy() -> None:
    assert [classify(s) for s in (200, 204)] == ["delivered"] * 2
    # the route is down, overloaded or misconfigured: retried
    assert {classify(s) for s in (500, 502, 503, 401, 403, 404, 408, 409, 425, 429, 301)} == {
        "retry"
    }
    # the receiver will never take this message: dropped, not retried forever
    assert {classify(s) for s in (400, 410, 413, 415, 422)} == {"rejected"}
    delays = [0.0]
    for _ in range(10):
        delays.append(next_delay(delays[-1], 20.0))
    assert delays[1:] == [0.5, 1, 2, 4, 8, 16, 20, 20, 20, 20]
    assert (retry_after_s("3"), retry_after_s(None), retry_after_s("Wed, 21 Oct")) == (3, 0, 0)


def test_refresh_file_names() -> None:
    assert file_name("text-embedding-3-small") == "text-embedding-3-small.jsonl"
    org = file_name("org/model:v2")
    assert org.startswith("org_model_v2-") and org.endswith(".jsonl")
    assert file_name("org/model:v2") != file_name("org_model_v2")  # no collision
    assert not file_name("../x").startswith(".")


def test_write_atomic_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "m.jsonl"
    write_atomic(path, [b'{"id": 1}'])
    write_atomic(path, [b'{"id": 2}', b'{"id": 3}'])
    assert path.read_bytes() == b'{"id": 2}\n{"id": 3}\n'
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.jsonl"]


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("LLMOPS_")}
    return subprocess.run(
        [sys.executable, "-m", "llmops_stream.stream.cli", "agents", *args],
        env=base | {"COLUMNS": "40", "LLMOPS_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_bad_configuration_is_one_line(tmp_path: Path) -> None:
    hooks = write(tmp_path, {"routes": [{"url": "mailto:x@y"}]})
    cases = [
        (["--webhooks", str(hooks)], {},
         f"error: webhook file {hooks}: routes.0.url: must be an http:// or https:// URL, "
         "got 'mailto:x@y'"),
        (["--agents-port", "http"], {},
         "error: bad setting --agents-port (env twin LLMOPS_AGENTS_PORT): Input should be a "
         "valid integer, unable to parse string as an integer (got 'http')"),
        ([], {"LLMOPS_AGENTS_PORT": "70000"},
         "error: bad setting LLMOPS_AGENTS_PORT: Input should be less than or equal to 65535 "
         "(got '70000')"),
        (["--budgets", str(tmp_path / "none.json")], {},
         f"error: budget file {tmp_path / 'none.json'}: not found"),
        (["--refresh-dir", "/proc/no/such"], {},
         "error: refresh directory (--refresh-dir) /proc/no/such: cannot create it (No such "
         "file or directory)"),
    ]  # fmt: skip
    for args, env, line in cases:
        run = run_cli("--data-dir", str(tmp_path / "data"), *args, **env)
        assert run.returncode == 2, run.stderr
        assert run.stderr.splitlines() == [line]


def test_cli_port_in_use_and_kafka_unreachable(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = run_cli("--agents-port", str(port), "--data-dir", str(tmp_path))
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use (set "
        "--agents-port / LLMOPS_AGENTS_PORT)"
    ]
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    run = run_cli("--agents-port", str(port), "--data-dir", str(tmp_path))
    assert run.returncode == 2
    (line,) = run.stderr.splitlines()
    assert line.startswith("error: cannot reach Kafka at 127.0.0.1:9: ")


def test_help_explains_every_flag_and_its_env_twin() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "llmops_stream.stream.cli", "agents", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    text = " ".join(run.stdout.split())
    for flag, env in [
        ("--bootstrap-servers", "LLMOPS_KAFKA_BOOTSTRAP_SERVERS"),
        ("--agents-host", "LLMOPS_AGENTS_HOST"),
        ("--agents-port", "LLMOPS_AGENTS_PORT"),
        ("--app-id", "LLMOPS_AGENTS_APP_ID"),
        ("--data-dir", "LLMOPS_AGENTS_DATA_DIR"),
        ("--budgets", "LLMOPS_BUDGETS"),
        ("--webhooks", "LLMOPS_WEBHOOKS"),
        ("--refresh-dir", "LLMOPS_REFRESH_DIR"),
        ("--refresh-max", "LLMOPS_REFRESH_MAX"),
        ("--output-topic-prefix", "LLMOPS_OUTPUT_TOPIC_PREFIX"),
    ]:
        assert flag in text and env in text, flag
    for words in ("GET /budgets/{tenant_id}", "Idempotency-Key: <alert_id>:<status>",
                  "LLMOPS_AGENTS_TOKEN", "default 127.0.0.1", "default 6066"):  # fmt: skip
        assert words in text, words


def test_the_module_level_app_is_built_from_the_environment(tmp_path: Path) -> None:
    hooks = write(tmp_path, {"routes": [{"url": "http://127.0.0.1:9/h"}]})
    base = {k: v for k, v in os.environ.items() if not k.upper().startswith("LLMOPS_")}
    env = base | {
        "LLMOPS_AGENTS_APP_ID": "agents-x",
        "LLMOPS_AGENTS_PORT": "7123",
        "LLMOPS_OUTPUT_TOPIC_PREFIX": "stg.",
        "LLMOPS_WEBHOOKS": str(hooks),
        "LLMOPS_AGENTS_DATA_DIR": str(tmp_path / "d"),
    }
    code = (
        "from llmops_stream.agents.app import app\n"
        "print(app.conf.id, app.conf.web_port, app.conf.web_bind, sorted(app.tables),"
        " sorted(t for a in app.agents.values() for t in a.channel.topics))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
        check=True,
    )  # fmt: skip
    assert run.stdout.split(" ", 3)[:3] == ["agents-x", "7123", "127.0.0.1"]
    assert "'budget-state', 'webhook-backlog'" in run.stdout
    assert "eval-candidates" not in run.stdout  # no refresh directory: no refresh
    for topic in ("stg.llm.budget.state", "stg.llm.alerts.budget", "stg.llm.alerts.model"):
        assert topic in run.stdout
