"""docker-compose.yml, the Dockerfile, Grafana provisioning and kafka/pom.xml are right.

No Docker engine exists where the tests run, so the files are checked for what can be
checked without one: they parse; the services, ports, dependencies and environment fit
together; the worker and load-generator commands parse with the real CLI and every
``LLMOPS_*`` variable is a real setting; the Grafana datasource points at the ClickHouse
service; every dashboard query reads existing tables and columns and runs on the embedded
ClickHouse (chDB) against the real schema.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys
import textwrap
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmops_stream.agents.webhooks import load_webhooks
from llmops_stream.stream.cli.main import build_parser
from llmops_stream.stream.core.budgets import load_budgets
from llmops_stream.stream.dev.kafka_broker import KAFKA_VERSION, LOG4J_VERSION, POM_TEMPLATE
from llmops_stream.stream.runtime.settings import OTHER_ENV, Settings

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "llmops-stream.json"

# SPEC §4: the input topic and every output topic.
TOPICS = {
    "llm.calls",
    "llm.calls.dlq",
    "llm.alerts.budget",
    "llm.alerts.drift",
    "llm.alerts.freshness",
    "llm.alerts.model",
    "llm.budget.state",
    "llm.eval.candidates",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    svc = compose["services"]
    assert isinstance(svc, dict)
    return svc


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):  # the "KEY=value" list form
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def schema_tables() -> dict[str, set[str]]:
    """Table → column names, from the DDL the worker applies."""
    ddl = (ROOT / "schemas" / "clickhouse.sql").read_text()
    tables: dict[str, set[str]] = {}
    for match in re.finditer(r"CREATE TABLE IF NOT EXISTS \{db\}\.(\w+)\s*\((.*?)\n\)", ddl, re.S):
        cols = {
            line.split()[0]
            for line in match.group(2).splitlines()
            if line.strip() and not line.strip().startswith("--")
        }
        tables[match.group(1)] = cols
    assert "llm_usage_1m" in tables and "minute" in tables["llm_usage_1m"]
    return tables


# -- docker-compose.yml -------------------------------------------------------------------------


def test_compose_has_the_stack(services: dict[str, Any]) -> None:
    assert {"kafka", "kafka-init", "clickhouse", "grafana", "worker", "loadgen", "agents"} <= set(
        services
    )
    assert services["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")


def test_kafka_is_single_node_kraft(services: dict[str, Any]) -> None:
    env = env_of(services["kafka"])
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    node = env["KAFKA_NODE_ID"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{node}@kafka:9093"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[key] == "1", key
    # Each listener name has a protocol and every listener is either advertised or the
    # controller's.
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    names = {listener.split("://")[0] for listener in env["KAFKA_LISTENERS"].split(",")}
    assert names <= set(protocols)
    advertised = {a.split("://")[0] for a in env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    assert names == advertised | {env["KAFKA_CONTROLLER_LISTENER_NAMES"]}
    # kafka-storage only takes a 16-byte id in URL-safe base64 (22 characters).
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"])


def test_topics_of_the_contract_are_created(services: dict[str, Any]) -> None:
    init = services["kafka-init"]
    script = "\n".join(init["command"]) if isinstance(init["command"], list) else init["command"]
    created = set(re.findall(r"\bllm\.[a-z.]+[a-z]", script))
    assert created == TOPICS
    compact_line = next(line for line in script.splitlines() if "cleanup.policy=compact" in line)
    prev = script.splitlines()[script.splitlines().index(compact_line) - 1]
    assert "llm.budget.state" in prev + compact_line
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_ports_only_on_loopback(services: dict[str, Any]) -> None:
    published = [p for svc in services.values() for p in svc.get("ports", [])]
    assert published
    for port in published:
        assert str(port).startswith("127.0.0.1:"), port


def test_dependencies_exist_and_wait_for_readiness(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        for dep, cond in deps.items() if isinstance(deps, dict) else []:
            assert dep in services, (name, dep)
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], dep
    worker = services["worker"]["depends_on"]
    assert worker["kafka-init"]["condition"] == "service_completed_successfully"
    assert worker["clickhouse"]["condition"] == "service_healthy"
    assert services["loadgen"]["depends_on"]["kafka-init"]["condition"] == (
        "service_completed_successfully"
    )


def test_two_worker_replicas_of_one_configuration(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert worker["deploy"]["replicas"] == 2
    # one published /metrics port per replica, on loopback
    [port] = worker["ports"]
    assert port == "127.0.0.1:9464-9465:9464"
    assert "container_name" not in worker  # a fixed name would stop the second replica


def test_worker_command_and_environment(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert worker["build"]["context"] == "."
    assert (ROOT / worker["build"].get("dockerfile", "Dockerfile")).is_file()
    cmd = worker["command"]
    assert cmd == [
        "run", "--bootstrap-servers", "kafka:9092", "--clickhouse", "http://clickhouse:8123",
    ]  # fmt: skip
    args = build_parser().parse_args(cmd)  # the real CLI accepts it
    assert args.command == "run"
    assert args.kafka_bootstrap_servers == "kafka:9092"
    assert args.clickhouse == "http://clickhouse:8123"
    env = env_of(worker)
    fields = set(Settings.model_fields)
    for key in env:
        assert key.startswith("LLMOPS_"), key
        assert key.removeprefix("LLMOPS_").lower() in fields, f"{key} is not a setting"
    # The worker logs into ClickHouse with the credentials the server was set up with.
    ch = env_of(services["clickhouse"])
    assert env["LLMOPS_CLICKHOUSE_USER"] == ch["CLICKHOUSE_USER"]
    assert env["LLMOPS_CLICKHOUSE_PASSWORD"] == ch["CLICKHOUSE_PASSWORD"]
    assert env["LLMOPS_CLICKHOUSE_DATABASE"] == ch["CLICKHOUSE_DB"]
    assert "PASSWORD" not in " ".join(cmd).upper()  # secrets via env, not on the command line
    # Files mounted into the worker exist, and the budget file is a valid one.
    budgets = None
    for volume in worker.get("volumes", []):
        src, target = volume.split(":")[:2]
        assert (ROOT / src).exists(), src
        if target == env.get("LLMOPS_BUDGETS"):
            budgets = load_budgets(ROOT / src)
    assert budgets is not None and budgets.default


def test_loadgen_command(services: dict[str, Any]) -> None:
    loadgen = services["loadgen"]
    assert loadgen["image"] == services["worker"]["image"]
    args = build_parser().parse_args(loadgen["command"])
    assert args.command == "loadgen"
    assert args.rate == 2000
    assert args.kafka_bootstrap_servers == "kafka:9092"
    for key in env_of(loadgen):
        assert key.removeprefix("LLMOPS_").lower() in Settings.model_fields, key


def test_agents_command_environment_and_port(
    services: dict[str, Any], compose: dict[str, Any]
) -> None:
    agents, worker = services["agents"], services["worker"]
    # the worker's image (built by the worker service), not a second build
    assert agents["image"] == worker["image"] and "build" not in agents
    assert agents["pull_policy"] == "never"
    args = build_parser().parse_args(agents["command"])  # the real CLI accepts it
    assert args.command == "agents"
    env = env_of(agents)
    # every variable is one the CLI accepts (a setting, or one it reads on its own)
    known = {f"LLMOPS_{field.upper()}" for field in Settings.model_fields} | set(OTHER_ENV)
    assert set(env) <= known, set(env) - known
    assert {
        "LLMOPS_AGENTS_HOST", "LLMOPS_AGENTS_PORT", "LLMOPS_AGENTS_TOKEN", "LLMOPS_WEBHOOKS",
        "LLMOPS_REFRESH_DIR", "LLMOPS_KAFKA_BOOTSTRAP_SERVERS", "LLMOPS_BUDGETS",
    } <= set(env)  # fmt: skip
    # Kafka through the listener advertised inside the stack, like the worker
    assert env["LLMOPS_KAFKA_BOOTSTRAP_SERVERS"] == env_of(worker)["LLMOPS_KAFKA_BOOTSTRAP_SERVERS"]
    # HTTP on the container's interface, published on the host's loopback only
    assert ipaddress.ip_address(env["LLMOPS_AGENTS_HOST"]).is_unspecified  # 0.0.0.0
    assert agents["ports"] == [f"127.0.0.1:6066:{env['LLMOPS_AGENTS_PORT']}"]
    assert env["LLMOPS_AGENTS_PORT"] == "6066"
    assert env["LLMOPS_AGENTS_TOKEN"]  # a token by default, overridable from .env
    assert "TOKEN" not in " ".join(agents["command"]).upper()
    # It starts once Kafka is up and the topics it reads exist.
    assert agents["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert agents["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    # Mounted files: the worker's budget file (same policy) and a valid routing file.
    mounts = {target: src for src, target in (v.split(":")[:2] for v in agents["volumes"])}
    worker_mounts = {target: src for src, target in (v.split(":")[:2] for v in worker["volumes"])}
    budgets = mounts[env["LLMOPS_BUDGETS"]]
    assert budgets == worker_mounts[env_of(worker)["LLMOPS_BUDGETS"]]
    assert load_budgets(ROOT / budgets).default
    load_webhooks(ROOT / mounts[env["LLMOPS_WEBHOOKS"]])  # raises on a bad routing file
    # The budget table's store outlives the container: a named volume, created by the image.
    data_dir = env["LLMOPS_AGENTS_DATA_DIR"]
    assert mounts[data_dir] in compose["volumes"]
    assert data_dir in (ROOT / "Dockerfile").read_text()
    # The healthcheck asks the agents' own /healthz on their port inside the container.
    probe = " ".join(agents["healthcheck"]["test"])
    assert f"http://127.0.0.1:{env['LLMOPS_AGENTS_PORT']}/healthz" in probe
    # The refresh directory is in the home of the image's user, which it can write.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^RUN useradd .*--create-home\b.* llmops$", dockerfile, re.M)
    assert re.search(r"^USER llmops$", dockerfile, re.M)
    assert env["LLMOPS_REFRESH_DIR"].startswith("/home/llmops/")


def test_named_volumes_declared_and_bind_mounts_exist(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for svc in compose["services"].values():
        for volume in svc.get("volumes", []):
            src = volume.split(":")[0]
            if src.startswith((".", "/")):
                assert (ROOT / src).exists(), src
            else:
                assert src in declared, src


def test_dockerfile_installs_the_package() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"^RUN pip install \.", text, re.M)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # Every source folder of the package (and the files pip needs) is copied in.
    copied = {
        part.rstrip("/")
        for line in re.findall(r"^COPY (.+)$", text, re.M)
        for part in line.split()[:-1]
    }
    needed = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    needed |= {"pyproject.toml", pyproject["project"]["readme"]}
    assert needed <= copied, needed - copied
    script = next(iter(pyproject["project"]["scripts"]))
    assert f'ENTRYPOINT ["{script}"]' in text
    assert re.search(r"^USER (?!root)\w+", text, re.M)


# -- Grafana --------------------------------------------------------------------------------------


def test_datasource_points_at_the_clickhouse_service(services: dict[str, Any]) -> None:
    prov = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "clickhouse.yaml").read_text()
    )
    (ds,) = prov["datasources"]
    assert ds["type"] == "grafana-clickhouse-datasource"
    jd = ds["jsonData"]
    assert jd["host"] == "clickhouse" and "clickhouse" in services
    assert (jd["protocol"], jd["port"]) == ("http", 8123)  # ClickHouse's HTTP interface
    assert jd["defaultDatabase"] == env_of(services["clickhouse"])["CLICKHOUSE_DB"]
    # Credentials are references to the Grafana container's env, which compose fills in
    # with the same values the ClickHouse server got.
    grafana_env = env_of(services["grafana"])
    ch_env = env_of(services["clickhouse"])
    user_var = re.fullmatch(r"\$\{(\w+)\}", jd["username"])
    pass_var = re.fullmatch(r"\$\{(\w+)\}", ds["secureJsonData"]["password"])
    assert user_var and pass_var
    assert grafana_env[user_var.group(1)] == ch_env["CLICKHOUSE_USER"]
    assert grafana_env[pass_var.group(1)] == ch_env["CLICKHOUSE_PASSWORD"]
    assert "grafana-clickhouse-datasource" in grafana_env["GF_PLUGINS_PREINSTALL_SYNC"]


def test_dashboard_provider_reads_the_mounted_dashboards(services: dict[str, Any]) -> None:
    prov = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "llmops-stream.yaml").read_text()
    )
    (provider,) = prov["providers"]
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    home = env_of(services["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    queries = [t["rawSql"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return queries


def expand_macros(sql: str, tenants: str = "'acme'") -> str:
    """Grafana ClickHouse-plugin macros and variables → plain ClickHouse SQL."""
    sql = re.sub(r"\$__conditionalAll\((.*?),\s*\$tenant\)", r"(\1)", sql)
    sql = sql.replace("${tenant:singlequote}", tenants)
    sql = re.sub(
        r"\$__timeFilter\((\w+)\)",
        r"(\1 >= toDateTime('2000-01-01 00:00:00', 'UTC') AND \1 <= now())",
        sql,
    )
    sql = re.sub(r"\$__timeInterval\((\w+)\)", r"toStartOfInterval(\1, INTERVAL 60 second)", sql)
    sql = sql.replace("$__fromTime", "toDateTime('2000-01-01 00:00:00', 'UTC')")
    sql = sql.replace("$__toTime", "now()")
    assert "$" not in sql, sql
    return sql


def test_dashboard_panels_use_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    uid = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "clickhouse.yaml").read_text()
    )["datasources"][0]["uid"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid
            assert target["editorType"] == "sql"
            # 0 = time series (long rows become one series per label), 1 = table in the
            # plugin's query model.
            time_series = panel["type"] in ("timeseries", "state-timeline")
            assert target["format"] == (0 if time_series else 1)


def test_dashboard_queries_read_existing_tables_and_columns(dashboard: dict[str, Any]) -> None:
    tables = schema_tables()
    used_tables: set[str] = set()
    for sql in dashboard_queries(dashboard):
        plain = expand_macros(sql)
        refs = re.findall(r"\bllmops\.(\w+)", plain)
        assert refs, sql
        assert set(refs) <= set(tables), set(refs) - set(tables)
        used_tables |= set(refs)
        columns = set().union(*(tables[t] for t in refs))
        aliases = set(re.findall(r"\bAS\s+(\w+)", plain))
        # ClickHouse resolves a name to an alias before a column, so `sum(x) AS x` breaks
        # any other use of x in the query (nested aggregation): keep the two apart.
        assert not aliases & columns, f"alias shadows a column: {aliases & columns} in {sql}"
        no_strings = re.sub(r"'[^']*'", "''", plain)
        # snake_case names are columns (functions are camelCase); each must exist.
        for name in re.findall(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b", no_strings):
            assert name in columns | aliases | set(refs), f"{name!r} in {sql}"
    assert {"llm_usage_1m", "llm_alerts", "llm_budget_state", "llm_rejected"} <= used_tables
    text = "\n".join(dashboard_queries(dashboard))
    # The panels the dashboard exists for.
    assert "tenant_id, sum(cost_usd)" in text  # cost per tenant per minute
    assert "sum(uncovered) / nullIf(sum(scored), 0)" in text  # uncovered share
    assert "sum(stale_calls) / nullIf(sum(retrieval_calls), 0)" in text  # stale share
    for column in ("calls", "errors", "cache_hits", "scored"):
        assert f"sum({column})" in text, column
    assert "spend_usd / nullIf(limit_usd, 0) AS burn" in text  # budget burn against limits
    assert "status = 'resolved'" in text and "status = 'firing'" in text  # alert timeline
    assert "sum(duplicates)" in text and "reason, count()" in text  # duplicates, rejections
    types = {p["type"] for p in dashboard["panels"]}
    assert {"bargauge", "state-timeline"} <= types


# Rows of every table the dashboard reads: two tenants (the tenant filter keeps acme), a
# budget state replaced by a newer version and a calendar budget with two periods, an alert
# that fired and resolved, duplicates and rejections.
SEED = [
    "INSERT INTO llmops.llm_usage_1m (minute, tenant_id, app, model, calls, errors, cache_hits,"
    " cost_usd, scored, uncovered, retrieval_calls, stale_calls, duplicates) VALUES"
    " (now() - 60, 'acme', 'chat', 'gpt-4o-mini', 3, 1, 1, 1.5, 2, 1, 2, 1, 2),"
    " (now() - 60, 'globex', 'chat', 'gpt-4o-mini', 1, 0, 0, 0.25, 0, 0, 0, 0, 7)",
    # (tenant, budget, period) is the key of the ReplacingMergeTree: the higher version (the
    # write time) wins, whatever the order the rows arrived in; a late event of the previous
    # day wrote its row last, and the current day's is still the latest state
    "INSERT INTO llmops.llm_budget_state (tenant_id, budget_id, window, period, limit_usd,"
    " spend_usd, remaining_usd, status, as_of, version) VALUES"
    " ('acme', 'hourly', '1h', '', 5, 4.5, 0.5, 'warning', now64(3) - 60, 2),"
    " ('acme', 'daily', 'day', '2026-11-28', 50, 45, 5, 'warning', now64(3) - 86400, 3),"
    " ('acme', 'daily', 'day', '2026-11-29', 50, 10, 40, 'ok', now64(3) - 60, 2),"
    " ('globex', 'hourly', '1h', '', 5, 6, 0, 'exceeded', now64(3) - 60, 1)",
    "INSERT INTO llmops.llm_budget_state (tenant_id, budget_id, window, period, limit_usd,"
    " spend_usd, remaining_usd, status, as_of, version) VALUES"
    " ('acme', 'hourly', '1h', '', 5, 1, 4, 'ok', now64(3) - 120, 1)",
    "INSERT INTO llmops.llm_alerts (alert_id, status, type, severity, tenant_id, metric, value,"
    " threshold, emitted_at) VALUES"
    " ('a1', 'firing', 'budget', 'warning', 'acme', 'spend_usd', 4, 4, now64(3) - 600),"
    " ('a1', 'resolved', 'budget', 'warning', 'acme', 'spend_usd', 3, 4, now64(3) - 300),"
    " ('a2', 'firing', 'budget', 'critical', 'acme', 'spend_usd', 5, 5, now64(3) - 120),"
    " ('g1', 'firing', 'budget', 'critical', 'globex', 'spend_usd', 5, 5, now64(3) - 60)",
    "INSERT INTO llmops.llm_rejected (received_at, reason, detail, tenant_id, event_id) VALUES"
    " (now64(3) - 60, 'missing_field', 'no usage', 'acme', 'e1'),"
    " (now64(3) - 60, 'missing_field', 'no model', 'acme', 'e2'),"
    " (now64(3) - 60, 'bad_json', 'unreadable', '', ''),"
    " (now64(3) - 60, 'negative_tokens', 'input_tokens -1', 'globex', 'e3')",
]


def panel_queries(dashboard: dict[str, Any]) -> dict[str, list[str]]:
    """Panel title -> its queries, macros expanded (tenant 'acme')."""
    return {
        p["title"]: [expand_macros(t["rawSql"]) for t in p["targets"]] for p in dashboard["panels"]
    }


@pytest.mark.integration
def test_dashboard_queries_run_on_the_real_schema(
    dashboard: dict[str, Any], tmp_path: Path
) -> None:
    # chDB serves one process, so the queries run in a child process of their own.
    panels = panel_queries(dashboard)
    queries = [q for qs in panels.values() for q in qs]
    queries += [expand_macros(v["query"]) for v in dashboard["templating"]["list"]]
    script = textwrap.dedent(
        """
        import json, sys
        from llmops_stream.stream.clickhouse.sink import connect
        path, seed, queries = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
        client = connect("chdb://" + path, "llmops")
        for statement in seed:
            client.command(statement)
        results = [[list(row) for row in client.query(q).result_rows] for q in queries]
        print(json.dumps(dict(zip(queries, results)), default=str))
        """
    )
    out = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", script, str(tmp_path / "ch"), json.dumps(SEED), json.dumps(queries)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    results: dict[str, list[list[Any]]] = json.loads(out.stdout.strip().splitlines()[-1])

    def rows(title: str, index: int = 0) -> list[list[Any]]:
        return results[panels[title][index]]

    # With data in every table, every panel shows something.
    empty = [q for q in queries if not results[q]]
    assert not empty, empty
    # The tenant filter (set to 'acme' by expand_macros) applies: globex is not shown.
    cost = next(q for q in queries if "tenant_id, sum(cost_usd)" in q)
    assert [r[1:] for r in results[cost]] == [["acme", 1.5]]
    # Budget burn: the latest state of each budget (newest version, newest period).
    assert rows("Budget burn against limits") == [
        ["acme / hourly (1h)", 0.9],
        ["acme / daily (day 2026-11-29)", 0.2],
    ]
    assert rows("Spend vs limit (USD)") == [
        ["acme / hourly", 4.5, 5.0],
        ["acme / daily", 10.0, 50.0],
    ]
    assert [r[0] for r in rows("Budget state")] == ["acme", "acme"]
    # Alert timeline: one series per alert level, firing (1 warning, 2 critical) then
    # resolved (0).
    timeline = rows("Alert timeline")
    assert [r[1:] for r in timeline] == [
        ["budget acme spend_usd 4", 1],
        ["budget acme spend_usd 4", 0],
        ["budget acme spend_usd 5", 2],
    ]
    assert [r[0] for r in timeline] == sorted(r[0] for r in timeline)
    fired = rows("Alerts fired and resolved")
    assert [sum(r[1] for r in fired), sum(r[2] for r in fired)] == [2, 1]
    assert {r[1] for r in rows("Alerts")} == {"firing", "resolved"}
    # Duplicates (acme's 2 of llm_usage_1m) and rejections per reason (acme's 2).
    assert [r[1] for r in rows("Duplicates and rejections by reason", 0)] == [2]
    assert [r[1:] for r in rows("Duplicates and rejections by reason", 1)] == [["missing_field", 2]]
    assert [r[:3] for r in rows("Rejections by reason")] == [["missing_field", 2, 1]]


# -- kafka/pom.xml -------------------------------------------------------------------------------


def pom_dependencies(text: str) -> set[tuple[str, str, str]]:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    root = ET.fromstring(text)  # noqa: S314 - the repository's own files
    props = {el.tag.split("}")[1]: (el.text or "") for el in root.find("m:properties", ns) or []}

    def resolve(value: str) -> str:
        return re.sub(r"\$\{([\w.]+)\}", lambda m: props[m.group(1)], value.strip())

    return {
        (
            resolve(dep.findtext("m:groupId", "", ns)),
            resolve(dep.findtext("m:artifactId", "", ns)),
            resolve(dep.findtext("m:version", "", ns)),
        )
        for dep in root.iterfind("m:dependencies/m:dependency", ns)
    }


def test_repo_pom_and_builtin_template_fetch_the_same_jars() -> None:
    repo = pom_dependencies((ROOT / "kafka" / "pom.xml").read_text())
    builtin = pom_dependencies(
        POM_TEMPLATE.format(kafka_version=KAFKA_VERSION, log4j_version=LOG4J_VERSION)
    )
    assert repo == builtin
    assert ("org.apache.kafka", "kafka_2.13", KAFKA_VERSION) in repo
