"""``llmops-stream agents``: the faust app for gateways and alert consumers (``agents/``).

Everything that would otherwise fail inside the faust worker, with a traceback or not at
all, is checked first and reported as one actionable line (exit 2): settings, the budget and
webhook files, the refresh directory, the HTTP port, reaching Kafka. Then the flags become
their ``LLMOPS_…`` env twins and the module-level app of ``llmops_stream.agents.app`` is
imported and run, so this command and ``faust -A llmops_stream.agents.app worker`` build the
same app from the same settings.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmops_stream.stream.core.errors import ConfigError

if TYPE_CHECKING:  # imported where used: `--help` parses no settings
    from rich.console import Console

    from llmops_stream.stream.runtime.settings import Settings

# setting → its flag (each has the env twin LLMOPS_<SETTING>)
FLAGS = {
    "kafka_bootstrap_servers": "--bootstrap-servers",
    "agents_host": "--agents-host",
    "agents_port": "--agents-port",
    "agents_app_id": "--app-id",
    "agents_data_dir": "--data-dir",
    "budgets": "--budgets",
    "webhooks": "--webhooks",
    "refresh_dir": "--refresh-dir",
    "refresh_max": "--refresh-max",
    "output_topic_prefix": "--output-topic-prefix",
}

_DESCRIPTION = """\
The faust-streaming app for the consumers of the worker's outputs.

Budget view for gateways: GET /budgets/{tenant_id} answers
  {"tenant_id", "allow", "status", "budgets": [{"budget_id", "window", "spend_usd",
   "limit_usd", "remaining_usd", "status", "as_of"}]}
from a changelog-backed table fed by llm.budget.state; "allow" is false while a budget is
"exceeded" (its hard cap). A tenant without state gets its rules from --budgets with zero
spend. With LLMOPS_AGENTS_TOKEN set, requests need "Authorization: Bearer <token>".
GET /healthz is 200 once the tables are recovered after a start (503 before).

Alert routing (--webhooks FILE): every message of llm.alerts.* is POSTed to each matching
route of {"routes": [{"url", "types", "tenants", "severities"}]} ("*" = any) with the
header Idempotency-Key: <alert_id>:<status>, retried with backoff; each route has its own
persisted backlog.

Eval-set refresh (--refresh-dir DIR): the candidates of llm.eval.candidates, deduplicated
and capped (LLMOPS_REFRESH_MAX), as one eval-set JSONL file per embedding model.

Topics carry the output prefix (LLMOPS_OUTPUT_TOPIC_PREFIX). Run one process per --app-id.
"""


def add_agents_parser(sub: Any) -> None:
    """Add the ``agents`` command to the subparsers ``sub`` of the main parser."""
    p = sub.add_parser(
        "agents",
        help="the faust app: budget view for gateways, webhooks for alerts, eval-set refresh",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--bootstrap-servers",
        dest="kafka_bootstrap_servers",
        metavar="HOST:PORT[,...]",
        help="Kafka brokers (env LLMOPS_KAFKA_BOOTSTRAP_SERVERS, default 127.0.0.1:9092)",
    )
    p.add_argument(
        "--agents-host",
        dest="agents_host",
        metavar="HOST",
        help="HTTP host to listen on (env LLMOPS_AGENTS_HOST, default 127.0.0.1)",
    )
    p.add_argument(
        "--agents-port",
        dest="agents_port",
        metavar="PORT",
        help="HTTP port (env LLMOPS_AGENTS_PORT, default 6066)",
    )
    p.add_argument(
        "--app-id",
        dest="agents_app_id",
        metavar="ID",
        help="faust app id: the consumer group and the prefix of the changelog topics "
        "(env LLMOPS_AGENTS_APP_ID, default llmops-agents)",
    )
    p.add_argument(
        "--data-dir",
        dest="agents_data_dir",
        metavar="DIR",
        help="faust's local data directory (env LLMOPS_AGENTS_DATA_DIR, default "
        "~/.local/share/llmops-stream/agents)",
    )
    p.add_argument(
        "--budgets",
        metavar="FILE",
        help="budget JSON file: the policy of tenants without state yet (env LLMOPS_BUDGETS; "
        "none: allow, no budgets)",
    )
    p.add_argument(
        "--webhooks",
        metavar="FILE",
        help="alert-routing JSON file (env LLMOPS_WEBHOOKS; none: no routing)",
    )
    p.add_argument(
        "--refresh-dir",
        dest="refresh_dir",
        metavar="DIR",
        help="directory of the eval-set refresh files (env LLMOPS_REFRESH_DIR; none: off)",
    )
    p.add_argument(
        "--refresh-max",
        dest="refresh_max",
        metavar="N",
        help="candidates kept per embedding model, the newest (env LLMOPS_REFRESH_MAX, "
        "default 10000)",
    )
    p.add_argument(
        "--output-topic-prefix",
        dest="output_topic_prefix",
        metavar="PREFIX",
        help="prefix of the worker's output topics, e.g. staging. (env "
        "LLMOPS_OUTPUT_TOPIC_PREFIX, default none)",
    )


def check_port(host: str, port: int) -> None:
    """ConfigError unless ``host:port`` can be listened on (faust would fail later, with a
    traceback)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"bad --agents-host {host!r} (env LLMOPS_AGENTS_HOST): {exc}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp does
        try:
            sock.bind(address)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc} (set --agents-port / "
                "LLMOPS_AGENTS_PORT)"
            ) from None


def check_dir(path: Path, what: str) -> None:
    """ConfigError unless ``path`` is (or can be made) a writable directory."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot create it ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: not writable")


def check_kafka(settings: Settings) -> int:
    """Create the input topics that are missing; the partition count of the budget state
    topic. ConfigError if Kafka cannot be reached."""
    import asyncio  # noqa: PLC0415

    from aiokafka.errors import KafkaConnectionError, KafkaError  # noqa: PLC0415

    from llmops_stream.agents.topics import prepare_topics  # noqa: PLC0415

    # aiokafka logs each failed connect as an error: the one line below says it all
    client_log = logging.getLogger("aiokafka")
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)
    try:
        return asyncio.run(prepare_topics(settings))
    except KafkaConnectionError as exc:
        raise ConfigError(
            f"cannot reach Kafka at {settings.kafka_bootstrap_servers}: {exc}"
        ) from None
    except KafkaError as exc:
        raise ConfigError(f"Kafka at {settings.kafka_bootstrap_servers}: {exc!r}") from None
    finally:
        client_log.setLevel(level)


def cmd_agents(args: argparse.Namespace, console: Console) -> int:
    """``agents``: run the faust app until SIGTERM/SIGINT."""
    from llmops_stream.stream.core.budget_config import load_budgets  # noqa: PLC0415
    from llmops_stream.stream.runtime.logs import set_log_level  # noqa: PLC0415
    from llmops_stream.stream.runtime.settings import env_name, load_settings  # noqa: PLC0415

    overrides = {k: getattr(args, k, None) for k in FLAGS}
    settings = load_settings(overrides, FLAGS)
    level = settings.log_level if "log_level" in settings.model_fields_set else "INFO"
    set_log_level(level)  # the agents say what they do (webhook retries, files written)
    if settings.budgets is not None:
        load_budgets(settings.budgets)
    if settings.webhooks is not None:
        from llmops_stream.agents.webhooks import load_webhooks  # noqa: PLC0415

        load_webhooks(settings.webhooks)
    if settings.refresh_dir is not None:
        check_dir(settings.refresh_dir.expanduser(), "refresh directory (--refresh-dir)")
    check_dir(settings.agents_data_dir.expanduser(), "data directory (--data-dir)")
    check_port(settings.agents_host, settings.agents_port)
    partitions = check_kafka(settings)
    # The module-level app reads the environment (for `faust -A`): the flags given here
    # become their env twins, in this process only, before it is imported. The budget
    # table's changelog must have as many partitions as llm.budget.state, whoever made it.
    given = {k: v for k, v in overrides.items() if v is not None} | {"partitions": partitions}
    for name, value in given.items():
        os.environ[env_name(name)] = str(value)
    from llmops_stream.agents import app as agents  # noqa: PLC0415

    return agents.run(agents.app, log_level=level)
