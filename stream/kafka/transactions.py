"""Kafka transactions per input partition: outputs and consumer offsets, fenced per partition.

Each owned input partition has its own transactional producer, with the transactional id
``group.topic.partition`` (the intent of KIP-447): a segment's alerts, DLQ records, budget
states and eval candidates go out in one transaction together with the partition's
consumer offset. A worker that takes a partition over starts its producer *before* it
reads the committed offset; starting it fences the previous owner's producer (its open
transaction is aborted, its next commit fails with ``ProducerFenced``). So an owner the
group replaced, still running (e.g. cut off past its session timeout), can neither
publish nor commit for a partition it lost, and workers started from the same settings
never share a transactional id: no hand-given unique worker id is needed.

Errors are sorted for the worker: :class:`Fenced` (the partition was taken over: drop it),
:class:`FatalKafkaError` (size, authorization, a bad transaction timeout — retrying cannot
fix it: stop with a one-line message), anything else is retried.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, cast

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    InvalidProducerEpoch,
    InvalidTransactionTimeout,
    MessageSizeTooLargeError,
    ProducerFenced,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)

from .records import Record

log = logging.getLogger("llmops_stream.worker")

MAX_REQUEST_SIZE = 1_048_576
"""Producer request limit (bytes), set on purpose: Kafka's default ``message.max.bytes``
(1,048,588) is just above it, and DLQ records are capped below it (``records``)."""

_FATAL: tuple[type[Exception], ...] = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
    GroupAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    InvalidTransactionTimeout,
)
_FENCED: tuple[type[Exception], ...] = (ProducerFenced, InvalidProducerEpoch)


class Fenced(Exception):
    """Another worker took the partition over (its producer fenced ours)."""


class FatalKafkaError(Exception):
    """Kafka refuses the outputs for a reason retrying cannot fix; the message says what."""


def classify(exc: BaseException, tp: TopicPartition) -> BaseException:
    """``exc`` as :class:`Fenced`, :class:`FatalKafkaError`, or itself (retry it)."""
    if isinstance(exc, _FENCED):
        return Fenced(f"{tp.topic}[{tp.partition}] was taken over by another worker")
    if isinstance(exc, _FATAL):
        return FatalKafkaError(
            f"Kafka refused the outputs of {tp.topic}[{tp.partition}]: "
            f"{type(exc).__name__}: {str(exc)[:200]} (check the topics' ACLs and "
            "max.message.bytes, and the broker's transaction.max.timeout.ms)"
        )
    return exc


class PartitionProducers:
    """One transactional producer per owned input partition (see the module doc).

    ``kafka_kwargs``: connection options; ``group``: the consumer group (part of every
    transactional id, and the group the offsets are committed for).
    """

    def __init__(
        self, kafka_kwargs: dict[str, Any], group: str, *, transaction_timeout_ms: int
    ) -> None:
        self._kwargs = kafka_kwargs
        self.group = group
        self._timeout_ms = transaction_timeout_ms
        self._producers: dict[TopicPartition, AIOKafkaProducer] = {}
        # partitions whose producer failed and must be restarted before the next commit
        self._broken: set[TopicPartition] = set()

    def transactional_id(self, tp: TopicPartition) -> str:
        """``group.topic.partition``: the same for every worker, one per partition."""
        return f"{self.group}.{tp.topic}.{tp.partition}"

    async def open(self, tp: TopicPartition) -> None:
        """(Re)start ``tp``'s producer; this fences any other owner's producer of ``tp``
        and aborts the transaction it left open."""
        await self.close(tp)
        producer = AIOKafkaProducer(
            **self._kwargs,
            transactional_id=self.transactional_id(tp),
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            max_request_size=MAX_REQUEST_SIZE,
            # a transaction left open by a killed worker blocks read_committed readers of
            # the output topics until the broker aborts it: keep that short
            transaction_timeout_ms=self._timeout_ms,
        )
        try:
            await producer.start()
        except BaseException as exc:
            await _stop_quietly(producer)
            self._broken.add(tp)  # still ours: start it again before the next commit
            outcome = classify(exc, tp)
            if outcome is exc:
                raise
            raise outcome from exc
        self._producers[tp] = producer

    async def close(self, tp: TopicPartition) -> None:
        """Stop ``tp``'s producer, if any (the partition was revoked or lost)."""
        self._broken.discard(tp)
        producer = self._producers.pop(tp, None)
        if producer is not None:
            await _stop_quietly(producer)

    async def close_all(self) -> None:
        """Stop every producer (the worker is leaving)."""
        for tp in list(self._producers):
            await self.close(tp)

    def owns(self, tp: TopicPartition) -> bool:
        """True while ``tp`` has a producer, working or to be restarted (it was opened and
        neither fenced nor closed)."""
        return tp in self._producers or tp in self._broken

    async def commit(self, tp: TopicPartition, records: Sequence[Record], offset: int) -> None:
        """Publish ``records`` and commit ``offset`` for ``tp`` in one transaction.

        Raises :class:`Fenced` (the producer is closed: the partition is someone else's),
        :class:`FatalKafkaError`, or the original error of a failure worth retrying (the
        producer is restarted before the next attempt).
        """
        if tp in self._broken:
            await self.open(tp)  # a failure here is raised, and tried again next time
            self._broken.discard(tp)
        producer = self._producers.get(tp)
        if producer is None:
            raise Fenced(f"{tp.topic}[{tp.partition}] has no producer (closed or taken over)")
        futures: list[asyncio.Future[Any]] = []
        try:
            async with producer.transaction():
                for r in records:
                    futures.append(
                        await producer.send(r.topic, value=r.value, key=r.key, headers=r.headers)
                    )
                if futures:
                    await asyncio.gather(*futures)
                await producer.send_offsets_to_transaction({tp: offset}, self.group)
        except BaseException as exc:
            for f in futures:  # the aborted sends' errors are this one: do not log them again
                f.add_done_callback(_retrieve)
            # after a fatal error (being fenced is one) aiokafka answers every later call
            # with IllegalOperation; the cause is what decides
            outcome = classify(_fatal_cause(producer) or exc, tp)
            if isinstance(outcome, Fenced):
                await self.close(tp)
            elif not isinstance(outcome, FatalKafkaError):
                # the transaction was aborted; a producer in an error state cannot start
                # another one: restart it before the retry (we still own the partition as
                # far as we know)
                self._broken.add(tp)
            if outcome is exc:
                raise
            raise outcome from exc


def _fatal_cause(producer: AIOKafkaProducer) -> BaseException | None:
    """The error that put ``producer``'s transactions in their fatal state, if they are.

    aiokafka (pinned) keeps it on its transaction manager only; read defensively.
    """
    manager = getattr(producer, "_txn_manager", None)
    if manager is None or not manager.is_fatal_error():
        return None
    waiter = getattr(manager, "_transaction_waiter", None)
    if waiter is None or not waiter.done() or waiter.cancelled():
        return None
    return cast(BaseException | None, waiter.exception())


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await producer.stop()
    except Exception as exc:  # a broken producer may fail to stop; it is dropped anyway
        log.warning("stopping a producer failed: %s", exc)
