"""The faust app of ``llmops-stream agents``: its settings, its topics, and how it runs.

Job
---
One faust-streaming app serves the consumers of the worker's outputs (SPEC §4):

- ``budgets.py``: a table of the latest ``llm.budget.state`` record per tenant and
  ``GET /budgets/{tenant_id}`` for gateways enforcing hard caps;
- ``webhooks.py``: every message of ``llm.alerts.*`` POSTed to the matching webhooks
  (with ``--webhooks``);
- ``refresh.py``: the candidates of ``llm.eval.candidates`` as eval-set JSONL files to
  label (with ``--refresh-dir``);
- ``topics.py``: the topics read (with the output prefix) and the tables' changelog
  topics, created before the app starts;
- ``GET /healthz``: 200 once the tables are recovered, 503 before.

Every table keeps its state in a changelog topic (``<app id>-<table>-changelog``): a
restarted process recovers it from there and goes on reading its input topics from the
group's committed offsets. The app is built from :class:`Settings` (``LLMOPS_…``
variables) by :func:`create_app`; the module-level :data:`app` is built from the
environment, so that ``faust -A llmops_stream.agents.app worker`` runs the same app as
``llmops-stream agents`` (which turns its flags into their env twins before importing this
module).

One process per app id: the app reads every partition of its topics (the webhook backlog
and the refresh files are per process). For a second, independent copy (high
availability), give it another ``--app-id``: it keeps its own tables, and a receiver drops
the webhook messages it gets twice by their ``Idempotency-Key``.

Faust's own web pages (router, tables, statistics, graph) are off: they would show table
contents without the bearer token.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from faust.web import Request, Response, View

from llmops_stream.stream.core.budget_config import load_budgets
from llmops_stream.stream.core.errors import ConfigError
from llmops_stream.stream.kafka.producer import kafka_security_kwargs
from llmops_stream.stream.runtime.settings import Settings, load_settings

from .budgets import BearerToken, BudgetBook
from .refresh import RefreshSet
from .topics import input_topics, prepare_topics
from .webhooks import AlertRouter, load_webhooks


def broker_credentials(settings: Settings) -> faust.auth.Credentials | None:
    """faust credentials from the ``kafka_*`` security settings (ConfigError if wrong)."""
    kw = kafka_security_kwargs(settings)
    if "sasl_mechanism" in kw:
        return faust.SASLCredentials(
            username=kw["sasl_plain_username"],
            password=kw["sasl_plain_password"],
            ssl_context=kw.get("ssl_context"),
            mechanism=kw["sasl_mechanism"],
        )
    if "ssl_context" in kw:
        return faust.SSLCredentials(kw["ssl_context"])
    return None


def create_app(settings: Settings) -> faust.App:
    """The agents app of ``settings``: files (budgets, webhooks) are read and validated
    here, so a bad one raises :class:`ConfigError` before anything starts."""
    policy = load_budgets(settings.budgets) if settings.budgets is not None else None
    routes = load_webhooks(settings.webhooks) if settings.webhooks is not None else None
    app = faust.App(
        settings.agents_app_id,
        broker=[
            f"kafka://{h.strip()}" for h in settings.kafka_bootstrap_servers.split(",") if h.strip()
        ],
        broker_credentials=broker_credentials(settings),
        broker_session_timeout=settings.kafka_session_timeout_ms / 1000,
        store="memory://",
        autodiscover=False,
        datadir=str(settings.agents_data_dir.expanduser()),
        topic_partitions=settings.partitions,
        consumer_auto_offset_reset="earliest",
        # Nothing waits for a changelog record but the offset commit, which flushes first:
        # batching them is free and lifts the rate of table updates by about a third.
        producer_linger_ms=20,
        web_host=settings.agents_host,
        web_bind=settings.agents_host,
        web_port=settings.agents_port,
        web_router_enabled=False,
        web_tables_enabled=False,
        web_stats_enabled=False,
        web_graph_enabled=False,
        web_metrics_enabled=False,
    )
    names = input_topics(settings)

    def topic(*topic_names: str) -> faust.TopicT:
        # raw bytes in: each part decodes and validates its records itself, so that one
        # bad record is logged and skipped instead of crashing the agent
        return app.topic(*topic_names, key_serializer="raw", value_serializer="raw")

    token = BearerToken(settings.agents_token.get_secret_value())
    book = BudgetBook(
        app,
        topic(names["budget_state"]),
        partitions=settings.partitions,
        policy=policy,
        token=token,
    )
    router = None
    if routes is not None:
        alert_topics = [name for role, name in names.items() if role.startswith("alerts.")]
        router = AlertRouter(
            app,
            topic(*alert_topics),
            routes,
            timeout_s=settings.webhook_timeout_s,
            max_backoff_s=settings.webhook_max_backoff_s,
        )
    refresh = None
    if settings.refresh_dir is not None:
        refresh = RefreshSet(
            app,
            topic(names["candidates"]),
            settings.refresh_dir.expanduser(),
            max_per_model=settings.refresh_max,
            interval_s=settings.refresh_interval_s,
        )

    def prepare_on_worker_init(sender: Any, **kwargs: Any) -> None:
        # `faust -A llmops_stream.agents.app worker` sends this before its worker starts
        # (`llmops-stream agents` prepares the topics itself, before building the app)
        partitions = asyncio.run(prepare_topics(settings))
        if partitions != settings.partitions:
            raise ConfigError(
                f"{names['budget_state']} has {partitions} partitions: set "
                f"LLMOPS_PARTITIONS={partitions} (the budget table is co-partitioned with it)"
            )

    # mode types a handler as a union of a sync and an async callable, which mypy cannot
    # match a plain function against
    app.on_worker_init.connect(prepare_on_worker_init)  # type: ignore[arg-type]

    @app.page("/healthz")
    class Health(View):
        async def get(self, request: Request) -> Response:
            body: dict[str, Any] = {
                "status": "ok" if book.ready else "recovering",
                "budgets": book.health(),
            }
            if router is not None:
                body["webhooks"] = router.health()
            if refresh is not None:
                body["refresh"] = refresh.health()
            return self.json(body, status=200 if book.ready else 503)

    return app


def run(agents: faust.App, log_level: str = "WARNING") -> int:
    """Run ``agents`` as a faust worker until SIGTERM/SIGINT; the exit code.

    The project's JSON logging stays in place (``override_logging=False``); faust's banner
    and stdout redirection are off.
    """
    worker = faust.Worker(
        agents,
        quiet=True,
        loglevel=log_level,
        override_logging=False,
        redirect_stdouts=False,
    )
    worker.spinner = None  # a terminal spinner on stdout: noise in a service's output
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


#: The app of the environment's settings, for ``faust -A llmops_stream.agents.app worker``.
app = create_app(load_settings({}))
