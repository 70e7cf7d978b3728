"""The Kafka worker (``llmops-stream run``): consumer group → engine → ClickHouse + topics.

Exactly-once, by construction:

* Each partition has its own :class:`~.engine.Engine` (dedup, budgets, windows): events are
  keyed by tenant, so a tenant's state lives with its partition and follows it on rebalance.
* A **flush** writes, per partition, the offset range ``[start, end)`` processed since the
  last one (a *segment*): first the segment itself (``llm_segments``), then the rows, each
  insert with a token naming the segment; then, in **one Kafka transaction of that
  partition** (:mod:`.transactions`: one producer per input partition, transactional id
  ``group.topic.partition``), the alerts, DLQ records and eval candidates of the segment
  together with the partition's consumer offset. Nothing of them is visible to
  ``read_committed`` consumers, and no offset moves, before ClickHouse holds the rows.
* Budget states are the exception, on purpose: gateways enforce caps with them, so they go
  out on ``llm.budget.state`` right after the engine batch (or idle tick) that produced
  them, on a non-transactional producer (:mod:`.states`, which says why a state published
  for a segment that is later aborted is harmless: the redo publishes the same values).
  Their ClickHouse rows (``llm_budget_state``) still go with the segment.
* Taking a partition over starts its producer first, which **fences** the previous owner
  per partition: an owner the group replaced but that still runs can neither publish nor
  commit for it (its commit fails ``ProducerFenced``; it drops the partition). Workers
  started from the same settings share no transactional id, so they never fence each other.
* After a crash the partition restarts from its committed offset with the engine state
  restored from the latest checkpoint (``llm_engine_state``, written every
  ``checkpoint_interval_s`` at a committed offset; events between it and the committed
  offset are replayed to rebuild state, with their outputs discarded: they were
  committed). If a segment had been started at the committed offset, it is redone over
  exactly the same range, so its inserts carry the same tokens and ClickHouse keeps one
  copy; its Kafka outputs were never committed, so they are sent once.
* A segment's start is **claimed** by its first writer: its ``llm_segments`` row is
  deduplicated by start, and is read back before any row is written. A worker that finds
  another end there (an incarnation the group already replaced, still running — e.g. cut
  off from the broker longer than the session timeout — or its successor) writes nothing
  for it, commits nothing for it, and takes the partition up again from its committed
  offset, following the claimed segment. Rows are never counted twice, even then.
* ClickHouse down: the flush retries with backoff and nothing is consumed meanwhile
  (backpressure). An error retrying cannot fix (message size, authorization) stops the
  worker with a one-line message instead. SIGTERM: a last flush and checkpoint, then exit.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from llmops_stream.stream.clickhouse.sink import ClickHouseSink
from llmops_stream.stream.core.engine import Engine, EngineConfig
from llmops_stream.stream.core.evalset import EvalSetWatcher
from llmops_stream.stream.core.timeutil import now_ms
from llmops_stream.stream.core.warmup import warm_up
from llmops_stream.stream.runtime import memory
from llmops_stream.stream.runtime.metrics import WorkerMetrics
from llmops_stream.stream.runtime.settings import Settings

from .admin import ensure_topics, kafka_kwargs
from .bookkeeping import Bookkeeping
from .intake import Intake
from .partition import PartitionRun, _Part
from .retry import retry
from .states import StatePublisher
from .transactions import Fenced, PartitionProducers

log = logging.getLogger("llmops_stream.worker")


class _Listener(ConsumerRebalanceListener):  # aiokafka requires this base class
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.worker.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.worker.on_assigned(assigned)


class Worker(Intake):
    """One consumer-group member; ``await run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        settings: Settings,
        engine_config: Callable[[], EngineConfig],
        client: Any,
        *,
        metrics: WorkerMetrics | None = None,
        eval_watcher: EvalSetWatcher | None = None,
    ) -> None:
        self.s = settings
        self.engine_config = engine_config
        self.client = client
        self.db = settings.clickhouse_database
        self.books = Bookkeeping(client, self.db, settings.group)
        self.metrics = metrics or WorkerMetrics()
        self.runs: dict[TopicPartition, PartitionRun] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.producers = PartitionProducers(
            kafka_kwargs(settings),
            settings.group,
            transaction_timeout_ms=settings.kafka_transaction_timeout_ms,
        )
        self.states = StatePublisher(
            kafka_kwargs(settings),
            settings.output_topic_prefix,
            self.runs.__contains__,
            routine_s=settings.flush_interval_ms / 1000,
            on_failure=self.metrics.kafka_errors.inc,
        )
        self._stop: asyncio.Event | None = None
        self._last_flush = time.monotonic()
        self._last_publish = time.monotonic()
        self._last_checkpoint = time.monotonic()
        self._flush_lock = asyncio.Lock()
        self._watcher = eval_watcher
        self._last_reload_check = time.monotonic()
        # the write of each partition's last segment, while it runs: partitions write
        # independently, so a partition whose writes keep failing holds up only itself
        self._tasks: dict[TopicPartition, asyncio.Task[None]] = {}
        # every ClickHouse call runs on this one thread: chDB serves one caller at a time,
        # and the engine keeps processing meanwhile
        self._ch_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")

    # ------------------------------------------------------------------ lifecycle
    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then flush, checkpoint and leave the group."""
        self._stop = stop
        memory.tune()
        # The flush thread (Arrow building, chDB) takes the GIL back many times per flush;
        # at the default 5 ms switch interval each take waits behind the engine, stretching
        # a flush (and so alert latency) to seconds. 0.5 ms keeps it in step.
        sys.setswitchinterval(0.0005)
        # before joining the group: a first run's kernel compile (tens of seconds) must not
        # make the worker late for its first heartbeats
        log.info({"event": "kernels_ready", "seconds": round(warm_up(), 2)})
        kw = kafka_kwargs(self.s)
        await ensure_topics(self.s)
        self.consumer = AIOKafkaConsumer(
            **kw,
            group_id=self.s.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            session_timeout_ms=self.s.kafka_session_timeout_ms,
            heartbeat_interval_ms=max(1000, self.s.kafka_session_timeout_ms // 3),
            max_poll_interval_ms=3_600_000,  # a ClickHouse outage must not expel us
            fetch_max_bytes=16 * 1024 * 1024,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            # let the broker gather ~1 MB (or 100 ms) per fetch: a batch has a fixed cost
            # in the engine, and a trickle of tiny batches when caught up would waste the
            # core that alert latency depends on
            fetch_min_bytes=1024 * 1024,
            fetch_max_wait_ms=100,
        )
        self.consumer.subscribe([self.s.topic], listener=_Listener(self))
        await self.states.start()
        await self.consumer.start()
        try:
            while not stop.is_set():
                batches = await self.consumer.getmany(
                    timeout_ms=min(100, self.s.flush_interval_ms), max_records=self.s.batch_size
                )
                await self._dispatch(batches, {tp: self.runs.get(tp) for tp in batches})
                self._tick_idle({tp for tp, recs in batches.items() if recs})
                self._publish_states()
                if self._flush_due():
                    await self.flush()
                    self._reload_eval_sets()
                else:
                    self._raise_failed()
                await self._update_lag()
                self.metrics.maybe_log(partitions=len(self.runs))
            await self.flush(wait=True, checkpoint=True)
        finally:
            await self._consumer.stop()
            await self.states.close()
            await self.producers.close_all()

    def _reload_eval_sets(self) -> None:
        """Hot reload: a changed eval-set file (content hash) replaces the sets of every
        partition's engine; a broken new file keeps the old sets (the watcher logs it)."""
        if self._watcher is None or time.monotonic() - self._last_reload_check < 5.0:
            return
        self._last_reload_check = time.monotonic()
        if self._watcher.maybe_reload():
            for run in self.runs.values():
                run.engine.set_eval_sets(self._watcher.current)
            log.info(
                {
                    "event": "eval_sets_reloaded",
                    "versions": {m: es.version for m, es in self._watcher.current.items()},
                }
            )

    def _flush_due(self) -> bool:
        """Time to cut segments: the flush interval passed."""
        return time.monotonic() - self._last_flush >= self.s.flush_interval_ms / 1000

    # ------------------------------------------------------------------ rebalance
    async def on_revoked(self, revoked: list[TopicPartition]) -> None:
        """Flush what is pending (it still belongs to us), checkpoint, then let go."""
        if any(tp in self.runs for tp in revoked):
            await self.flush(wait=True, checkpoint=True)
            # our last states go out before the next owner's first
            await self.states.drain()
        for tp in revoked:
            self._drop(tp)
            await self.producers.close(tp)
        self.metrics.assigned.set(len(self.runs))

    async def on_assigned(self, assigned: list[TopicPartition]) -> None:
        """Restore each partition's engine from its checkpoint and seek where to replay."""
        async with self._flush_lock:
            await self._await_inflight()  # ClickHouse is read below, on its own thread
        for tp in assigned:
            if tp not in self.runs:
                await self._take(tp)
        self.metrics.assigned.set(len(self.runs))

    async def _take(self, tp: TopicPartition) -> None:
        """Start (or restart) the run of ``tp``: engine state from the latest checkpoint at
        or before the committed offset, and the segment that must be redone, if any."""
        loop = asyncio.get_running_loop()
        # fence the previous owner first: after this, it can neither publish nor commit for
        # tp, so the committed offset read below is final
        await self._retry("Kafka", partial(self.producers.open, tp), clickhouse=False)
        beginning = (await self._consumer.beginning_offsets([tp]))[tp]
        committed = await self._consumer.committed(tp)
        committed = beginning if committed is None else max(committed, beginning)
        # ClickHouse down during a rebalance: wait for it (backpressure), never skip the
        # partition
        engine, start = await self._retry(
            "ClickHouse",
            partial(loop.run_in_executor, self._ch_thread, self._restore, tp, committed, beginning),
        )
        forced = await self._retry(
            "ClickHouse",
            partial(loop.run_in_executor, self._ch_thread, self.books.segment_end, tp, committed),
        )
        self.runs[tp] = PartitionRun(
            tp=tp,
            engine=engine,
            committed=committed,
            seg_start=committed,
            next_offset=start,
            forced_end=forced,
            sink=ClickHouseSink(self.client, self.db),
            checkpointed=start,
        )
        self._consumer.seek(tp, start)
        log.info(
            "assigned %s[%d]: committed %d, replay from %d, forced end %s",
            tp.topic,
            tp.partition,
            committed,
            start,
            forced,
        )

    def _restore(self, tp: TopicPartition, committed: int, beginning: int) -> tuple[Engine, int]:
        """Engine state at the latest checkpoint at or before ``committed``, and its offset.

        Without a checkpoint the partition is replayed from its beginning to rebuild state
        (if retention already dropped early events, their budget share is gone too).
        """
        checkpoint = self.books.latest_checkpoint(tp, committed)
        if checkpoint is None:
            return Engine(self.engine_config()), beginning
        offset, snapshot = checkpoint
        engine = Engine.restore(self.engine_config(), snapshot)
        span = engine.dedup_rebuild_range(tp.partition)
        if span is not None:  # the dedup's ids, read back from the stored calls
            missing = engine.dedup_rebuild(tp.partition, *self.books.stored_ids(tp, *span))
            if missing:  # not expected: checkpoints follow the rows they cover
                log.warning(
                    "dedup of %s[%d]: %d ids of the checkpoint not found in llm_calls; "
                    "their retries would count again",
                    tp.topic,
                    tp.partition,
                    missing,
                )
        return engine, offset

    # ------------------------------------------------------------------ flush
    async def flush(self, *, wait: bool = False, checkpoint: bool = False) -> None:
        """Cut every pending segment and write it: ClickHouse, then outputs + offsets.

        Each partition's write runs while its next segment is being processed (chDB and the
        network release the GIL); a partition's writes never overlap: one whose previous
        write still runs is cut later, unless it must be cut now (``wait``, a redone
        segment's end, the memory bound). ``wait`` returns only once everything is
        committed; ``checkpoint`` also stores engine states (otherwise they are stored
        every ``checkpoint_interval_s``).
        """
        async with self._flush_lock:
            self._raise_failed()
            self._last_flush = time.monotonic()
            due = checkpoint or (
                time.monotonic() - self._last_checkpoint >= self.s.checkpoint_interval_s
            )
            if due:
                self._last_checkpoint = time.monotonic()
            # the memory bound is the worker's, over every partition's buffers
            full = sum(r.sink.rows_buffered for r in self.runs.values()) >= self.s.flush_rows
            for run in list(self.runs.values()):
                task = self._tasks.get(run.tp)
                if task is not None and not task.done():
                    forced = run.forced_end is not None and run.next_offset >= run.forced_end
                    if not (wait or forced or full):
                        continue  # its last write still runs: keep building this segment
                    # in order, within the memory bound (backpressure), and a redone
                    # segment is cut exactly at its end
                    await task
                    if self.runs.get(run.tp) is not run:
                        continue  # dropped meanwhile (fenced, or its claim was lost)
                part = self._cut(run, due)
                if part is not None:
                    self._tasks[run.tp] = asyncio.create_task(self._write([part]))
            if wait:
                await self._await_inflight()

    def _cut(self, run: PartitionRun, due: bool) -> _Part | None:
        """The part of ``run`` to write now (its segment, outputs of time alone, or only a
        checkpoint), or None; starts the run's next segment."""
        ready = run.pending and (run.forced_end is None or run.next_offset >= run.forced_end)
        timed = not run.pending and run.timed
        state_only = not run.pending and due and run.checkpointed != run.next_offset
        if not (ready or timed or state_only):
            return None
        part = _Part(
            run=run,
            start=run.seg_start,
            end=run.next_offset,
            sink=run.sink if ready or timed else None,
            records=run.records if ready or timed else [],
            alert_types=run.alert_types if ready or timed else [],
            # the state as of `end`, i.e. after everything this part commits; after
            # outputs of time alone, always: a restart from an older checkpoint would send
            # them again
            snapshot=run.engine.snapshot() if due or timed else None,
            claim=ready,
        )
        if ready or timed:
            run.sink = ClickHouseSink(self.client, self.db)
            run.records, run.alert_types = [], []
            run.timed = False
        if ready:
            run.seg_start, run.forced_end = run.next_offset, None
            self._release_held(run)  # the redo reached the end the previous owner claimed
        return part

    def _drop(self, tp: TopicPartition) -> None:
        """Forget ``tp``'s run: revoked, fenced, or claimed by another incarnation. Its
        budget states not sent yet are dropped with it (it is no longer ours to publish)."""
        self.runs.pop(tp, None)
        self.states.drop(tp)

    async def _await_inflight(self) -> None:
        """Wait for every partition's write in flight (re-raising what failed)."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            await task

    def _raise_failed(self) -> None:
        """Re-raise the error of a finished write: one retrying could not fix (it stops
        the worker with its one-line message)."""
        for tp, task in list(self._tasks.items()):
            if task.done():
                del self._tasks[tp]
                task.result()

    async def _write(self, parts: list[_Part]) -> None:
        """ClickHouse rows of each segment, then its partition's transaction, then checkpoints."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        segments = []
        for p in parts:
            if p.sink is None:
                continue
            claimed = await self._retry(
                "ClickHouse", partial(loop.run_in_executor, self._ch_thread, self._write_segment, p)
            )
            if claimed:
                segments.append(p)
            else:
                await self._retake(p)
        if segments:
            # one transaction per partition, concurrently: a partition's failure or fencing
            # does not stop the others' commits
            await asyncio.gather(*(self._commit(p) for p in segments))
            self.metrics.record_flush(time.perf_counter() - started)
            memory.trim()
        for p in parts:
            if p.snapshot is not None and p.run.committed == p.end:
                await self._retry(
                    "ClickHouse",
                    partial(
                        loop.run_in_executor,
                        self._ch_thread,
                        self.books.write_checkpoint,
                        p.run.tp,
                        p.end,
                        p.snapshot or b"",
                    ),
                )
                p.run.checkpointed = p.end

    async def _retake(self, p: _Part) -> None:
        """Another incarnation claimed the start of ``p``'s segment with another end: drop
        the run (nothing of it was written or committed) and take the partition up again."""
        tp = p.run.tp
        self.metrics.segments_lost.inc()
        log.warning(
            "segment %s[%d] from %d was claimed by another worker with another end; "
            "taking the partition up again from its committed offset",
            tp.topic,
            tp.partition,
            p.start,
        )
        if self.runs.get(tp) is p.run:
            self._drop(tp)
            await self._take(tp)

    def _write_segment(self, p: _Part) -> bool:
        """Claim the segment, then write its rows; False (nothing written) if its start is
        claimed with another end. Outputs of time alone (no offsets) claim nothing: a redo
        yields the same alert ids and states, which ClickHouse keeps once."""
        tp = p.run.tp
        if not p.claim:
            if p.sink is not None:
                p.sink.flush(f"timed:{self.books.slot(tp)}:{p.start}:{now_ms()}")
            return True
        if not self.books.claim(tp, p.start, p.end):
            return False
        if p.sink is not None:
            p.sink.flush(f"{self.books.slot(tp)}:{p.start}-{p.end}")
        return True

    async def _commit(self, p: _Part) -> None:
        """Publish ``p``'s records with its offset in its partition's transaction. Fenced:
        the group gave the partition to another worker; its run is dropped (what it wrote to
        ClickHouse is claimed, so the new owner redoes that segment without a double)."""
        tp = p.run.tp
        try:
            await self._retry("Kafka", partial(self._commit_once, p), clickhouse=False)
        except Fenced as exc:
            self.metrics.segments_lost.inc()
            log.warning("%s; dropping it (its outputs were not published)", exc)
            if self.runs.get(tp) is p.run:
                self._drop(tp)
            return
        p.run.committed = p.end
        if not p.run.confirmed and self.runs.get(tp) is p.run:
            # nobody fenced us out of tp since the stall: publish its states again
            p.run.confirmed = True
            self._release_held(p.run)
        self.metrics.record_alerts(p.alert_types)

    async def _commit_once(self, p: _Part) -> None:
        """One attempt of :meth:`_commit`. A failed attempt can still have committed (a
        commit request that timed out on our side after the coordinator took it): before
        a retry, the group's committed offset tells, so a segment is never sent twice."""
        tp = p.run.tp
        if p.attempts and p.end > p.start:
            committed = await self._consumer.committed(tp)
            if committed is not None and committed >= p.end:
                log.warning("%s[%d]: the failed commit of [%d, %d) had gone through",
                            tp.topic, tp.partition, p.start, p.end)  # fmt: skip
                return
        p.attempts += 1
        await self.producers.commit(tp, p.records, p.end)

    async def _retry(self, what: str, fn: Callable[[], Any], *, clickhouse: bool = True) -> Any:
        """:func:`.retry.retry` with this worker's stop event and error counters."""
        errors = self.metrics.ch_errors if clickhouse else self.metrics.kafka_errors
        return await retry(what, fn, log=log, stop=self._stop, on_failure=errors.inc)

    async def _update_lag(self) -> None:
        for tp in self.runs:
            high = self._consumer.highwater(tp)
            if high is not None:
                self.metrics.set_lag(tp.partition, max(0, high - self.runs[tp].next_offset))
