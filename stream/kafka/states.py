"""Budget state on ``llm.budget.state`` as soon as the engine produces it, outside the
segment transactions.

Job
---
Gateways read a tenant's budget state to refuse calls at its hard cap; every millisecond
between the crossing event and the state they see is spend a capped tenant gets through.
So the worker does not hold states until its segment's Kafka transaction (one flush
interval plus the ClickHouse write, about a second): after each engine batch and each
idle tick it hands the changed state columns to a :class:`StatePublisher`, which sends one
record per tenant (all of its budgets, latest wins; ``records.budget_state_records``) on a
separate, non-transactional producer (idempotent, ``acks=all``). Alerts, DLQ records and
eval candidates stay in the per-partition transaction (:mod:`.transactions`): they are
exactly once; the ClickHouse ``llm_budget_state`` rows still go with the segment.

Two cadences. A tenant one of whose budgets changed **status** (``ok``/``warn``/
``exceeded``: what a gateway acts on) is sent in the round right after the batch that
changed it, i.e. within one loop iteration. A change of spend alone waits for the next
*routine* round, every flush interval (at most :data:`ROUTINE_MAX_S`), coalesced per
(tenant, budget) like the transactions did: the agents apply ~1,800 records/s, and one
record per changed tenant per loop iteration (up to ~10 iterations a second when caught
up) would queue there and delay the flips behind it. Rows that arrive while a round is in
flight go out in the next one, so a slow broker sees fewer, newer records instead of a
growing queue. The last status queued per (tenant, budget) is kept for statuses other
than ``ok`` (the memory grows with the tenants over a level, not with all tenants); a new
owner starts from ``ok``, so its first ``warn``/``exceeded`` of a tenant goes out at once.

Why publishing before the commit is acceptable
-----------------------------------------------
A state record is keyed by tenant, idempotent and latest-wins, and its value is a function
of the partition's events (and of the stream clock, which idle ticks move with the wall
clock). If the segment it came from is aborted (a crash, or the partition fenced away)
the events are still in the input topic: the next owner processes them again from the
committed offset and reaches the same state, which it publishes again with the same values
(an idle tick may give a later ``as_of``). What a gateway saw early was therefore never
wrong, only early; it is what ``read_uncommitted`` consumers (the agents are at-least-once
faust, so ``read_uncommitted``) already saw of aborted transactions before. Two transients
remain, both bounded and ending at the same state:

* the next owner redoes a claimed segment over its exact range and holds the states of that
  redo until its end (the worker passes them on once the segment is cut), but the events
  the previous owner processed after its last claimed segment (at most about one flush
  interval) are re-processed batch by batch, so for the time that takes a tenant's record
  can step back to an earlier state of those same events before it reaches the latest again;
* an owner the group replaced while it was cut off from the broker (its heartbeats lost,
  its loop running) does not know it until its next commit fails ``ProducerFenced``
  (about one flush interval): meanwhile it can publish states of the same events the new
  owner processes, with the same values.

Ownership: a partition's states are published only while the worker owns it.
:meth:`StatePublisher.drop` forgets everything not yet sent for a partition that was
revoked, fenced or retaken, each round checks ownership again before it sends, and
:meth:`StatePublisher.drain` (called before a revoked partition is let go) waits for the
round in flight, so a clean rebalance puts the old owner's last record before the new
owner's first. An owner that was frozen (a stall of its loop of half a session timeout:
its heartbeats stopped too, so the group may have replaced it) holds its states until a
commit of the partition succeeds, which proves nobody fenced it; if the commit fails, the
partition is dropped with them. So an owner woken up after being replaced cannot put
states older than the new owner's on the topic.

Failures: a round whose sends fail is kept for the next round (unless newer rows of the
same tenant replace them) after a backoff; an error retrying cannot fix (authorization,
size) is raised to the worker by :meth:`StatePublisher.raise_failed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from llmops_stream.stream.core.budget_state import concat_states, latest_states

from .records import Record, budget_state_records
from .transactions import MAX_REQUEST_SIZE, FatalKafkaError, classify

log = logging.getLogger("llmops_stream.worker")

MAX_BACKOFF_S = 5.0
"""Longest wait (seconds) before a failed round is sent again."""

ROUTINE_MAX_S = 1.0
"""Longest time (seconds) a change of spend alone waits to be sent."""

_RANK = {"ok": 0, "warn": 1, "exceeded": 2}

_COMPACT_AT = 64
"""Batches of state columns held for one partition before they are reduced to the latest
row per (tenant, budget, period): bounds the memory of a partition whose states wait."""

_BATCH_BYTES = 512 * 1024
"""Bytes of one batch of state records: well under the topic's ``max.message.bytes``."""

_PARTITIONER = DefaultPartitioner()

Columns = dict[str, np.ndarray]


class StatePublisher:
    """The worker's producer of ``llm.budget.state`` records (see the module doc).

    ``kafka_kwargs``: connection options; ``prefix``: the output topic prefix; ``owned``:
    whether the worker still owns an input partition (checked before every send);
    ``routine_s``: seconds between routine rounds (capped at :data:`ROUTINE_MAX_S`);
    ``on_failure``: called once per failed round (an error counter).
    """

    def __init__(
        self,
        kafka_kwargs: dict[str, Any],
        prefix: str,
        owned: Callable[[TopicPartition], bool],
        *,
        routine_s: float = ROUTINE_MAX_S,
        on_failure: Callable[[], object] | None = None,
    ) -> None:
        self._kwargs = kafka_kwargs
        self._prefix = prefix
        self._owned = owned
        self._routine_s = min(routine_s, ROUTINE_MAX_S)
        self._last_routine = time.monotonic()
        self._everything = False  # the next round sends everything pending (drain)
        self._on_failure = on_failure
        self._producer: AIOKafkaProducer | None = None
        # state columns per input partition, not sent yet
        self._pending: dict[TopicPartition, list[Columns]] = {}
        # per input partition: the status other than ok last queued per (tenant, budget),
        # and the tenants whose status changed since the last round
        self._status: dict[TopicPartition, dict[tuple[str, str], int]] = {}
        self._flipped: dict[TopicPartition, set[str]] = {}
        # records of failed rounds, by input partition and (topic, key): sent again
        # unless newer rows of the same tenant come first
        self._retry: dict[TopicPartition, dict[tuple[str, bytes | None], Record]] = {}
        self._wake = asyncio.Event()
        self._round = asyncio.Lock()  # held while a round is being sent
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        # output partitions per topic, and each key's partition among them
        self._parts: dict[str, list[int]] = {}
        self._where: dict[str, dict[bytes | None, int]] = {}
        self.sent = 0  # records acknowledged (tests, logs)

    async def start(self) -> None:
        """Start the producer and the task that sends the rounds."""
        self._producer = AIOKafkaProducer(
            **self._kwargs,
            enable_idempotence=True,
            acks="all",
            linger_ms=2,
            max_request_size=MAX_REQUEST_SIZE,
            # batches are filled here (see _send_batches): large ones, few futures
            max_batch_size=_BATCH_BYTES,
        )
        await self._producer.start()
        self._task = asyncio.create_task(self._run(), name="budget-state-publisher")

    async def close(self) -> None:
        """Send what is pending (partitions still owned), then stop."""
        if self._task is not None:
            with contextlib.suppress(Exception):  # errors were logged by the round
                await asyncio.wait_for(self.drain(), timeout=10)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._producer is not None:
            try:
                await self._producer.stop()
            except Exception as exc:  # a broken producer may fail to stop; it is dropped
                log.warning("stopping the budget state producer failed: %s", exc)
            self._producer = None

    def add(self, tp: TopicPartition, states: Columns) -> None:
        """Queue the state columns of one engine batch or tick of ``tp``: sent at the next
        :meth:`kick` if a status changed, else at the next routine round (coalesced with
        every other batch queued before it)."""
        if not len(states.get("tenant_id", ())):
            return
        known = self._status.setdefault(tp, {})
        flipped = self._flipped.setdefault(tp, set())
        for tenant, budget, status, current in zip(
            states["tenant_id"].tolist(),
            states["budget_id"].tolist(),
            states["status"].tolist(),
            states["current"].tolist(),
            strict=True,
        ):
            rank = _RANK[status]
            if current and known.get((tenant, budget), 0) != rank:
                flipped.add(tenant)
                if rank:
                    known[(tenant, budget)] = rank
                else:
                    del known[(tenant, budget)]
        parts = self._pending.setdefault(tp, [])
        parts.append(states)
        if len(parts) >= _COMPACT_AT:
            self._pending[tp] = [latest_states(concat_states(parts))]

    def kick(self) -> None:
        """Start a round if a status changed, a routine round is due, or records of a
        failed round wait (a round in flight: the next one)."""
        if (
            self._retry
            or any(self._flipped.values())
            or (self._pending and time.monotonic() - self._last_routine >= self._routine_s)
        ):
            self._wake.set()

    def withdraw(self, tp: TopicPartition) -> list[Columns]:
        """Take back the state columns of ``tp`` not sent yet (the worker holds them, and
        adds them again later: their status changes are found again then)."""
        self._status.pop(tp, None)
        self._flipped.pop(tp, None)
        return self._pending.pop(tp, [])

    def drop(self, tp: TopicPartition) -> None:
        """Forget what was not sent for ``tp``: the worker no longer owns it."""
        self._pending.pop(tp, None)
        self._retry.pop(tp, None)
        self._status.pop(tp, None)
        self._flipped.pop(tp, None)

    async def drain(self) -> None:
        """Wait until the pending states (of partitions still owned) are sent, or their
        round failed: before a partition is let go, its last records are out."""
        if self._pending:
            self._everything = True
            self._wake.set()
        while self._task is not None and not self._task.done():
            async with self._round:
                if not self._wake.is_set():
                    return
            await asyncio.sleep(0)  # let the sender take the round it was woken for

    def raise_failed(self) -> None:
        """Re-raise an error retrying cannot fix (it stops the worker)."""
        if self._error is not None:
            raise self._error

    async def _run(self) -> None:
        delay = 0.1
        while True:
            await self._wake.wait()
            async with self._round:
                self._wake.clear()
                try:
                    failed = await self._send_round()
                except FatalKafkaError as exc:
                    self._error = exc
                    return
            if failed:
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                self._wake.set()
            else:
                delay = 0.1

    def _take_round(self) -> list[tuple[TopicPartition, list[Record]]]:
        """The records of this round: every tenant whose status changed, or every pending
        state when a routine round is due, and failed records not replaced by newer ones.
        What is pending for a partition not owned is dropped."""
        now = time.monotonic()
        everything = self._everything or now - self._last_routine >= self._routine_s
        if everything:
            self._last_routine, self._everything = now, False
        pending, self._pending = self._pending, {}
        retry, self._retry = self._retry, {}
        out = []
        for tp in pending.keys() | retry.keys():
            flipped = self._flipped.pop(tp, set())
            if not self._owned(tp):
                continue
            by_key = retry.get(tp, {})
            columns = concat_states(pending.get(tp, []))
            if columns and not everything:
                # only the tenants whose status changed; the rest waits for its routine
                tenants = columns["tenant_id"].tolist()
                urgent = np.fromiter((t in flipped for t in tenants), bool, len(tenants))
                if not urgent.all():
                    self._pending[tp] = [{k: v[~urgent] for k, v in columns.items()}]
                columns = {k: v[urgent] for k, v in columns.items()} if urgent.any() else {}
            if columns:
                for r in budget_state_records(columns, self._prefix):
                    by_key.pop((r.topic, r.key), None)  # a newer state of the same tenant
                    by_key[(r.topic, r.key)] = r
            if by_key:
                out.append((tp, list(by_key.values())))
        return out

    async def _send_round(self) -> bool:
        """Send one round and wait for its acknowledgements; True if some failed (they
        are kept for the next round)."""
        producer = self._producer
        if producer is None:
            return False
        round_ = [(tp, r) for tp, records in self._take_round() for r in records]
        if not round_:
            return False
        sent: list[tuple[list[tuple[TopicPartition, Record]], asyncio.Future[Any]]] = []
        error: BaseException | None = None
        try:
            await self._send_batches(producer, round_, sent)
        except Exception as exc:  # what was not handed over is kept for the next round
            error = exc
        outcomes = await asyncio.gather(*(f for _, f in sent), return_exceptions=True)
        done = {
            id(r)
            for (members, _), outcome in zip(sent, outcomes, strict=True)
            if not isinstance(outcome, BaseException)
            for _, r in members
        }
        self.sent += len(done)
        # records of a partition lost meanwhile were not sent, on purpose: not failures
        failed = [(tp, r) for tp, r in round_ if id(r) not in done and self._owned(tp)]
        if not failed:
            return False
        if error is None:
            error = next((o for o in outcomes if isinstance(o, BaseException)), None)
        outcome = None if error is None else classify(error, failed[0][0])
        if isinstance(outcome, FatalKafkaError):
            raise outcome from error
        for tp, r in failed:
            kept = self._retry.setdefault(tp, {})
            kept.setdefault((r.topic, r.key), r)  # a newer one queued meanwhile wins
        if self._on_failure is not None:
            self._on_failure()
        log.warning(
            "budget state send failed (%s: %s); %d records kept for the next round",
            type(error).__name__,
            str(error)[:200],
            len(failed),
        )
        return True

    async def _send_batches(
        self,
        producer: AIOKafkaProducer,
        items: list[tuple[TopicPartition, Record]],
        sent: list[tuple[list[tuple[TopicPartition, Record]], asyncio.Future[Any]]],
    ) -> None:
        """Hand ``items`` to ``producer`` as whole batches, one per output partition (and
        more when one fills up); append each batch's records and future to ``sent``.

        aiokafka's per-record ``send`` costs ~25 µs of Python per record (a future, a
        partitioner call, the accumulator); filling its batch builders directly costs
        ~2 µs (measured on the build machine). The partition is the one ``send`` would
        choose (the default partitioner: murmur2 of the key), so a tenant's records stay
        in one partition of the compacted topic; it is cached per key.
        """
        by_topic: dict[str, list[tuple[TopicPartition, Record]]] = {}
        for tp, r in items:
            if self._owned(tp):  # revoked while the round was being built
                by_topic.setdefault(r.topic, []).append((tp, r))
        for topic, members in by_topic.items():
            parts = sorted(await producer.partitions_for(topic))
            if parts != self._parts.get(topic):
                self._parts[topic], self._where[topic] = parts, {}
            where = self._where[topic]
            open_: dict[int, tuple[Any, list[tuple[TopicPartition, Record]]]] = {}
            for tp, r in members:
                partition = where.get(r.key)
                if partition is None:
                    partition = where[r.key] = _PARTITIONER(r.key, parts, parts)
                builder, batch = open_.get(partition) or (producer.create_batch(), [])
                if builder.append(key=r.key, value=r.value, timestamp=None) is None:
                    # full: send it, and start the partition's next batch with r
                    sent.append(
                        (batch, await producer.send_batch(builder, topic, partition=partition))
                    )
                    builder, batch = producer.create_batch(), []
                    if builder.append(key=r.key, value=r.value, timestamp=None) is None:
                        raise ValueError(f"a budget state record of {len(r.value)} B fits no batch")
                batch.append((tp, r))
                open_[partition] = (builder, batch)
            for partition, (builder, batch) in open_.items():
                sent.append((batch, await producer.send_batch(builder, topic, partition=partition)))
