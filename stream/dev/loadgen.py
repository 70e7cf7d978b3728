"""Load generator: synthetic call events (``synth.py``) to Kafka at a target rate.

Job
---
:func:`run_loadgen` feeds a topic the way many apps together would: events keyed by
``tenant_id`` at ``rate`` events/s, for benchmarks, demos and the docker-compose stack.
:func:`loadgen_main` is the body of ``llmops-stream loadgen``.

How
---
* Pacing is a token bucket refilled every ~10 ms: each tick sends the events that are due
  as one small burst. The bucket holds at most ~50 ms of traffic, so after a stall the
  generator does not fire a large catch-up burst; when it cannot keep up, it simply runs
  at its own speed and the returned :class:`LoadgenStats` says what it achieved.
* The events are synth's JSON bytes as they are (no per-event validation or re-encoding):
  the tenant id is sliced out of the bytes (synth writes ``"tenant_id":"…"`` as a plain
  top-level string; anything else falls back to a JSON parse), and each tenant's
  partition is computed once with aiokafka's default partitioner (the Java client's
  murmur2), so keys and partitions are what any producer would give.
* Events go into one aiokafka ``BatchBuilder`` per partition, handed to the producer when
  full or at the end of each tick (the tick is the linger). This skips the per-message
  future and partitioner call of ``AIOKafkaProducer.send``: with pre-generated events,
  ~220,000 events/s against ~85,000 with one ``send`` per event. The producer is
  idempotent with ``acks="all"``, so broker-side retries never duplicate an event and the
  topic holds exactly ``sent`` events.
* Synthesis runs one block (4,096 events) ahead in a worker thread, so generating the next
  block overlaps with waiting for the broker.
* ``n_events=None`` runs until ``stop`` is set. Event times start at the wall-clock now and
  are spaced ``1/rate`` apart (synth's clock), so at the target rate they track real time.

Measured (2-core machine that also runs the single-node broker, 6 partitions, ~830-byte
events without embeddings, ``acks=all``): the maximum is 100,000-118,000 events/s (down
to ~87,000 while other jobs loaded the machine), bound by synthesis (~125,000 events/s
on its own) sharing the interpreter lock with batch building, and by the broker sharing
the cores. With ``embedding_share=0.5`` (384-d base64 vectors, ~1.9 kB per event on
average): 65,000-69,000 events/s. Paced runs hold their target within 0.5 % (2k, 20k and
50k events/s over 3 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from llmops_stream.stream.core.errors import ConfigError
from llmops_stream.stream.core.timeutil import now_ms
from llmops_stream.stream.kafka.producer import DEFAULT_TOPIC, DeliveryError, kafka_security_kwargs

from .synth import SynthConfig, generate_events

__all__ = ["LoadgenStats", "loadgen_main", "run_loadgen"]

TICK_S = 0.010
BUCKET_S = 0.050  # largest burst, in seconds of traffic at the target rate
PROGRESS_EVERY_S = 0.1
PREFETCH_BLOCK = 4096  # events generated per worker-thread call
MAX_BATCH_BYTES = 512 * 1024  # below the broker's and aiokafka's 1 MiB request limit
ENDLESS = 1 << 62  # "no end" for synth (its run fraction then stays ~0: steady traffic)
_TENANT_TAG = b'"tenant_id":"'

ProgressFn = Callable[[int, float], None]
"""``on_progress(sent, rate)``: events queued so far and the rate so far (events/s)."""


@dataclass(frozen=True)
class LoadgenStats:
    """Outcome of a run. ``sent`` events were delivered (acknowledged by the broker) in
    ``seconds`` (first send to last acknowledgement); ``achieved_rate`` = ``sent /
    seconds``."""

    sent: int
    seconds: float
    achieved_rate: float
    target_rate: float
    bytes_sent: int

    def summary(self) -> str:
        """One line for humans."""
        target = "unlimited" if math.isinf(self.target_rate) else f"{self.target_rate:,.0f}/s"
        return (
            f"sent {self.sent:,} events ({self.bytes_sent / 1e6:,.1f} MB) in "
            f"{self.seconds:,.2f} s: {self.achieved_rate:,.0f} events/s (target {target})"
        )


def tenant_key(raw: bytes) -> bytes:
    """The UTF-8 ``tenant_id`` of an event's JSON bytes (the Kafka key).

    Fast path: slice the first ``"tenant_id":"…"``; synth writes it once, at the top level,
    without escapes. Any event that does not fit (escaped quotes, other spacing, no
    tenant) is parsed properly.
    """
    start = raw.find(_TENANT_TAG)
    if start >= 0:
        start += len(_TENANT_TAG)
        end = raw.find(b'"', start)
        if end > start and raw.find(b"\\", start, end) < 0:
            return raw[start:end]
    tenant = orjson.loads(raw).get("tenant_id")
    return tenant.encode() if isinstance(tenant, str) else b""


class _Sender:
    """Per-partition batch builders over one producer; counts what got acknowledged."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, partitions: list[int]) -> None:
        self.producer = producer
        self.topic = topic
        self.partitions = partitions
        self.partitioner = DefaultPartitioner()
        self.partition_of: dict[bytes, int] = {}
        self.builders: dict[int, Any] = {}
        self.inflight: set[asyncio.Future[Any]] = set()
        self.delivered = 0
        self.delivered_bytes = 0
        self.failed = 0
        self.first_error: BaseException | None = None
        self.last_ack = time.perf_counter()

    def add(self, raw: bytes) -> tuple[int, Any] | None:
        """Append one event to its partition's builder; a full builder it displaced is
        returned (partition, builder) for the caller to submit. Synchronous on purpose:
        a coroutine per event would cost more than the append itself."""
        key = tenant_key(raw)
        partition = self.partition_of.get(key)
        if partition is None:
            partition = self.partitioner(key, self.partitions, self.partitions)
            self.partition_of[key] = partition
        builder = self.builders.get(partition)
        if builder is None:
            builder = self.builders[partition] = self.producer.create_batch()
        if builder.append(key=key, value=raw, timestamp=None) is not None:
            return None
        # Full: start the next builder with this event (a fresh builder always takes one
        # event below the 1 MiB message limit, which synth stays under).
        fresh = self.builders[partition] = self.producer.create_batch()
        if fresh.append(key=key, value=raw, timestamp=None) is None:
            raise ValueError(f"event of {len(raw)} bytes does not fit in a Kafka batch")
        return partition, builder

    async def submit_all(self) -> None:
        """Hand over every non-empty builder (end of a tick: our linger)."""
        builders, self.builders = self.builders, {}
        for partition, builder in builders.items():
            if builder.record_count():
                await self.submit(partition, builder)

    async def submit(self, partition: int, builder: Any) -> None:
        count, size = builder.record_count(), builder.size()
        # send_batch waits while the partition still has an undrained batch: backpressure.
        future = await self.producer.send_batch(builder, self.topic, partition=partition)
        self.inflight.add(future)

        def done(fut: asyncio.Future[Any]) -> None:
            self.inflight.discard(fut)
            error = asyncio.CancelledError() if fut.cancelled() else fut.exception()
            if error is None:
                self.delivered += count
                self.delivered_bytes += size
                self.last_ack = time.perf_counter()
            else:
                self.failed += count
                self.first_error = self.first_error or error

        future.add_done_callback(done)

    async def drain(self) -> None:
        await self.submit_all()
        await self.producer.flush()
        if self.inflight:
            await asyncio.wait(list(self.inflight))


async def run_loadgen(
    bootstrap_servers: str,
    *,
    topic: str = DEFAULT_TOPIC,
    rate: float = 10_000.0,
    n_events: int | None = None,
    seed: int = 0,
    n_tenants: int = 50,
    embedding_share: float = 0.5,
    on_progress: ProgressFn | None = None,
    stop: asyncio.Event | None = None,
    **kafka_kwargs: Any,
) -> LoadgenStats:
    """Send ``n_events`` synthetic events (``None``: until cancelled) to ``topic`` at
    ``rate`` events/s (``math.inf``: as fast as possible).

    Setting ``stop`` ends the run early, still delivering what was queued and returning
    the figures (the CLI sets it on Ctrl-C). ``kafka_kwargs`` go to
    :class:`aiokafka.AIOKafkaProducer` (e.g. the output of
    :func:`~llmops_stream.stream.kafka.producer.kafka_security_kwargs`). The topic must exist.
    Raises :class:`~llmops_stream.stream.kafka.producer.DeliveryError` if the broker did not
    acknowledge every event.
    """
    if not rate > 0:
        raise ConfigError(f"loadgen: rate must be > 0 events/s, got {rate}")
    if n_events is not None and n_events < 0:
        raise ConfigError(f"loadgen: events must be >= 0, got {n_events}")
    paced = math.isfinite(rate)
    cfg = SynthConfig(
        n_events=ENDLESS if n_events is None else n_events,
        seed=seed,
        start_ms=now_ms(),
        rate_per_s=rate if paced else 100_000.0,
        n_tenants=n_tenants,
        embedding_share=embedding_share,
    )
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 0,  # batches are formed here, per tick
        "max_batch_size": MAX_BATCH_BYTES,
        **kafka_kwargs,
    }
    producer = AIOKafkaProducer(**config)
    try:
        await producer.start()
        # Ask once up front: aiokafka would otherwise wait out its request timeout (40 s),
        # logging on every retry, before reporting a missing topic.
        cluster = await producer.client.fetch_all_metadata()
        known = cluster.partitions_for_topic(topic)
        if not known:
            raise ConfigError(
                f"loadgen: topic {topic!r} does not exist on {bootstrap_servers}; create it "
                "first (the broker may not auto-create topics)"
            )
        partitions = sorted(known)
        sender = _Sender(producer, topic, partitions)
        events = _Prefetch(generate_events(cfg))
        await events.start()
        try:
            queued, started = await _pump(
                events, sender, rate=rate, n_events=n_events, on_progress=on_progress, stop=stop
            )
        finally:
            await events.close()
        await sender.drain()
    finally:
        await producer.stop()
    if sender.first_error is not None:
        raise DeliveryError(sender.failed, sender.first_error) from sender.first_error
    seconds = max(sender.last_ack - started, 1e-9) if sender.delivered else 0.0
    if on_progress is not None:
        on_progress(queued, queued / max(time.perf_counter() - started, 1e-9))
    return LoadgenStats(
        sent=sender.delivered,
        seconds=seconds,
        achieved_rate=sender.delivered / seconds if seconds else 0.0,
        target_rate=rate,
        bytes_sent=sender.delivered_bytes,
    )


class _Prefetch:
    """Synthetic events generated one block ahead in a worker thread.

    Generation (numpy + orjson) and the broker's round trips then overlap: while the loop
    waits for Kafka to take a batch, the next block is already being produced.
    """

    def __init__(self, events: Iterator[bytes]) -> None:
        self._events = events
        self._buffer: list[bytes] = []
        self._pos = 0
        self._next: asyncio.Future[list[bytes]] | None = None

    def _block(self) -> list[bytes]:
        return list(itertools.islice(self._events, PREFETCH_BLOCK))

    def _refill(self) -> None:
        self._next = asyncio.get_running_loop().run_in_executor(None, self._block)

    async def start(self) -> None:
        """Generate the first block (also warms synth's compiled kernels) before timing."""
        self._buffer, self._pos = self._block(), 0
        self._refill()

    async def take(self, count: int) -> list[bytes]:
        """Up to ``count`` events; fewer only when the generator is exhausted."""
        out: list[bytes] = []
        while len(out) < count:
            if self._pos >= len(self._buffer):
                if self._next is None:
                    break
                self._buffer, self._pos = await self._next, 0
                self._next = None
                if not self._buffer:
                    break
                self._refill()
            end = min(len(self._buffer), self._pos + count - len(out))
            out += self._buffer[self._pos : end]
            self._pos = end
        return out

    async def close(self) -> None:
        if self._next is not None:
            await self._next  # the thread cannot be interrupted; let it finish its block
            self._next = None


async def _pump(
    events: _Prefetch,
    sender: _Sender,
    *,
    rate: float,
    n_events: int | None,
    on_progress: ProgressFn | None,
    stop: asyncio.Event | None,
) -> tuple[int, float]:
    """Feed ``events`` to ``sender`` in paced bursts; (events queued, start time)."""
    paced = math.isfinite(rate)
    capacity = max(1.0, rate * BUCKET_S) if paced else 0.0
    limit = ENDLESS if n_events is None else n_events
    queued = 0
    started = last = last_progress = time.perf_counter()
    tokens = min(1.0, capacity)  # the first event goes out at once
    add = sender.add
    while queued < limit and not (stop is not None and stop.is_set()):
        if sender.first_error is not None:
            break  # the broker refused a batch: stop and report, rather than pile on
        now = time.perf_counter()
        # A burst is at most one prefetched block: big enough to amortise the loop, small
        # enough that the next block is generated while this one is sent.
        burst = min(PREFETCH_BLOCK, limit - queued)
        if paced:
            tokens = min(capacity, tokens + (now - last) * rate)
            burst = min(int(tokens), burst)
            tokens -= burst
        last = now
        block = await events.take(burst)
        for raw in block:
            full = add(raw)
            if full is not None:
                await sender.submit(*full)
        queued += len(block)
        if len(block) < burst:
            break  # generator exhausted
        await sender.submit_all()
        if on_progress is not None and now - last_progress >= PROGRESS_EVERY_S:
            on_progress(queued, queued / max(now - started, 1e-9))
            last_progress = now
        if paced and tokens < 1 and queued < limit:
            # Sleep to the next tick; what a late wake-up costs is refilled next round.
            await asyncio.sleep(max(0.0, TICK_S - (time.perf_counter() - now)))
        else:
            await asyncio.sleep(0)  # behind or unpaced: only let the sender's I/O run
    return queued, started


def loadgen_main(
    settings: Any,
    rate: float,
    events: int | None,
    *,
    seed: int = 0,
    tenants: int = 50,
    embedding_share: float = 0.5,
    progress: bool = True,
) -> int:
    """``llmops-stream loadgen``: run :func:`run_loadgen` against the settings' bootstrap
    servers, topic and Kafka security, with a progress line on stderr and the summary on
    stdout. Ctrl-C stops it gracefully (what was queued is delivered and counted).
    Returns the exit code."""
    console = Console(stderr=True)
    topic = getattr(settings, "topic", DEFAULT_TOPIC)
    security = kafka_security_kwargs(settings)

    async def main(bar: Progress | None) -> LoadgenStats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows
            loop.add_signal_handler(signal.SIGINT, stop.set)
        task = bar.add_task("loadgen", total=events, rate=0.0) if bar is not None else None

        def show(sent: int, achieved: float) -> None:
            if bar is not None and task is not None:
                bar.update(task, completed=sent, rate=achieved)

        return await run_loadgen(
            settings.kafka_bootstrap_servers,
            topic=topic,
            rate=rate,
            n_events=events,
            seed=seed,
            n_tenants=tenants,
            embedding_share=embedding_share,
            on_progress=show,
            stop=stop,
            **security,
        )

    try:
        if progress:
            columns = (
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.completed:,} events"),
                TextColumn("{task.fields[rate]:,.0f}/s"),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=console, transient=True) as bar:
                stats = asyncio.run(main(bar))
        else:
            stats = asyncio.run(main(None))
    except DeliveryError as exc:
        console.print(f"error: {exc}", highlight=False, markup=False)
        return 1
    print(stats.summary())
    return 0
