"""Talking to a running local Kafka broker: the readiness probe and topic creation.

Job
---
:func:`_metadata_probe` asks the broker for its metadata with a raw request and returns the
cluster id once our node is listed (the broker is up and unfenced). :func:`_create_topics`
creates topics with aiokafka's admin client and waits until every partition has a leader;
:func:`_run_coro` runs it from synchronous code, inside an event loop or not.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from .kafka_config import NODE_ID
from .kafka_fetch import KafkaBrokerError

T = TypeVar("T")


def _metadata_probe(port: int, timeout_s: float = 2.0) -> str | None:
    """Send a Metadata v4 request (no topics); return the cluster id if node 1 is listed.

    A raw request rather than a client: it works inside or outside an event loop, costs no
    import, and tells "our broker is up and unfenced" apart from "something listens there".
    v4 is the oldest Metadata version Kafka 4.x still serves and is not a flexible version,
    so the encoding stays plain.
    """
    client_id = b"llmops-probe"
    body = struct.pack(">hhih", 3, 4, 7, len(client_id)) + client_id
    body += struct.pack(">ib", 0, 0)  # topics: empty array; allow_auto_topic_creation: false
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            s.sendall(struct.pack(">i", len(body)) + body)
            size = struct.unpack(">i", _recv_exact(s, 4))[0]
            data = _recv_exact(s, size)
    except (OSError, struct.error, EOFError):
        return None
    return _parse_metadata_v4(data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return bytes(buf)


def _parse_metadata_v4(data: bytes) -> str | None:
    try:
        pos = 8  # correlation id, throttle_time_ms
        (n_brokers,) = struct.unpack_from(">i", data, pos)
        pos += 4
        seen = False
        for _ in range(n_brokers):
            node_id, host_len = struct.unpack_from(">ih", data, pos)
            pos += 6 + host_len + 4  # host, port
            (rack_len,) = struct.unpack_from(">h", data, pos)
            pos += 2 + max(rack_len, 0)
            seen = seen or node_id == NODE_ID
        (cid_len,) = struct.unpack_from(">h", data, pos)
        cluster_id = data[pos + 2 : pos + 2 + cid_len].decode() if cid_len >= 0 else ""
    except (struct.error, UnicodeDecodeError):
        return None
    return cluster_id if seen else None


def _run_coro(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion, also when the caller already sits in an event loop
    (then on a helper thread with its own loop, since a loop cannot be re-entered)."""

    async def _main() -> T:
        return await factory()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_main())
    result: list[T] = []
    error: list[BaseException] = []

    def _thread() -> None:
        try:
            result.append(asyncio.run(_main()))
        except BaseException as exc:  # handed to the caller below
            error.append(exc)

    t = threading.Thread(target=_thread, name="kafka-broker-admin")
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


async def _create_topics(
    bootstrap: str,
    wanted: Mapping[str, int],
    topic_configs: Mapping[str, Mapping[str, str]],
    timeout_s: float,
) -> None:
    # Imported here: `fetch`/`start`/`stop` on the command line need no Kafka client.
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: PLC0415

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="llmops-kafka-broker")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(name, n, 1, topic_configs=dict(topic_configs.get(name, {})))
            for name, n in wanted.items()
            if name not in existing
        ]
        if new:
            resp = await admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
            for topic, code, *rest in resp.topic_errors:
                if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS (a concurrent creator)
                    raise KafkaBrokerError(f"creating topic {topic!r} failed: {code} {rest}")
        # CreateTopics returns once the controller has committed the topics; the broker's
        # metadata cache follows a moment later. Wait, so a producer started next does not
        # see UnknownTopicOrPartition.
        deadline = time.monotonic() + timeout_s
        while True:
            described = await admin.describe_topics(list(wanted))
            if _all_led(described, wanted):
                return
            if time.monotonic() > deadline:
                raise KafkaBrokerError(f"topics not ready after {timeout_s} s: {described}")
            await asyncio.sleep(0.05)
    finally:
        await admin.close()


def _all_led(described: Sequence[Mapping[str, Any]], wanted: Mapping[str, int]) -> bool:
    by_name = {t["topic"]: t for t in described}
    for name, n in wanted.items():
        t = by_name.get(name)
        if t is None or t["error_code"] != 0:
            return False
        parts = t["partitions"]
        if len(parts) < n or any(p["error_code"] != 0 or p["leader"] < 0 for p in parts):
            return False
    return True
