"""Settings from environment variables (``LLMOPS_…``) and CLI flags (flags win).

Every CLI flag has an env twin: ``--clickhouse`` ↔ ``LLMOPS_CLICKHOUSE``, ``--prices`` ↔
``LLMOPS_PRICES``, ``--bootstrap-servers`` ↔ ``LLMOPS_KAFKA_BOOTSTRAP_SERVERS``, … Secrets
are :class:`pydantic.SecretStr`, so they never appear in logs or reprs.

:func:`load_settings` treats the ``LLMOPS_`` prefix as its own: a variable under it that is
neither a setting nor in :data:`OTHER_ENV` is a mistake (``LLMOPS_BOOTSTRAP_SERVERS``) and
an error naming the closest valid name, not silently ignored. Every problem of a bad
configuration is reported at once.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from llmops_stream.stream.core.errors import ConfigError
from llmops_stream.stream.runtime.logs import LOG_LEVELS

ENV_PREFIX = "LLMOPS_"

#: ``LLMOPS_`` variables that are not :class:`Settings` fields but are read elsewhere, so
#: :func:`load_settings` accepts them. Add a name here when code starts reading one.
OTHER_ENV: Mapping[str, str] = {
    # the jar cache of the local Kafka launcher (stream/dev/kafka_fetch.py)
    "LLMOPS_KAFKA_CACHE": "jar cache of the local Kafka broker (stream/dev)",
}

DEFAULT_CLICKHOUSE = "chdb://~/.local/share/llmops-stream/chdb"
DEFAULT_AGENTS_DATA_DIR = Path("~/.local/share/llmops-stream/agents")
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


class Settings(BaseSettings):
    """All settings of the engine, the CLI and the worker."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    clickhouse: str = Field(DEFAULT_CLICKHOUSE, description="chdb://PATH or http(s)://HOST:PORT")
    clickhouse_database: str = "llmops"
    clickhouse_user: str = "default"
    clickhouse_password: SecretStr = SecretStr("")
    prices: Path | None = Field(None, description="price override JSON file")
    budgets: Path | None = Field(None, description="budget JSON file")
    eval_set: Path | None = Field(None, description="eval-set JSONL file")
    eval_threshold: float | None = Field(None, description="override the calibrated threshold")
    batch_size: int = Field(20_000, gt=0, description="events per engine micro-batch")
    flush_rows: int = Field(
        100_000,
        gt=0,
        description="rows per replay flush; in the worker, the buffered rows at which a flush "
        "waits for the previous one (memory bound)",
    )
    drift_threshold: float = Field(0.15, ge=0, le=1)
    drift_min_count: int = Field(50, ge=1)
    freshness_threshold: float = Field(0.2, ge=0, le=1)
    freshness_min_count: int = Field(20, ge=1)
    freshness_max_age_days: float = Field(30.0, gt=0)
    window_minutes: int = Field(15, gt=0, description="drift/freshness alert window")
    candidate_share: float = Field(0.05, ge=0, le=1)
    dedup_horizon_s: float = Field(
        3600.0, gt=0, description="a repeated event_id within this much stream time counts once"
    )
    clock_idle_ms: int = Field(
        1000,
        ge=0,
        description="wall time a partition with nothing to read waits before its clock "
        "follows the wall clock",
    )
    max_future_skew_s: float = Field(
        900.0, ge=0, description="events dated further ahead of the wall clock are rejected"
    )
    budget_hysteresis: float = Field(
        0.05, ge=0, lt=1, description="fraction of the limit below a level to resolve its alert"
    )
    share_hysteresis: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="share points below the threshold at which a drift/freshness alert resolves",
    )
    alert_max_window_h: float = Field(
        24.0, gt=0, description="longest span a drift/freshness share is judged over"
    )
    model_min_calls: int = Field(
        20, ge=1, description="calls a new served model needs before it can take over"
    )
    model_settle_h: float = Field(
        24.0, gt=0, description="stream time after a served-model change when its alert resolves"
    )
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_security_protocol: str = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
    )
    kafka_sasl_mechanism: str | None = Field(
        None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
    )
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr = SecretStr("")
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_session_timeout_ms: int = Field(
        10_000, ge=6_000, description="a dead worker's partitions move after this long"
    )
    kafka_transaction_timeout_ms: int = Field(
        10_000, ge=1_000, description="a dead worker's open transaction is aborted after this"
    )
    group: str = "llmops-stream"
    topic: str = "llm.calls"
    otlp_topic: str = Field(
        "",
        description="topic of OTel GenAI spans (the Collector's Kafka exporter) consumed beside "
        "the call events; empty = off",
    )
    otlp_encoding: Literal["otlp_proto", "otlp_json"] = Field(
        "otlp_proto", description="how the Collector's Kafka exporter encodes the spans"
    )
    tenant_attribute: str = Field(
        "tenant.id",
        min_length=1,
        description="span or resource attribute holding the tenant of an OTel span",
    )
    output_topic_prefix: str = Field(
        "", description="prefix of every output topic ('staging.' → staging.llm.alerts.budget)"
    )
    partitions: int = Field(6, ge=1, description="partitions of topics the worker creates")
    flush_interval_ms: int = Field(500, ge=10, description="max time between ClickHouse flushes")
    checkpoint_interval_s: float = Field(30.0, gt=0, description="engine state checkpoint period")
    worker_id: str = Field(
        "worker-0",
        description="a name for this worker in its logs; replicas may share it (Kafka "
        "transactions are named per input partition, not per worker)",
    )
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9464, ge=0, le=65535, description="/metrics port, 0 = off")
    log_level: str = Field(
        "WARNING", description="DEBUG, INFO, WARNING, ERROR or CRITICAL (any case)"
    )
    # `llmops-stream agents` (SPEC §4, agents/): the faust app for gateways and alert consumers
    agents_host: str = Field("127.0.0.1", min_length=1, description="agents: HTTP host")
    agents_port: int = Field(6066, ge=1, le=65535, description="agents: HTTP port")
    agents_token: SecretStr = Field(
        SecretStr(""), description="agents: bearer token of the HTTP API, empty = no token"
    )
    agents_app_id: str = Field(
        "llmops-agents",
        description="agents: faust app id (its consumer group and the prefix of its changelog "
        "topics)",
    )
    agents_data_dir: Path = Field(
        DEFAULT_AGENTS_DATA_DIR, description="agents: faust's local data directory"
    )
    webhooks: Path | None = Field(None, description="agents: alert-routing JSON file")
    webhook_timeout_s: float = Field(10.0, gt=0, description="agents: timeout of one POST")
    webhook_max_backoff_s: float = Field(
        60.0, gt=0, description="agents: longest wait between two tries of a failing route"
    )
    refresh_dir: Path | None = Field(None, description="agents: eval-set refresh directory")
    refresh_max: int = Field(
        10_000, ge=1, description="agents: candidates kept per embedding model (newest win)"
    )
    refresh_interval_s: float = Field(
        5.0, gt=0, description="agents: how often changed refresh files are rewritten"
    )

    @field_validator("otlp_topic")
    @classmethod
    def _topic_name(cls, value: str) -> str:
        # Kafka's own rule for topic names; checked here so that a typo fails at start-up
        if value and not _TOPIC_NAME.fullmatch(value):
            raise PydanticCustomError(
                "topic_name",
                "Input should be a Kafka topic name: 1 to 249 letters, digits, '.', '_' or '-' "
                "(empty = off)",
            )
        return value

    @field_validator("agents_app_id")
    @classmethod
    def _app_id(cls, value: str) -> str:
        # it names the consumer group and prefixes the agents' changelog topics
        if not _TOPIC_NAME.fullmatch(value) or len(value) > 200:
            raise PydanticCustomError(
                "app_id",
                "Input should be 1 to 200 letters, digits, '.', '_' or '-' (it prefixes the "
                "agents' Kafka topic names)",
            )
        return value

    @model_validator(mode="after")
    def _two_inputs(self) -> Settings:
        if self.otlp_topic and self.otlp_topic == self.topic:
            raise PydanticCustomError(
                "otlp_topic",
                "the OTel span topic (LLMOPS_OTLP_TOPIC, --otlp-topic) must differ from the call "
                "event topic (LLMOPS_TOPIC, --topic): both are '{topic}'",
                {"topic": self.topic},
            )
        return self

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise PydanticCustomError(
                "log_level",
                "Input should be one of {levels}, in any case",
                {"levels": ", ".join(LOG_LEVELS)},
            )
        return level


def env_name(field: str) -> str:
    """The environment variable of a setting: ``batch_size`` → ``LLMOPS_BATCH_SIZE``."""
    return f"{ENV_PREFIX}{field.upper()}"


def unknown_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """One message per ``LLMOPS_…`` variable of ``environ`` (default: the process
    environment) that is neither a setting nor in :data:`OTHER_ENV`, naming the closest
    valid variable when one is close. Names are matched case-insensitively, as pydantic
    reads them."""
    env = os.environ if environ is None else environ
    known = {env_name(f) for f in Settings.model_fields} | set(OTHER_ENV)
    stems = {name.removeprefix(ENV_PREFIX): name for name in known}
    problems = []
    for key in sorted(env):
        upper = key.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known:
            continue
        # compare without the shared prefix, so that it does not make every name look close
        close = difflib.get_close_matches(upper.removeprefix(ENV_PREFIX), stems, n=1)
        hint = f" (did you mean {stems[close[0]]}?)" if close else ""
        problems.append(f"unknown setting {key}{hint}")
    return problems


def _describe(
    err: Mapping[str, Any], overrides: Mapping[str, Any], flags: Mapping[str, str]
) -> str:
    loc = err.get("loc") or ()
    if not loc:
        return f"bad configuration: {err['msg']}"
    name = str(loc[0])
    field = Settings.model_fields.get(name)
    secret = field is not None and field.annotation is SecretStr
    shown = repr(err.get("input"))
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    got = "" if secret else f" (got {shown})"
    flag = flags.get(name, f"--{name.replace('_', '-')}")
    where = f"{flag} (env twin {env_name(name)})" if name in overrides else env_name(name)
    return f"bad setting {where}: {err['msg']}{got}"


def load_settings(overrides: Mapping[str, Any], flags: Mapping[str, str] | None = None) -> Settings:
    """Settings from env, with non-None ``overrides`` (CLI flags) on top.

    Raises :class:`ConfigError` listing every problem: each unknown ``LLMOPS_…`` variable
    (see :func:`unknown_env`) and each bad value, one line apiece under a summary line (a
    single problem is just its line). ``flags`` maps a setting to the CLI flag that sets
    it, where that is not ``--`` plus the setting's name with dashes.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    problems = unknown_env()
    settings = None
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        problems += [_describe(err, given, flags or {}) for err in exc.errors()]
    if problems or settings is None:
        raise ConfigError(_summary(problems))
    return settings


def _summary(problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} configuration problems:\n" + "\n".join(f"  - {p}" for p in problems)
