"""Kafka administration for the worker: connection options and the topics it needs."""

from __future__ import annotations

import contextlib
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from llmops_stream.stream.runtime.settings import Settings

from .producer import kafka_security_kwargs
from .records import output_topics

MAX_MESSAGE_BYTES = 1_048_588
"""``max.message.bytes`` of the topics the worker creates (Kafka's default, set on purpose)."""


def kafka_kwargs(settings: Settings) -> dict[str, Any]:
    """aiokafka connection options (bootstrap, TLS, SASL) from settings; secrets stay inside."""
    return {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        **kafka_security_kwargs(settings),
    }


async def ensure_topics(settings: Settings) -> None:
    """Create the input and output topics if missing (budget state compacted)."""
    admin = AIOKafkaAdminClient(**kafka_kwargs(settings))
    await admin.start()
    try:
        wanted = {settings.topic: settings.partitions}
        if settings.otlp_topic:  # the Collector usually creates it; if not, we do
            wanted[settings.otlp_topic] = settings.partitions
        for name in output_topics(settings.output_topic_prefix).values():
            wanted[name] = settings.partitions
        existing = set(await admin.list_topics())
        new = []
        for name, parts in wanted.items():
            if name in existing:
                continue
            # set on purpose: Kafka's default, which the producer's request limit
            # (transactions.MAX_REQUEST_SIZE) and the DLQ cap (records) stay under
            configs = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}
            if name.endswith("llm.budget.state"):
                configs["cleanup.policy"] = "compact"
            new.append(
                NewTopic(name, num_partitions=parts, replication_factor=1, topic_configs=configs)
            )
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker was first
                await admin.create_topics(new)
    finally:
        await admin.close()
