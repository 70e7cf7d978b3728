"""Settings from environment variables (``LLMOPS_…``) and CLI flags (flags win).

Every CLI flag has an env twin: ``--clickhouse`` ↔ ``LLMOPS_CLICKHOUSE``, ``--prices`` ↔
``LLMOPS_PRICES``, ``--bootstrap-servers`` ↔ ``LLMOPS_KAFKA_BOOTSTRAP_SERVERS``, … Secrets
are :class:`pydantic.SecretStr`, so they never appear in logs or reprs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from llmops_stream.stream.core.errors import ConfigError

DEFAULT_CLICKHOUSE = "chdb://~/.local/share/llmops-stream/chdb"


class Settings(BaseSettings):
    """All settings of the engine, the CLI and the worker."""

    model_config = SettingsConfigDict(env_prefix="LLMOPS_", extra="ignore")

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
    output_topic_prefix: str = Field(
        "", description="prefix of every output topic ('staging.' → staging.llm.alerts.budget)"
    )
    partitions: int = Field(6, ge=1, description="partitions of topics the worker creates")
    flush_interval_ms: int = Field(500, ge=10, description="max time between ClickHouse flushes")
    checkpoint_interval_s: float = Field(30.0, gt=0, description="engine state checkpoint period")
    worker_id: str = Field(
        "worker-0", description="stable id of this worker slot (names its Kafka transactions)"
    )
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9464, ge=0, le=65535, description="/metrics port, 0 = off")
    log_level: str = "WARNING"


def load_settings(overrides: dict[str, Any]) -> Settings:
    """Settings from env, with non-None ``overrides`` (CLI flags) on top; ConfigError if bad."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err["loc"])
        raise ConfigError(
            f"bad setting {name} (flag --{name.replace('_', '-')} / env LLMOPS_{name.upper()}): "
            f"{err['msg']}"
        ) from None
