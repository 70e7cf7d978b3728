"""The worker's bookkeeping in ClickHouse: segment claims, engine checkpoints, dedup ids.

* ``llm_segments``: a segment is the offset range ``[start, end)`` of one partition written
  by one flush. Its row is inserted before the data (deduplicated by start), then read
  back: the first writer of a start owns it, so a replaced worker that still runs can
  never count a segment twice.
* ``llm_engine_state``: engine snapshots (base64) at committed offsets.
* ``llm_calls``: the ids a checkpoint's dedup held are read back from the stored calls
  (checkpoints hold no ids, so their size does not grow with them).

``llm_segments`` and ``llm_engine_state`` stay bounded by a rollup TTL (see
``schemas/clickhouse.sql``): a partition's old rows are merged into the newest of them. That
is the only row read back here long after its insert: the segment claimed at the committed
offset (never a committed one) and the checkpoint at or before it.

Every call is blocking (clickhouse-connect); the worker runs them on its ClickHouse thread.
"""

from __future__ import annotations

import base64
import zlib
from typing import Any

import numpy as np
import pyarrow as pa
from aiokafka import TopicPartition

from llmops_stream.stream.core.timeutil import now_ms


def _ms_now() -> pa.Array:
    return pa.array([now_ms()], pa.int64()).cast(pa.timestamp("ms", "UTC"))


class Bookkeeping:
    """Segments, checkpoints and dedup ids of one consumer ``group`` in database ``db``
    (a name validated by ``clickhouse.sink.connect``, so it can go into SQL text)."""

    def __init__(self, client: Any, db: str, group: str) -> None:
        self.client = client
        self.db = db
        self.group = group

    def slot(self, tp: TopicPartition) -> str:
        """``group:topic:partition``: names the partition's inserts (dedup tokens)."""
        return f"{self.group}:{tp.topic}:{tp.partition}"

    def claim(self, tp: TopicPartition, start: int, end: int) -> bool:
        """Claim segment ``[start, end)``; False if its start is claimed with another end."""
        self.client.insert_arrow(
            f"{self.db}.llm_segments",
            pa.table(
                {
                    "group_id": [self.group],
                    "topic": [tp.topic],
                    "partition": pa.array([tp.partition], pa.int32()),
                    "start_offset": pa.array([start], pa.int64()),
                    "end_offset": pa.array([end], pa.int64()),
                    "created_at": _ms_now(),
                }
            ),  # fmt: skip
            settings={"insert_deduplication_token": f"segment:{self.slot(tp)}:{start}"},
        )
        return self.segment_end(tp, start) == end

    def segment_end(self, tp: TopicPartition, start: int) -> int | None:
        """End of the segment claimed at ``start`` of ``tp`` (its first writer's), if any."""
        rows = self.client.query(
            f"SELECT end_offset FROM {self.db}.llm_segments WHERE group_id = %(g)s AND "  # noqa: S608 - db name validated in connect()
            "topic = %(t)s AND partition = %(p)s AND start_offset = %(o)s "
            "ORDER BY created_at LIMIT 1",
            parameters={"g": self.group, "t": tp.topic, "p": tp.partition, "o": start},
        ).result_rows
        return int(rows[0][0]) if rows else None

    def latest_checkpoint(self, tp: TopicPartition, committed: int) -> tuple[int, bytes] | None:
        """The newest engine snapshot of ``tp`` at or before ``committed``: (offset, bytes)."""
        rows = self.client.query(
            f"SELECT offset, state FROM {self.db}.llm_engine_state WHERE group_id = %(g)s AND "  # noqa: S608 - db name validated in connect()
            "topic = %(t)s AND partition = %(p)s AND offset <= %(o)s "
            "ORDER BY offset DESC, created_at DESC LIMIT 1",
            parameters={"g": self.group, "t": tp.topic, "p": tp.partition, "o": committed},
        ).result_rows
        if not rows:
            return None
        offset, blob = rows[0]
        return int(offset), base64.b64decode(blob)

    def write_checkpoint(self, tp: TopicPartition, offset: int, snapshot: bytes) -> None:
        """Store the engine ``snapshot`` of ``tp`` as of ``offset`` (the next to process)."""
        self.client.insert_arrow(
            f"{self.db}.llm_engine_state",
            pa.table(
                {
                    "group_id": [self.group],
                    "topic": [tp.topic],
                    "partition": pa.array([tp.partition], pa.int32()),
                    "offset": pa.array([offset], pa.int64()),
                    "state": [base64.b64encode(snapshot).decode()],
                    "created_at": _ms_now(),
                }
            ),  # fmt: skip
            # the state's checksum too: time alone can change the state at one offset (an
            # idle partition's clock), and that newer checkpoint must not be dropped
            settings={
                "insert_deduplication_token": (
                    f"state:{self.slot(tp)}:{offset}:{zlib.crc32(snapshot):08x}"
                )
            },
        )

    def stored_ids(
        self, tp: TopicPartition, start: int, end: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tenant_id object[n], event_id object[n], offset int64[n]) of the calls stored
        from offsets ``[start, end)`` of ``tp``."""
        result = self.client.query(
            f"SELECT tenant_id, event_id, kafka_offset FROM {self.db}.llm_calls "  # noqa: S608 - db name validated in connect()
            "WHERE source = %(t)s AND kafka_partition = %(p)s "
            "AND kafka_offset >= %(a)s AND kafka_offset < %(b)s",
            parameters={"t": tp.topic, "p": tp.partition, "a": start, "b": end},
        )
        tenants, events, offsets = result.result_columns or ([], [], [])
        return (
            np.asarray(tenants, dtype=object),
            np.asarray(events, dtype=object),
            np.asarray(offsets, dtype=np.int64),
        )
