"""The OTLP relay: OTel GenAI spans from ``otlp_spans`` into ``llm.calls``, keyed by tenant.

Why a relay rather than engines on the span topic: a tenant's budget, dedup and windows live
with the ``llm.calls`` partition its key hashes to (one engine per partition). The
Collector's Kafka exporter keys spans by trace, or not at all, so a tenant's spans are spread
over every ``otlp_spans`` partition. The relay converts each ``ExportTraceServiceRequest``
(:func:`..core.otlp.spans_to_events`) into v1 call events and produces them to the calls
topic with the tenant as key, as Kafka Streams re-keys through a repartition topic. From
there the spans are call events like any other: the same engine, validation, DLQ reasons,
deduplication (``event_id`` = trace id + span id) and exactly-once writes.

Exactly once: per ``otlp_spans`` partition, the produced events, the DLQ records of spans
that cannot be calls (no tenant) or records that are not OTLP, and the relay's consumer
offset go out in **one Kafka transaction** (:class:`.transactions.PartitionProducers`,
transactional id ``<group>.otlp.<topic>.<partition>``, offsets of group ``<group>.otlp``),
and the worker reads ``llm.calls`` ``read_committed``. A relay that crashes mid-way aborts:
its successor redoes the records from the committed offset; a relay the group replaced but
still running is fenced when its successor opens the partition's producer.
Non-inference spans are skipped (counted), never rejected.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from llmops_stream.stream.core.otlp import spans_to_events
from llmops_stream.stream.runtime.metrics import WorkerMetrics
from llmops_stream.stream.runtime.settings import Settings

from .admin import ensure_topics, kafka_kwargs
from .records import Record, dlq_records, output_topics
from .retry import retry
from .transactions import Fenced, PartitionProducers

log = logging.getLogger("llmops_stream.otlp_relay")


def relay_from_settings(settings: Settings, metrics: WorkerMetrics | None) -> OtlpRelay | None:
    """The relay ``run`` starts beside the worker, or None without ``--otlp-topic``."""
    if not settings.otlp_topic:
        return None
    return OtlpRelay(
        kafka_kwargs(settings),
        group=settings.group,
        topic=settings.otlp_topic,
        encoding=settings.otlp_encoding,
        tenant_attribute=settings.tenant_attribute,
        calls_topic=settings.topic,
        dlq_topic=output_topics(settings.output_topic_prefix)["dlq"],
        transaction_timeout_ms=settings.kafka_transaction_timeout_ms,
        metrics=metrics,
        settings=settings,
    )


async def run_with_relay(worker_run: Any, relay: OtlpRelay | None, stop: asyncio.Event) -> None:
    """Run the worker (``worker_run(stop)``) and the relay until ``stop``; if either fails,
    the other is stopped and the error raised."""
    if relay is None:
        await worker_run(stop)
        return
    inner = asyncio.Event()

    async def until_stop() -> None:
        await stop.wait()
        inner.set()

    async def guarded(coro: Any) -> None:
        try:
            await coro
        finally:
            inner.set()  # one ended (or failed): end the other

    watcher = asyncio.create_task(until_stop())
    try:
        await asyncio.gather(guarded(worker_run(inner)), guarded(relay.run(inner)))
    finally:
        watcher.cancel()


class _Listener(ConsumerRebalanceListener):  # aiokafka requires this base class
    def __init__(self, relay: OtlpRelay) -> None:
        self.relay = relay

    # aiokafka may call these while the loop awaits a commit: the lock lets the commit
    # finish first, so a partition is never closed (or taken again) under a transaction
    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.relay.lock:
            for tp in revoked:
                await self.relay.producers.close(tp)
                self.relay.owned.discard(tp)
                self.relay._attempted.discard(tp)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self.relay.lock:
            for tp in assigned:
                await self.relay.take(tp)


class OtlpRelay:
    """Relay ``topic`` (OTLP, ``encoding``) into ``calls_topic``; ``await run(stop)``.

    ``kafka_kwargs``: connection options (:func:`.admin.kafka_kwargs`); ``group``: the
    worker's consumer group (the relay uses ``<group>.otlp``); ``dlq_topic``: full name of
    the DLQ topic (prefix applied); ``batch_size``: records per fetch.
    """

    def __init__(
        self,
        kafka_kwargs: dict[str, Any],
        *,
        group: str,
        topic: str,
        encoding: str,
        tenant_attribute: str,
        calls_topic: str,
        dlq_topic: str,
        transaction_timeout_ms: int,
        batch_size: int = 500,
        metrics: WorkerMetrics | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.kw = kafka_kwargs
        self.group = f"{group}.otlp"
        self.topic = topic
        self.encoding = encoding
        self.tenant_attribute = tenant_attribute
        self.calls_topic = calls_topic
        self.dlq_topic = dlq_topic
        self.batch_size = batch_size
        self.metrics = metrics
        self.settings = settings  # if given, the topics are created before subscribing
        self.producers = PartitionProducers(
            kafka_kwargs, self.group, transaction_timeout_ms=transaction_timeout_ms
        )
        self.owned: set[TopicPartition] = set()
        # next offset to relay per owned partition: records below it (a fetch made before
        # the seek of take(), delivered after it) were relayed already or belong to no one
        self.next_offset: dict[TopicPartition, int] = {}
        self._attempted: set[TopicPartition] = set()  # a commit of it failed: check first
        self.lock = asyncio.Lock()  # relaying vs rebalance callbacks
        self._stop: asyncio.Event | None = None  # set by run(): retries end with it
        self.consumer: AIOKafkaConsumer | None = None
        self.totals = {"records": 0, "events": 0, "skipped": 0, "rejected": 0}

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set; a fatal Kafka error is raised to the caller."""
        self._stop = stop
        if self.settings is not None:
            await ensure_topics(self.settings)
        self.consumer = AIOKafkaConsumer(
            **self.kw,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_interval_ms=3_600_000,
        )
        self.consumer.subscribe([self.topic], listener=_Listener(self))
        await self.consumer.start()
        try:
            while not stop.is_set():
                batches = await self.consumer.getmany(timeout_ms=100, max_records=self.batch_size)
                async with self.lock:
                    for tp, recs in batches.items():
                        if recs and tp in self.owned:
                            await self._relay(tp, recs)
        finally:
            await self.consumer.stop()
            await self.producers.close_all()

    async def take(self, tp: TopicPartition) -> None:
        """Own ``tp``: fence its previous owner, then read on from the committed offset."""
        if self.consumer is None:
            raise RuntimeError("relay not started")
        await self._retry(lambda: self.producers.open(tp))
        committed = await self.consumer.committed(tp)
        if committed is None:
            committed = (await self.consumer.beginning_offsets([tp]))[tp]
        # Taken back after a rebalance: the offset our last transaction committed may not be
        # readable yet (the broker writes transaction markers asynchronously); what we
        # relayed ourselves is known here.
        committed = max(committed, self.next_offset.get(tp, 0))
        self.consumer.seek(tp, committed)
        self.next_offset[tp] = committed
        self.owned.add(tp)
        log.info("otlp relay assigned %s[%d] from offset %d", tp.topic, tp.partition, committed)

    def convert(self, tp: TopicPartition, recs: list[Any]) -> list[Record]:
        """Call-event and DLQ records of consumed OTLP records (``value`` bytes, ``offset``)."""
        out: list[Record] = []
        skipped = 0
        rejected: dict[str, list[Any]] = {
            k: []
            for k in ("reason", "detail", "tenant_id", "kafka_partition", "kafka_offset", "raw")
        }
        for rec in recs:
            spans = spans_to_events(
                rec.value or b"", self.encoding, tenant_attribute=self.tenant_attribute
            )
            self.totals["records"] += 1
            self.totals["events"] += len(spans.events)
            self.totals["skipped"] += spans.skipped
            skipped += spans.skipped
            self.totals["rejected"] += len(spans.rejected)
            out += [
                Record(self.calls_topic, tenant.encode(), event, [])
                for tenant, event in zip(spans.tenants, spans.events, strict=True)
            ]
            for rej in spans.rejected:
                rejected["reason"].append(rej.reason)
                rejected["detail"].append(rej.detail)
                rejected["tenant_id"].append(rej.tenant_id)
                rejected["kafka_partition"].append(tp.partition)
                rejected["kafka_offset"].append(rec.offset)
                rejected["raw"].append(rej.raw)
        if rejected["raw"]:
            dlq = dlq_records(rejected, self.topic)
            out += [r._replace(topic=self.dlq_topic) for r in dlq]
        if self.metrics is not None:
            self.metrics.record_otlp(
                sum(r.topic == self.calls_topic for r in out), skipped, rejected["reason"]
            )
        return out

    async def _relay(self, tp: TopicPartition, recs: list[Any]) -> None:
        start = self.next_offset.get(tp, 0)
        if recs[0].offset < start:
            log.debug("otlp relay: %s[%d] skips records below %d", tp.topic, tp.partition, start)
            recs = [r for r in recs if r.offset >= start]
            if not recs:
                return
        records = self.convert(tp, recs)
        end = int(recs[-1].offset) + 1
        try:
            await self._retry(lambda: self._commit_once(tp, records, end))
        except Fenced as exc:
            # another relay owns it now; it redoes these records from the committed offset
            log.warning("otlp relay: %s", exc)
            self.owned.discard(tp)
            return
        self.next_offset[tp] = end

    async def _commit_once(self, tp: TopicPartition, records: list[Record], end: int) -> None:
        """One attempt; a retry first checks whether the failed attempt went through after
        all (an ambiguous error after the broker committed), so nothing is relayed twice."""
        if self.consumer is not None and tp in self._attempted:
            committed = await self.consumer.committed(tp)
            if committed is not None and committed >= end:
                return
        self._attempted.add(tp)
        await self.producers.commit(tp, records, end)  # raises: _attempted stays set
        self._attempted.discard(tp)

    async def _retry(self, fn: Any) -> Any:
        """:func:`.retry.retry` for the relay's Kafka calls; a broker hiccup aborted the
        transaction, so it is redone (and the relay leaves once asked to stop)."""
        errors = self.metrics.kafka_errors.inc if self.metrics is not None else None
        return await retry("otlp relay: Kafka", fn, log=log, stop=self._stop, on_failure=errors)
