"""The topics of the agents: the worker's outputs they read, and their tables' changelogs.

Job
---
:func:`input_topics` names the inputs (with ``LLMOPS_OUTPUT_TOPIC_PREFIX``):
``llm.budget.state`` always, ``llm.alerts.*`` with webhooks, ``llm.eval.candidates`` with a
refresh directory. :func:`prepare_topics` creates what is missing before the app starts:

- the inputs, as the worker would (the budget state compacted): faust would otherwise wait
  for a missing one silently;
- the changelog topics of the tables (``<app id>-<table>-changelog``, compacted), with as
  many partitions as ``llm.budget.state``: the budget table is co-partitioned with it.
  faust would create them itself, but only once it runs, after its producer loaded the
  cluster's metadata; a table that places a key by its hash (the webhook backlog, the
  refresh candidates) asks that metadata for the partition count and fails until the
  producer happens to refresh it.

It returns the partition count of ``llm.budget.state``, which the app is built with. It
lives apart from ``app.py`` because importing that module builds the app.
"""

from __future__ import annotations

import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from llmops_stream.stream.core.errors import ConfigError
from llmops_stream.stream.kafka.admin import MAX_MESSAGE_BYTES, kafka_kwargs
from llmops_stream.stream.kafka.records import output_topics
from llmops_stream.stream.runtime.settings import Settings

from .budgets import TABLE as BUDGET_TABLE
from .refresh import TABLE as REFRESH_TABLE
from .webhooks import TABLE as BACKLOG_TABLE


def input_topics(settings: Settings) -> dict[str, str]:
    """The topics the agents read (prefix applied), by role (as in ``output_topics``)."""
    names = output_topics(settings.output_topic_prefix)
    wanted = {"budget_state": names["budget_state"]}
    if settings.webhooks is not None:
        wanted |= {role: name for role, name in names.items() if role.startswith("alerts.")}
    if settings.refresh_dir is not None:
        wanted["candidates"] = names["candidates"]
    return wanted


def changelog_topics(settings: Settings) -> list[str]:
    """The changelog topics of the app's tables (faust's naming)."""
    tables = [BUDGET_TABLE]
    if settings.webhooks is not None:
        tables.append(BACKLOG_TABLE)
    if settings.refresh_dir is not None:
        tables.append(REFRESH_TABLE)
    return [f"{settings.agents_app_id}-{table}-changelog" for table in tables]


async def _create(admin: AIOKafkaAdminClient, topics: list[NewTopic]) -> None:
    if topics:
        with contextlib.suppress(TopicAlreadyExistsError):  # another process was first
            await admin.create_topics(topics)


async def _partitions(admin: AIOKafkaAdminClient, topic: str) -> int:
    (described,) = await admin.describe_topics([topic])
    return len(described["partitions"])


async def prepare_topics(settings: Settings) -> int:
    """Create the missing input and changelog topics (see the module doc); the partition
    count of the budget state topic. ConfigError if the budget table's changelog has
    another one (the topic was re-created or grew since)."""
    admin = AIOKafkaAdminClient(**kafka_kwargs(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        inputs = []
        for role, name in input_topics(settings).items():
            if name in existing:
                continue
            configs = {"max.message.bytes": str(MAX_MESSAGE_BYTES)}
            if role == "budget_state":
                configs["cleanup.policy"] = "compact"
            inputs.append(NewTopic(name, settings.partitions, 1, topic_configs=configs))
        await _create(admin, inputs)
        budget_state = input_topics(settings)["budget_state"]
        n = await _partitions(admin, budget_state)
        changelogs = changelog_topics(settings)
        compact = {"cleanup.policy": "compact"}
        await _create(
            admin,
            [NewTopic(t, n, 1, topic_configs=compact) for t in changelogs if t not in existing],
        )
        if changelogs[0] in existing and (m := await _partitions(admin, changelogs[0])) != n:
            raise ConfigError(
                f"{budget_state} has {n} partitions but the budget table's changelog "
                f"{changelogs[0]} has {m}: start the agents with another --app-id (the new "
                "app rebuilds its table from the topic)"
            )
        return n
    finally:
        await admin.close()
