"""From fetched Kafka records to each partition's engine, and what the engine gives back.

The worker's consume side (mixed into :class:`~.worker.Worker`): records of one fetch are
handed to the run that owned their partition when they were fetched, cut at the committed
offset (below it they only rebuild state) and at a forced segment end (a redone segment
ends exactly there), and processed as columns. Each batch's rows, alerts, DLQ records and
candidates wait in the run for its segment; its budget states go to the
:class:`~.states.StatePublisher` at once (held while a claimed segment is redone, or
after a stall until a commit confirms the partition is still ours). Idle partitions let
the wall clock move their engines.

Per record there is one list comprehension each for offsets and values (plain attribute
reads, which CPython specialises; ``map(attrgetter)`` and generator expressions measured
slower), then only array work: aiokafka's own record objects are the per-record Python
that remains.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

from llmops_stream.stream.core.alerts import Alert
from llmops_stream.stream.runtime.metrics import WorkerMetrics
from llmops_stream.stream.runtime.settings import Settings

from .partition import PartitionRun
from .records import alert_records, candidate_records, dlq_records
from .states import Columns, StatePublisher


class Intake:
    """The consume side of the worker; the worker provides what is declared here."""

    s: Settings
    runs: dict[TopicPartition, PartitionRun]
    metrics: WorkerMetrics
    states: StatePublisher
    consumer: AIOKafkaConsumer | None
    _last_publish: float  # time.monotonic() of the last _publish_states

    async def flush(self, *, wait: bool = False, checkpoint: bool = False) -> None:
        raise NotImplementedError

    @property
    def _consumer(self) -> AIOKafkaConsumer:
        if self.consumer is None:
            raise RuntimeError("worker not started")
        return self.consumer

    async def _dispatch(
        self,
        batches: dict[TopicPartition, list[Any]],
        fetched_for: dict[TopicPartition, PartitionRun | None],
    ) -> None:
        """Hand each partition's records to the run that owned it when they were fetched.

        aiokafka runs the rebalance callbacks concurrently with this loop (it marks the new
        assignment active *before* ``on_assigned`` returns), so a fetch can return records
        of a partition whose run does not exist yet, or whose run is replaced while an
        earlier partition's flush is awaited. Such records were read from a position the
        new run's ``seek`` has since reset: processing them would skip the offsets between
        its start and theirs. They are dropped; the run fetches again from its own position.
        """
        for tp, recs in batches.items():
            run = fetched_for.get(tp)
            if run is not None and recs and self.runs.get(tp) is run:
                await self._handle(run, recs)

    async def _handle(self, run: PartitionRun, recs: list[Any]) -> None:
        """Process consumed records of one partition, honouring replay and forced ends.

        Two limits cut a fetch: the committed offset (records below it only rebuild state)
        and a forced segment end (the segment must be flushed exactly there). A fetch's
        offsets increase, so both cuts, and skipping what was re-fetched after a seek, are
        bisections of one list.
        """
        offsets = [r.offset for r in recs]
        i = bisect_left(offsets, run.next_offset)  # re-fetched after a seek
        if i == len(offsets):
            return
        values = [r.value or b"" for r in recs]  # a tombstone (None) is rejected as empty
        while i < len(offsets):
            limit = run.committed if run.next_offset < run.committed else run.forced_end
            j = len(offsets) if limit is None else bisect_left(offsets, limit, lo=i)
            if j > i:
                if j - i == len(offsets):  # the whole fetch, as usual: no copies
                    self._process(run, values, offsets)
                else:
                    self._process(run, values[i:j], offsets[i:j])
                i = j
            elif limit is not None:
                # nothing left below the limit (offsets can have gaps): we are at it
                run.next_offset = limit
                if limit == run.committed:
                    run.seg_start = limit
            if run.forced_end is not None and run.next_offset >= run.forced_end:
                await self.flush()  # redo the interrupted segment over exactly its range
                if self.runs.get(run.tp) is not run:
                    return  # revoked (and maybe re-assigned) meanwhile: the rest is not ours

    def _process(self, run: PartitionRun, values: list[bytes], offsets: list[int]) -> None:
        """One engine batch of ``run``: ``values`` (message bytes) at ``offsets``."""
        n = len(offsets)
        out = run.engine.process(
            values,
            source=run.tp.topic,
            partitions=np.full(n, run.tp.partition, np.int32),
            offsets=np.fromiter(offsets, dtype=np.int64, count=n),
        )
        run.next_offset = offsets[-1] + 1
        if run.next_offset <= run.committed:
            # replaying already-committed events only to rebuild state: outputs were sent
            run.seg_start = run.next_offset
            return
        self.metrics.record_batch(out.stats)
        run.sink.add(out)
        prefix = self.s.output_topic_prefix
        run.records += dlq_records(out.rejected, run.tp.topic, prefix)
        run.records += candidate_records(out.candidates, prefix)
        self._keep_alerts_and_states(run, out.alerts, out.budget_states)

    def _keep_alerts_and_states(
        self, run: PartitionRun, alerts: list[Alert], states: Columns
    ) -> None:
        """Queue alerts for the run's next transaction; publish budget states now (or,
        while a claimed segment is redone, when it is cut)."""
        if alerts:
            run.records += alert_records(alerts, self.s.output_topic_prefix)
            run.alert_types += [a.type for a in alerts]
        if not len(states.get("tenant_id", ())):
            return
        if run.forced_end is None and run.confirmed:
            self.states.add(run.tp, states)
        else:
            run.held_states.append(states)

    def _tick_idle(self, fetched: set[TopicPartition]) -> None:
        """Let the wall clock move the partitions that have nothing left to read, so a
        tenant that sends nothing still sees its spend expire and its alerts resolve.

        A partition still replaying committed events, redoing a segment, or with records
        not fetched yet is not idle: its clock must follow those events first.
        """
        for tp, run in self.runs.items():
            if tp in fetched or run.next_offset < run.committed or run.forced_end is not None:
                continue
            high = self._consumer.highwater(tp)
            if high is None or run.next_offset < high:
                continue
            out = run.engine.tick()
            if not out.alerts and not len(out.budget_states.get("tenant_id", ())):
                continue
            run.sink.add_alerts(out.alerts)
            run.sink.add_states(out.budget_states)
            self._keep_alerts_and_states(run, out.alerts, out.budget_states)
            run.timed = True

    def _publish_states(self) -> None:
        """Send the states of this loop iteration (one record per tenant).

        A stall of the loop of half a session timeout or more (the process frozen, the
        event loop blocked: heartbeats stopped too) may have cost us partitions without
        our knowing it; their states from now on, and those of this iteration not sent
        yet, are held until a commit of the partition succeeds (the new owner's producer
        would have fenced it). So an owner that wakes up replaced does not publish states
        older than the new owner's.
        """
        now = time.monotonic()
        if now - self._last_publish >= self.s.kafka_session_timeout_ms / 2000:
            for run in self.runs.values():
                run.confirmed = False
                run.held_states = self.states.withdraw(run.tp) + run.held_states
        self._last_publish = now
        self.states.kick()
        self.states.raise_failed()

    def _release_held(self, run: PartitionRun) -> None:
        """Pass the states ``run`` held on to the publisher, once it may publish again
        (its redo is cut, its ownership confirmed)."""
        if run.forced_end is None and run.confirmed:
            for states in run.held_states:
                self.states.add(run.tp, states)
            run.held_states = []
