"""The bookkeeping tables stay bounded: ``llm_segments`` and ``llm_engine_state`` carry a
rollup TTL (old rows of a partition merged into its newest), in a fresh database and, through
``ALTER TABLE ... MODIFY TTL``, in one created before the TTLs. Applying the schema again
changes nothing, and what the worker reads back (the checkpoint at or before the committed
offset, the segment claimed there) survives the rollup however old it is.

chDB serves one path per process, so the checks run in a child process of their own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

TABLES = ("llm_segments", "llm_engine_state")

SCRIPT = textwrap.dedent(
    """
    import base64, json, sys
    from aiokafka import TopicPartition
    from llmops_stream.schemas import read_text
    from llmops_stream.stream.clickhouse.sink import apply_schema, connect
    from llmops_stream.stream.kafka.bookkeeping import Bookkeeping

    TABLES = ("llm_segments", "llm_engine_state")
    client = connect("chdb://" + sys.argv[1], "ttl_fresh")  # the schema, applied once
    sent = []
    command = client.command

    def recording(cmd, *args, **kwargs):
        sent.append(cmd)
        return command(cmd, *args, **kwargs)

    client.command = recording

    def apply(db):
        sent.clear()
        apply_schema(client, db)
        return [c for c in sent if c.startswith("ALTER")]

    def show(db):
        return {
            t: client.query(f"SHOW CREATE TABLE {db}.{t}").result_rows[0][0] for t in TABLES
        }

    out = {"fresh_again": apply("ttl_fresh"), "fresh": show("ttl_fresh")}

    # a database created by the schema as it was before the TTLs
    client.command("CREATE DATABASE ttl_old")
    for statement in read_text("clickhouse.sql").split("\\n;\\n"):
        lines = [l for l in statement.splitlines() if not l.lstrip().startswith(("--", "TTL "))]
        body = "\\n".join(lines).strip()
        if body and not body.startswith("ALTER"):
            client.command(body.replace("{db}", "ttl_old"))
    out["old_before"] = show("ttl_old")
    out["old_first"] = apply("ttl_old")
    out["old_again"] = apply("ttl_old")
    out["old"] = show("ttl_old")

    # rows as the worker writes them, some of them long ago
    def old_rows(table, cols, rows):
        values = ", ".join(
            "(" + ", ".join(repr(v) for v in row[:-1]) + f", now64(3) - INTERVAL {row[-1]} DAY)"
            for row in rows
        )
        client.command(f"INSERT INTO ttl_old.{table} ({cols}, created_at) VALUES {values}")

    def b64(text):
        return base64.b64encode(text.encode()).decode()

    cols = "group_id, topic, partition, offset, state"
    old_rows("llm_engine_state", cols, [
        ("g", "calls", 0, off, b64(f"p0@{off}"), 30 - off // 100) for off in (100, 200, 300)
    ] + [
        ("g", "calls", 1, off, b64(f"p1@{off}"), 5) for off in (10, 20)
    ] + [
        ("other", "calls", 0, 7, b64("other@7"), 400),
    ])
    cols = "group_id, topic, partition, start_offset, end_offset"
    old_rows("llm_segments", cols, [
        ("g", "calls", 0, 0, 100, 12), ("g", "calls", 0, 100, 200, 11),
        ("g", "calls", 0, 200, 250, 10),  # claimed, never committed: the offset is at 200
        ("g", "calls", 1, 0, 10, 9), ("g", "calls", 1, 10, 20, 8),
    ])
    books = Bookkeeping(client, "ttl_old", "g")
    p0, p1 = TopicPartition("calls", 0), TopicPartition("calls", 1)
    books.write_checkpoint(p1, 30, b"p1@30")
    books.write_checkpoint(p1, 40, b"p1@40")
    assert books.claim(p1, 20, 30)
    assert books.claim(p1, 30, 45)
    for table in TABLES:
        client.command(f"OPTIMIZE TABLE ttl_old.{table} FINAL")

    def rows(table, key):
        return client.query(
            f"SELECT group_id, partition, {key} FROM ttl_old.{table} ORDER BY group_id, "
            f"partition, {key}"
        ).result_rows

    def checkpoint(tp, committed, group="g"):
        found = Bookkeeping(client, "ttl_old", group).latest_checkpoint(tp, committed)
        return None if found is None else [found[0], found[1].decode()]

    out["state_rows"] = [list(r) for r in rows("llm_engine_state", "offset")]
    out["segment_rows"] = [list(r) for r in rows("llm_segments", "start_offset")]
    out["checkpoints"] = {
        "p0@300": checkpoint(p0, 300), "p0@1000": checkpoint(p0, 1000),
        "p1@35": checkpoint(p1, 35), "p1@25": checkpoint(p1, 25),
        "p1@45": checkpoint(p1, 45), "other@7": checkpoint(p0, 7, "other"),
    }
    out["segments"] = {
        "p0@200": books.segment_end(p0, 200), "p1@20": books.segment_end(p1, 20),
        "p1@30": books.segment_end(p1, 30), "p1@10": books.segment_end(p1, 10),
    }
    out["again"] = apply("ttl_old")
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("ttl") / "ch"
    out = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", SCRIPT, str(path)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert isinstance(data, dict)
    return data


def ttl_of(ddl: str) -> str:
    [line] = [line.strip() for line in ddl.splitlines() if line.strip().startswith("TTL ")]
    return line


def test_a_fresh_database_has_the_ttls(result: dict[str, Any]) -> None:
    segments, states = (ttl_of(result["fresh"][t]) for t in TABLES)
    assert segments.startswith("TTL toDateTime(created_at) + toIntervalDay(7) GROUP BY ")
    assert states.startswith("TTL toDateTime(created_at) + toIntervalDay(1) GROUP BY ")
    assert "state = argMax(state, offset)" in states
    assert "end_offset = argMax(end_offset, start_offset)" in segments
    # applied again: nothing to alter (the CREATE's TTL is the ALTER's, as printed)
    assert result["fresh_again"] == []


def test_a_database_from_before_the_ttls_gets_them_once(result: dict[str, Any]) -> None:
    assert all("TTL" not in ddl for ddl in result["old_before"].values())
    assert [a.split()[2] for a in result["old_first"]] == [f"ttl_old.{t}" for t in TABLES]
    assert result["old_again"] == [] and result["again"] == []
    assert result["old"] == result["fresh"] | {
        t: result["fresh"][t].replace("ttl_fresh.", "ttl_old.") for t in TABLES
    }


def test_old_checkpoints_roll_up_into_the_newest(result: dict[str, Any]) -> None:
    assert result["state_rows"] == [
        ["g", 0, 300],  # idle for weeks: its newest checkpoint stays
        ["g", 1, 20],  # the old ones of an active partition, rolled up
        ["g", 1, 30],
        ["g", 1, 40],
        ["other", 0, 7],  # another group's, kept apart
    ]
    assert result["checkpoints"] == {
        "p0@300": [300, "p0@300"],
        "p0@1000": [300, "p0@300"],
        "p1@35": [30, "p1@30"],
        "p1@25": [20, "p1@20"],
        "p1@45": [40, "p1@40"],
        "other@7": [7, "other@7"],
    }


def test_the_segment_at_the_committed_offset_outlives_the_ttl(result: dict[str, Any]) -> None:
    assert result["segment_rows"] == [["g", 0, 200], ["g", 1, 10], ["g", 1, 20], ["g", 1, 30]]
    # a flush cut 10 days ago at 200: still redone over [200, 250)
    assert result["segments"] == {"p0@200": 250, "p1@20": 30, "p1@30": 45, "p1@10": 20}


def test_the_ddl_keeps_the_alter_equal_to_the_create() -> None:
    ddl = (Path(__file__).parents[2] / "schemas" / "clickhouse.sql").read_text()
    lines = ddl.splitlines()
    for table in TABLES:
        alter = next(x for x in lines if x.startswith(f"ALTER TABLE {{db}}.{table} MODIFY TTL "))
        start = lines.index(f"CREATE TABLE IF NOT EXISTS {{db}}.{table}")
        create_ttl = next(x for x in lines[start:] if x.startswith("TTL "))
        assert alter.split(" MODIFY ", 1)[1] == create_ttl
