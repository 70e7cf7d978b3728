"""ClickHouse sink round trip: every value given comes back from ClickHouse unchanged, a
flush written twice with the same token is stored once — through the embedded engine
(chDB, in a process of its own) and through ClickHouse's HTTP interface (the test front,
whose client compresses the Arrow payload as a remote server's would).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from chdb_front import FrontProcess
from sink_cases import chdb_roundtrip, check_roundtrip, engine_outputs, with_huge_counts

from llmops_stream.stream.clickhouse.sink import apply_schema, connect

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontProcess]:
    tmp = tmp_path_factory.mktemp("front")
    with FrontProcess(tmp / "ch", tmp / "front.log") as proc:
        yield proc


def test_roundtrip_through_chdb(tmp_path: Path) -> None:
    # chDB opens one path per process: a fresh one, whatever this process has open
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(chdb_roundtrip, str(tmp_path)).result(timeout=600)


def test_roundtrip_through_http(front: FrontProcess, tmp_path: Path) -> None:
    client = connect(front.url, "hrt")
    assert client.write_compression in ("lz4", "zstd")  # the compressed payload path
    check_roundtrip(client, "hrt", engine_outputs(tmp_path))
    apply_schema(client, "hrt_huge")
    check_roundtrip(client, "hrt_huge", with_huge_counts(engine_outputs(tmp_path)))
