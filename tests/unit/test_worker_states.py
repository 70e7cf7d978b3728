"""A segment's budget states reach the state topic even when its first batch changed none."""

import orjson
from aiokafka import TopicPartition

from llmops_stream.stream.clickhouse.sink import ClickHouseSink
from llmops_stream.stream.core.budgets import BudgetConfig
from llmops_stream.stream.core.engine import Engine, EngineConfig
from llmops_stream.stream.core.pricing import ModelPrice, PriceTable
from llmops_stream.stream.kafka.worker import PartitionRun, Worker
from llmops_stream.stream.runtime.settings import Settings
from llmops_stream.stream.testing import T0_MS, ManualClock

PRICES = PriceTable({"m": ModelPrice(input=1.0, output=0.0, cache_read=1.0, cache_write=1.0)},
                    use_library=False)  # fmt: skip
BUDGETS = BudgetConfig.model_validate({"default": [{"limit_usd": 1.0, "window": "1h"}]})


def test_states_of_later_batches_are_published() -> None:
    config = EngineConfig(prices=PRICES, budgets=BUDGETS)
    worker = Worker(Settings(), lambda: config, None)
    tp = TopicPartition("t", 0)
    run = PartitionRun(tp=tp, engine=Engine(config, ManualClock()), committed=0, seg_start=0,
                       next_offset=0, forced_end=None, sink=ClickHouseSink(None, "db"))  # fmt: skip
    call = {"event_id": "e", "ts": T0_MS - 1000, "tenant_id": "acme", "model": "m",
            "usage": {"input_tokens": 1000, "output_tokens": 0}}  # fmt: skip

    class Rec:
        def __init__(self, offset: int, value: bytes) -> None:
            self.offset, self.value = offset, value

    worker._process(run, [Rec(0, b"not json")])  # a batch that changes no budget state
    worker._process(run, [Rec(1, orjson.dumps(call))])
    records = worker._state_records(run)
    assert [orjson.loads(r.value)["tenant_id"] for r in records] == ["acme"]
