"""What the worker holds per owned partition, and one partition's share of a flush."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from aiokafka import TopicPartition

from llmops_stream.stream.clickhouse.sink import ClickHouseSink
from llmops_stream.stream.core.engine import Engine

from .records import Record


@dataclass
class PartitionRun:
    """What the worker holds for one owned partition."""

    tp: TopicPartition
    engine: Engine
    committed: int  # offsets below were processed and committed in an earlier run
    seg_start: int  # first offset of the segment being built
    next_offset: int  # next offset to process
    forced_end: int | None  # a segment started before a crash must end exactly here
    sink: ClickHouseSink
    records: list[Record] = field(default_factory=list)
    # budget-state columns held while a claimed segment is redone (forced_end set: the
    # previous owner published them; they go out again once the redo is cut, coalesced,
    # so gateways do not see the redo step through older states), or while ownership is
    # unconfirmed (below)
    held_states: list[dict[str, np.ndarray]] = field(default_factory=list)
    # False after a stall of the worker that may have cost it the partition; a commit
    # that succeeds sets it again (see Worker._publish_states)
    confirmed: bool = True
    alert_types: list[str] = field(default_factory=list)
    checkpointed: int = -1
    # outputs of time alone (Engine.tick) wait in the buffers: flushed with the next
    # segment, or on their own when the partition is idle
    timed: bool = False

    @property
    def pending(self) -> bool:
        return self.next_offset > self.seg_start


@dataclass
class _Part:
    """One partition's share of a flush: the segment [start, end) and what it produced."""

    run: PartitionRun
    start: int
    end: int
    sink: ClickHouseSink | None  # None: nothing new, only a checkpoint is due
    records: list[Record]
    alert_types: list[str]
    snapshot: bytes | None  # engine state as of `end`, when a checkpoint is due
    claim: bool = True  # False: only outputs of time alone, no offsets (no segment claim)
    attempts: int = 0  # Kafka commits tried
