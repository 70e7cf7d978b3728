"""Budget states leave the worker after each engine batch, coalesced per tenant, only for
partitions it owns, and held while a claimed segment is redone or after a stall until a
commit confirms the partition (no broker: the rounds the state publisher would send are
inspected)."""

import asyncio
import time

import orjson
from aiokafka import TopicPartition

from llmops_stream.stream.clickhouse.sink import ClickHouseSink
from llmops_stream.stream.core.budgets import BudgetConfig
from llmops_stream.stream.core.engine import Engine, EngineConfig
from llmops_stream.stream.core.pricing import ModelPrice, PriceTable
from llmops_stream.stream.kafka.partition import _Part
from llmops_stream.stream.kafka.transactions import Fenced
from llmops_stream.stream.kafka.worker import PartitionRun, Worker
from llmops_stream.stream.runtime.settings import Settings
from llmops_stream.stream.testing import T0_MS, ManualClock

PRICES = PriceTable({"m": ModelPrice(input=1.0, output=0.0, cache_read=1.0, cache_write=1.0)},
                    use_library=False)  # fmt: skip
BUDGETS = BudgetConfig.model_validate(
    {"default": [{"limit_usd": 1.0, "window": "1h", "soft": [0.5], "hard": 1.0}]}
)
CONFIG = EngineConfig(prices=PRICES, budgets=BUDGETS)
TP = TopicPartition("t", 0)


class Rec:
    def __init__(self, offset: int, value: bytes) -> None:
        self.offset, self.value = offset, value


def call(i: int, tenant: str, tokens: int = 1000) -> bytes:
    usage = {"input_tokens": tokens, "output_tokens": 0}
    event = {"event_id": f"e{i}", "ts": T0_MS - 1000, "tenant_id": tenant, "model": "m"}
    return orjson.dumps(event | {"usage": usage})


def setup(committed: int = 0, forced_end: int | None = None) -> tuple[Worker, PartitionRun]:
    worker = Worker(Settings(), lambda: CONFIG, None)
    run = PartitionRun(tp=TP, engine=Engine(CONFIG, ManualClock()), committed=committed,
                       seg_start=committed, next_offset=committed, forced_end=forced_end,
                       sink=ClickHouseSink(None, "db"))  # fmt: skip
    worker.runs[TP] = run
    return worker, run


def published(worker: Worker, everything: bool = True) -> list[dict]:
    """The values of the next round: with ``everything``, as if a routine round were due."""
    worker.states._everything = everything
    return [orjson.loads(r.value) for _, recs in worker.states._take_round() for r in recs]


def test_states_of_later_batches_are_published() -> None:
    worker, run = setup()
    asyncio.run(worker._handle(run, [Rec(0, b"not json")]))  # a batch that changes no state
    asyncio.run(worker._handle(run, [Rec(1, call(1, "acme"))]))
    assert [v["tenant_id"] for v in published(worker)] == ["acme"]
    topics = {r.topic for r in run.records}
    assert topics == {"llm.calls.dlq"}, "states are not part of the segment's transaction"


def test_batches_of_one_round_are_coalesced_per_tenant() -> None:
    worker, run = setup()
    asyncio.run(worker._handle(run, [Rec(0, call(0, "acme", 400_000))]))
    asyncio.run(worker._handle(run, [Rec(1, call(1, "acme", 400_000)), Rec(2, call(2, "b"))]))
    values = {v["tenant_id"]: v for v in published(worker)}
    assert sorted(values) == ["acme", "b"]
    assert values["acme"]["budgets"][0]["spend_usd"] == 0.8  # the latest of acme's rows
    assert values["acme"]["status"] == "warn"
    assert published(worker) == [], "a round takes what was pending"


def test_a_status_change_goes_out_at_once_spend_alone_at_the_routine_round() -> None:
    worker, run = setup()
    asyncio.run(worker._handle(run, [Rec(0, call(0, "acme", 400_000)), Rec(1, call(1, "b"))]))
    assert published(worker, everything=False) == [], "spend alone: the routine round"
    asyncio.run(worker._handle(run, [Rec(2, call(2, "acme", 400_000))]))  # acme → warn
    (value,) = published(worker, everything=False)
    assert value["tenant_id"] == "acme" and value["status"] == "warn"
    assert value["budgets"][0]["spend_usd"] == 0.8
    assert [v["tenant_id"] for v in published(worker)] == ["b"], "b waited, and no longer"
    asyncio.run(worker._handle(run, [Rec(3, call(3, "acme", 100_000))]))  # still warn
    assert published(worker, everything=False) == []


def test_replayed_committed_events_publish_nothing() -> None:
    worker, run = setup(committed=5)
    run.next_offset = 0
    asyncio.run(worker._handle(run, [Rec(i, call(i, "acme")) for i in range(5)]))
    assert run.next_offset == 5 and published(worker) == []


def test_states_of_a_partition_no_longer_owned_are_not_sent() -> None:
    worker, run = setup()
    asyncio.run(worker._handle(run, [Rec(0, call(0, "acme"))]))
    worker._drop(TP)  # revoked, fenced or retaken
    assert published(worker) == []
    worker.runs[TP] = run
    worker.states.add(TP, run.engine.budgets.state_columns())
    del worker.runs[TP]  # lost between queueing and the round
    assert published(worker) == []


def test_states_of_a_redone_segment_wait_for_its_end() -> None:
    worker, run = setup(forced_end=2)
    # the redo cuts its segment at offset 2 by itself (a flush without ClickHouse here)
    cut: list[int] = []

    async def flush(**_: object) -> None:
        part = worker._cut(run, due=False)
        assert part is not None
        cut.append(part.end)

    worker.flush = flush
    asyncio.run(worker._handle(run, [Rec(0, call(0, "acme"))]))
    assert published(worker) == [] and run.held_states
    asyncio.run(worker._handle(run, [Rec(1, call(1, "acme")), Rec(2, call(2, "acme"))]))
    assert cut == [2] and run.forced_end is None and not run.held_states
    # the redo's coalesced state, then the state after offset 2, coalesced in one round
    (value,) = published(worker)
    assert value["budgets"][0]["spend_usd"] == 0.003


def stalled(worker: Worker, run: PartitionRun) -> None:
    """A batch processed, then a loop stall longer than half a session timeout."""
    worker._last_publish = time.monotonic()
    asyncio.run(worker._handle(run, [Rec(0, call(0, "acme"))]))
    worker._last_publish -= worker.s.kafka_session_timeout_ms / 1000
    worker._publish_states()


def test_states_after_a_stall_wait_for_a_commit() -> None:
    worker, run = setup()
    stalled(worker, run)
    assert not run.confirmed and published(worker) == [], "the partition may be lost"
    asyncio.run(worker._handle(run, [Rec(1, call(1, "acme"))]))
    assert published(worker) == [] and len(run.held_states) == 2

    async def committed(p: _Part) -> None:
        pass

    worker._commit_once = committed
    part = _Part(run=run, start=0, end=2, sink=None, records=[], alert_types=[], snapshot=None)
    asyncio.run(worker._commit(part))  # nobody fenced us: still ours
    assert run.confirmed and not run.held_states
    (value,) = published(worker)
    assert value["budgets"][0]["spend_usd"] == 0.002


def test_states_after_a_stall_of_a_fenced_partition_are_never_sent() -> None:
    worker, run = setup()
    stalled(worker, run)

    async def fenced(p: _Part) -> None:
        raise Fenced("t[0] was taken over by another worker")

    worker._commit_once = fenced
    part = _Part(run=run, start=0, end=1, sink=None, records=[], alert_types=[], snapshot=None)
    asyncio.run(worker._commit(part))
    assert TP not in worker.runs and published(worker) == []
