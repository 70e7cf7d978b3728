"""A real single-node Apache Kafka broker (KRaft, combined broker + controller) on 127.0.0.1.

Tests, benchmarks and a local try of llmops-stream run against a genuine Kafka broker, not
a mock. This module fetches the broker's jars from Maven Central with
``mvn dependency:copy-dependencies`` (once; they are cached between runs), formats a KRaft
log directory, starts ``kafka.Kafka`` with Java in its own process group and waits until
the broker answers a Metadata request carrying the cluster id it was formatted with.

It only ever signals processes it started itself: the Java child it holds a handle to,
or, for ``stop`` from the command line, the process recorded in the pid file after
checking that it is still the same process (start time and command line).

Command line::

    python -m llmops_stream.stream.dev.kafka_broker fetch   # download the jars only
    python -m llmops_stream.stream.dev.kafka_broker start   # prints 127.0.0.1:PORT, runs on
    python -m llmops_stream.stream.dev.kafka_broker status
    python -m llmops_stream.stream.dev.kafka_broker stop
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

__all__ = [
    "KAFKA_VERSION",
    "KafkaBroker",
    "KafkaBrokerError",
    "default_cache_dir",
    "fetch_jars",
    "main",
]

log = logging.getLogger(__name__)

# Keep in step with kafka/pom.xml (tests/unit/test_deploy_files.py checks it); the pom there
# explains the choice of version.
KAFKA_VERSION = "4.2.2"
LOG4J_VERSION = "2.25.4"
NODE_ID = 1
MIN_JAVA_MAJOR = 17

# Used when the repository's kafka/pom.xml is not next to the package (a wheel install).
POM_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by llmops_stream.stream.dev.kafka_broker: fetches the Kafka broker's jars. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.llmops-stream</groupId>
  <artifactId>kafka-broker-libs</artifactId>
  <version>0</version>
  <packaging>pom</packaging>
  <properties>
    <kafka.version>{kafka_version}</kafka.version>
    <log4j.version>{log4j_version}</log4j.version>
  </properties>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>${{kafka.version}}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>${{log4j.version}}</version>
      <scope>runtime</scope>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>3.8.1</version>
      </plugin>
    </plugins>
  </build>
</project>
"""

# Console appender: the JVM's stdout/stderr go to one file per broker, so the whole story of
# a failed start is in one place. WARN keeps a healthy broker's log to a few lines.
LOG4J2_TEMPLATE = """status = error
appender.console.type = Console
appender.console.name = console
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.console.ref = console
logger.kafka.name = kafka
logger.kafka.level = {level}
logger.apache.name = org.apache.kafka
logger.apache.level = {level}
"""

_BIND_FAILURE = re.compile(r"BindException|Address already in use")
_POM_VERSION = re.compile(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>")

T = TypeVar("T")


class KafkaBrokerError(RuntimeError):
    """The broker could not be fetched, started or reached; the message says why."""


def default_cache_dir() -> Path:
    """``$LLMOPS_KAFKA_CACHE``, else ``~/.cache/llmops-stream/kafka`` (XDG_CACHE_HOME honoured)."""
    env = os.environ.get("LLMOPS_KAFKA_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "llmops-stream" / "kafka"


def repo_pom() -> Path:
    """Where kafka/pom.xml sits in a source checkout: three parents up from this module."""
    return Path(__file__).resolve().parents[2] / "kafka" / "pom.xml"


def _pom_text() -> tuple[str, str]:
    """(pom text, Kafka version it fetches): the repository's pom if present, else the template."""
    path = repo_pom()
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        match = _POM_VERSION.search(text)
        if match:
            return text, match.group(1)
        log.warning("no <kafka.version> in %s; using the built-in pom", path)
    text = POM_TEMPLATE.format(kafka_version=KAFKA_VERSION, log4j_version=LOG4J_VERSION)
    return text, KAFKA_VERSION


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def fetch_jars(cache_dir: Path | None = None, *, timeout_s: float = 900) -> Path:
    """Download the broker's jars (once) and return the directory holding them.

    The jars land in ``cache_dir/<version>/libs``. A lock serialises concurrent fetches
    (parallel test runs) and the directory appears by an atomic rename, so a half-finished
    download is never taken for a complete one.
    """
    cache = (cache_dir or default_cache_dir()).expanduser()
    pom, version = _pom_text()
    version_dir = cache / version
    libs = version_dir / "libs"
    marker = f"kafka_2.13-{version}.jar"
    if (libs / marker).is_file():
        return libs
    version_dir.mkdir(parents=True, exist_ok=True)
    with (version_dir / ".fetch.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (libs / marker).is_file():  # another process fetched while we waited
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise KafkaBrokerError(
                "Apache Maven (mvn) is needed to fetch the Kafka broker's jars from Maven "
                "Central; install it (e.g. `apt-get install maven`), or point "
                f"LLMOPS_KAFKA_CACHE at a cache that already holds {version}/libs"
            )
        # mvn runs on a copy of the pom inside the cache, so nothing is written into the
        # source tree (or into site-packages).
        (version_dir / "pom.xml").write_text(pom, encoding="utf-8")
        staging = Path(tempfile.mkdtemp(prefix="libs-", dir=version_dir))
        cmd = [
            mvn, "-q", "-B", "-Dstyle.color=never",
            "-f", str(version_dir / "pom.xml"),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ]  # fmt: skip
        log.info("fetching Apache Kafka %s jars into %s", version, libs)
        try:
            proc = subprocess.run(  # noqa: S603 - fixed argv, mvn resolved from PATH
                cmd, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise KafkaBrokerError(f"mvn did not finish within {timeout_s:.0f} s") from exc
        if proc.returncode != 0 or not (staging / marker).is_file():
            shutil.rmtree(staging, ignore_errors=True)
            output = (proc.stdout + proc.stderr).strip()[-4000:]
            raise KafkaBrokerError(
                f"mvn could not fetch org.apache.kafka:kafka_2.13:{version} "
                f"(exit {proc.returncode}); is Maven Central reachable?\n{output}"
            )
        if libs.exists():  # a broken earlier attempt: replace it
            shutil.rmtree(libs)
        staging.rename(libs)
    return libs


def _find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        java: str | None = str(Path(java_home) / "bin" / "java")
    else:
        java = shutil.which("java")
    if java is None:
        raise KafkaBrokerError(
            f"Java {MIN_JAVA_MAJOR}+ is needed to run the Kafka broker; none found on PATH "
            "or in JAVA_HOME"
        )
    out = subprocess.run(  # noqa: S603 - fixed argv
        [java, "-version"], capture_output=True, text=True, check=False, timeout=60
    )
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match:
        major = int(match.group(1))
        if major == 1 and match.group(2):  # "1.8.0_..." style
            major = int(match.group(2))
        if major < MIN_JAVA_MAJOR:
            raise KafkaBrokerError(
                f"Kafka {KAFKA_VERSION} needs Java {MIN_JAVA_MAJOR}+, {java} is Java {major}"
            )
    return java


def _free_ports(count: int) -> list[int]:
    """Ports the kernel hands out as free right now, distinct (all held open together)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Same option the JVM sets on its server sockets, so TIME_WAIT leftovers of a broker
        # we just killed do not count as "in use".
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _new_cluster_id() -> str:
    # Kafka cluster ids are 16 random bytes in URL-safe base64 without padding; one starting
    # with '-' would be read as an option by kafka-storage, so draw again (as Kafka does).
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _read_properties(path: Path) -> dict[str, str]:
    props: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            props[key.strip()] = value.strip()
    return props


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


_RUNNING: set[KafkaBroker] = set()


@atexit.register
def _stop_leftovers() -> None:
    # A broker whose owner forgot stop() (or whose test run crashed) must not outlive the
    # interpreter; detached brokers (`start` on the command line) are not in this set.
    for broker in list(_RUNNING):
        with contextlib.suppress(Exception):
            broker.stop(timeout_s=10)


class KafkaBroker:
    """A single-node KRaft Apache Kafka broker on 127.0.0.1, run as a child process.

    ``with KafkaBroker() as kafka: ... kafka.bootstrap_servers ...`` starts it (fetching
    the jars on first use) and stops it at the end. ``kill()`` and ``restart()`` serve
    broker-failure tests: the restarted broker keeps its ports and its data.
    """

    def __init__(
        self,
        *,
        cache_dir: Path | None = None,
        port: int | None = None,
        data_dir: Path | None = None,
        heap: str = "512m",
        log_level: str = "WARN",
    ) -> None:
        self.cache_dir = (cache_dir or default_cache_dir()).expanduser()
        self.heap = heap
        self.log_level = log_level
        self._requested_port = port
        self._port: int | None = port
        self._controller_port: int | None = None
        # Only a directory we created ourselves is deleted by stop().
        self._own_dir = data_dir is None
        self._base_dir: Path | None = Path(data_dir).expanduser().resolve() if data_dir else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None
        self._cluster_id: str | None = None
        self._libs: Path | None = None
        self._java: str | None = None

    # -- public state ---------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        """``127.0.0.1:PORT``; known once the broker has been started."""
        if self._port is None:
            raise KafkaBrokerError("the broker has not been started yet")
        return f"127.0.0.1:{self._port}"

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def controller_port(self) -> int | None:
        return self._controller_port

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def data_dir(self) -> Path | None:
        return self._base_dir

    @property
    def log_file(self) -> Path | None:
        return self._base_dir / "broker.log" if self._base_dir else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle ------------------------------------------------------------------------

    def fetch(self) -> Path:
        """Make sure the jars are in the cache; return their directory."""
        self._libs = fetch_jars(self.cache_dir)
        return self._libs

    def start(self, timeout_s: float = 90) -> None:
        """Start the broker and wait until it serves metadata (the jar fetch is not timed).

        A port clash with auto-chosen ports is retried on fresh ports; an explicit port, or
        the pinned ports of a restart, are retried on the same port until the timeout.
        """
        if self.is_running():
            return
        libs = self._libs or self.fetch()
        java = self._java or _find_java()
        self._java = java
        if self._base_dir is None:
            self._base_dir = Path(tempfile.mkdtemp(prefix="llmops-kafka-"))
        base = self._base_dir
        base.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout_s
        pinned = self._controller_port is not None or self._requested_port is not None
        while True:
            self._choose_ports(pinned)
            self._write_config(base)
            if self._cluster_id is None:
                self._cluster_id = self._format_storage(java, libs, base)
            self._launch(java, libs, base)
            outcome = self._wait_ready(deadline)
            if outcome == "ready":
                _RUNNING.add(self)
                log.info("Kafka broker up at %s (pid %s)", self.bootstrap_servers, self.pid)
                return
            if outcome == "port-clash" and time.monotonic() < deadline:
                log.info("port clash on %s/%s, retrying", self._port, self._controller_port)
                if pinned:
                    time.sleep(0.5)
                continue
            tail = _tail(base / "broker.log")
            self._signal_and_wait(signal.SIGKILL, 10)
            why = "timed out" if outcome == "timeout" else "exited"
            raise KafkaBrokerError(
                f"Kafka broker on 127.0.0.1:{self._port} {why} during start; "
                f"log {base / 'broker.log'}:\n{tail}"
            )

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM the broker's process group, SIGKILL it after ``timeout_s``, clean up."""
        self._signal_and_wait(signal.SIGTERM, timeout_s)
        if self._own_dir and self._base_dir is not None:
            shutil.rmtree(self._base_dir, ignore_errors=True)
            self._base_dir = None
            self._cluster_id = None
            # Nothing is left to come back to: a later start() draws fresh ports.
            self._port = self._requested_port
            self._controller_port = None

    def kill(self) -> None:
        """kill -9 the broker (a crash); data and ports are kept for :meth:`restart`."""
        self._signal_and_wait(signal.SIGKILL, 30)

    def restart(self, timeout_s: float = 90) -> None:
        """Kill the broker if it runs and start it again on the same ports and data."""
        self.kill()
        self.start(timeout_s=timeout_s)

    def detach(self) -> None:
        """Let the broker outlive this object and this interpreter (command-line ``start``)."""
        _RUNNING.discard(self)
        self._proc = None
        self._close_log()

    def __enter__(self) -> KafkaBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- topics ---------------------------------------------------------------------------

    def create_topics(
        self,
        names: Mapping[str, int] | Iterable[str],
        *,
        partitions: int = 1,
        compacted: Iterable[str] = (),
        configs: Mapping[str, Mapping[str, str]] | None = None,
        timeout_s: float = 30,
    ) -> None:
        """Create topics (replication factor 1) and wait until every partition has a leader.

        ``names`` maps topic → partitions, or lists topics that get ``partitions`` each.
        Topics in ``compacted`` get ``cleanup.policy=compact``; ``configs`` adds per-topic
        settings. Topics that already exist are left as they are.
        """
        wanted = dict(names) if isinstance(names, Mapping) else dict.fromkeys(names, partitions)
        compact = set(compacted)
        if compact - set(wanted):
            raise ValueError(f"compacted topics not in names: {sorted(compact - set(wanted))}")
        topic_configs: dict[str, dict[str, str]] = {}
        for name in wanted:
            cfg = dict((configs or {}).get(name, {}))
            if name in compact:
                cfg.setdefault("cleanup.policy", "compact")
            topic_configs[name] = cfg
        bootstrap = self.bootstrap_servers
        _run_coro(lambda: _create_topics(bootstrap, wanted, topic_configs, timeout_s))

    # -- internals ------------------------------------------------------------------------

    def _choose_ports(self, pinned: bool) -> None:
        if pinned and self._port is not None and self._controller_port is not None:
            return
        if self._requested_port is not None:
            self._port = self._requested_port
            if not _port_is_free(self._port):
                raise KafkaBrokerError(f"port {self._port} on 127.0.0.1 is already in use")
            self._controller_port = next(p for p in _free_ports(2) if p != self._port)
            return
        while True:
            self._port, self._controller_port = _free_ports(2)
            if _port_is_free(self._port) and _port_is_free(self._controller_port):
                return

    def _write_config(self, base: Path) -> None:
        port, cport = self._port, self._controller_port
        data = base / "kraft-logs"
        props = {
            "process.roles": "broker,controller",
            "node.id": str(NODE_ID),
            "controller.quorum.voters": f"{NODE_ID}@127.0.0.1:{cport}",
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(data),
            # Topics exist because someone created them: a typo must fail, not make a topic.
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            # Single node: internal topics cannot have more than one replica. Few partitions
            # because each is a coordinator shard to load at start; one node gains nothing.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # A consumer joining an empty group should not wait 3 s for company.
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "log.cleaner.threads": "1",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            # After a kill -9 the restarted broker may only register once the controller has
            # fenced its previous incarnation, i.e. after this session timeout (default 9 s).
            # 3 s keeps restarts quick while leaving headroom for GC pauses on a busy box.
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "500",
        }
        text = "".join(f"{k}={v}\n" for k, v in props.items())
        (base / "server.properties").write_text(text, encoding="utf-8")
        (base / "log4j2.properties").write_text(
            LOG4J2_TEMPLATE.format(level=self.log_level), encoding="utf-8"
        )

    def _jvm_args(self, java: str, libs: Path, base: Path, heap: str) -> list[str]:
        return [
            java,
            f"-Xms{heap}",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={base / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={base}",
            "-cp",
            str(libs / "*"),
        ]

    def _format_storage(self, java: str, libs: Path, base: Path) -> str:
        meta = base / "kraft-logs" / "meta.properties"
        if meta.is_file():  # a data dir kept from an earlier run
            cluster_id = _read_properties(meta).get("cluster.id")
            if cluster_id:
                return cluster_id
        cluster_id = _new_cluster_id()
        # The storage tool is a short JVM run; a small heap starts it faster.
        cmd = self._jvm_args(java, libs, base, "256m") + [
            "kafka.tools.StorageTool", "format",
            "-t", cluster_id,
            "-c", str(base / "server.properties"),
        ]  # fmt: skip
        proc = subprocess.run(  # noqa: S603 - argv built here
            cmd, capture_output=True, text=True, timeout=120, check=False, cwd=base
        )
        with (base / "broker.log").open("a", encoding="utf-8") as fh:
            fh.write(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise KafkaBrokerError(
                f"formatting the KRaft storage failed (exit {proc.returncode}):\n"
                f"{(proc.stdout + proc.stderr).strip()[-4000:]}"
            )
        return cluster_id

    def _launch(self, java: str, libs: Path, base: Path) -> None:
        self._close_log()
        self._log_handle = (base / "broker.log").open("ab")
        cmd = self._jvm_args(java, libs, base, self.heap)
        cmd += ["kafka.Kafka", str(base / "server.properties")]
        # start_new_session: the broker gets its own process group, so stop() can signal
        # exactly it, and a Ctrl-C in the caller's terminal does not hit it.
        self._proc = subprocess.Popen(  # noqa: S603 - argv built here
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            cwd=base,
            start_new_session=True,
        )

    def _wait_ready(self, deadline: float) -> str:
        if self._proc is None or self._port is None:
            return "exited"
        log_path = self._base_dir / "broker.log" if self._base_dir else None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                if log_path is not None and _BIND_FAILURE.search(_tail(log_path, 200)):
                    return "port-clash"
                return "exited"
            if _metadata_probe(self._port, timeout_s=1.0) == self._cluster_id:
                # Still ours: had our JVM died of a clash, someone else answered.
                if self._proc.poll() is None:
                    return "ready"
                continue
            time.sleep(0.1)
        return "timeout"

    def _signal_and_wait(self, sig: signal.Signals, timeout_s: float) -> None:
        proc = self._proc
        if proc is None:
            self._close_log()
            return
        if proc.poll() is None:
            # The pid is our unreaped child, so it cannot have been recycled; its group id
            # equals its pid because it was started in a new session.
            _signal_group(proc.pid, sig)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("Kafka broker pid %s ignored %s; killing it", proc.pid, sig.name)
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        self._proc = None
        _RUNNING.discard(self)
        self._close_log()

    def _close_log(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


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


# -- command line -----------------------------------------------------------------------------


def _process_fingerprint(pid: int) -> str | None:
    """Start time and command line of a live process, to recognise it again later."""
    proc = Path("/proc") / str(pid)
    if proc.is_dir():
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return None
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] == "Z":  # exited, only waiting to be reaped
            return None
        return f"{fields[19]} {cmdline.strip()}"
    ps = shutil.which("ps")
    if ps is None:
        return None
    out = subprocess.run(  # noqa: S603 - fixed argv
        [ps, "-o", "lstart=,command=", "-p", str(pid)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return out.stdout.strip() or None


def _state_paths(state_dir: Path) -> tuple[Path, Path]:
    return state_dir / "broker.pid", state_dir / "broker.json"


def _load_state(state_dir: Path) -> dict[str, Any] | None:
    pid_file, info_file = _state_paths(state_dir)
    if not pid_file.is_file() or not info_file.is_file():
        return None
    try:
        info: dict[str, Any] = json.loads(info_file.read_text(encoding="utf-8"))
        info["pid"] = int(pid_file.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None
    return info


def _alive(info: Mapping[str, Any]) -> bool:
    """Is the recorded broker still the very process we started (not a recycled pid)?"""
    return _process_fingerprint(int(info["pid"])) == info.get("fingerprint")


def _clear_state(state_dir: Path, info: Mapping[str, Any] | None) -> None:
    for path in _state_paths(state_dir):
        path.unlink(missing_ok=True)
    if info and info.get("remove_data_dir") and info.get("data_dir"):
        shutil.rmtree(info["data_dir"], ignore_errors=True)


def _cmd_start(args: argparse.Namespace) -> int:
    state_dir: Path = args.state_dir
    info = _load_state(state_dir)
    if info is not None and _alive(info):
        print(f"already running (pid {info['pid']})", file=sys.stderr)
        print(info["bootstrap_servers"])
        return 0
    _clear_state(state_dir, info)
    state_dir.mkdir(parents=True, exist_ok=True)
    data_dir = args.data_dir
    remove = data_dir is None
    if data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix="data-", dir=state_dir))
    broker = KafkaBroker(
        cache_dir=args.cache_dir, port=args.port, data_dir=data_dir, heap=args.heap
    )
    try:
        broker.start(timeout_s=args.timeout)
    except BaseException:
        if remove:
            shutil.rmtree(data_dir, ignore_errors=True)
        raise
    pid = broker.pid
    if pid is None:
        raise KafkaBrokerError("the broker exited right after starting")
    fingerprint = _process_fingerprint(pid)
    pid_file, info_file = _state_paths(state_dir)
    info_file.write_text(
        json.dumps(
            {
                "bootstrap_servers": broker.bootstrap_servers,
                "data_dir": str(data_dir),
                "remove_data_dir": remove,
                "log_file": str(broker.log_file),
                "fingerprint": fingerprint,
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    pid_file.write_text(f"{pid}\n", encoding="utf-8")
    broker.detach()
    print(f"Kafka {KAFKA_VERSION} running, pid {pid}, log {broker.log_file}", file=sys.stderr)
    print(broker.bootstrap_servers)
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    state_dir: Path = args.state_dir
    info = _load_state(state_dir)
    if info is None:
        print(f"no broker recorded in {state_dir}", file=sys.stderr)
        return 0
    pid = int(info["pid"])
    if _alive(info):
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + args.timeout
        while _alive(info) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(info):
            print(f"pid {pid} ignored SIGTERM; killing it", file=sys.stderr)
            _signal_group(pid, signal.SIGKILL)
            while _alive(info):
                time.sleep(0.1)
        print(f"stopped Kafka broker pid {pid}", file=sys.stderr)
    else:
        print(f"pid {pid} is no longer our broker; clearing the pid file", file=sys.stderr)
    _clear_state(state_dir, info)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    info = _load_state(args.state_dir)
    if info is not None and _alive(info):
        print(info["bootstrap_servers"])
        return 0
    print("not running", file=sys.stderr)
    return 1


def _cmd_fetch(args: argparse.Namespace) -> int:
    print(fetch_jars(args.cache_dir))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``start`` | ``stop`` | ``status`` | ``fetch``; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m llmops_stream.stream.dev.kafka_broker",
        description="A local single-node Apache Kafka broker (KRaft) on 127.0.0.1.",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="jar cache (env LLMOPS_KAFKA_CACHE, default ~/.cache/llmops-stream/kafka)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def with_state(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--state-dir",
            type=Path,
            default=None,
            help="where the pid file and the broker's data live (default CACHE/run)",
        )

    start = sub.add_parser("start", help="start a broker in the background, print its address")
    with_state(start)
    start.add_argument("--port", type=int, default=None, help="listener port (default: free)")
    start.add_argument("--data-dir", type=Path, default=None, help="keep data here across runs")
    start.add_argument("--heap", default="512m", help="JVM heap, e.g. 512m or 2g")
    start.add_argument("--timeout", type=float, default=90, help="seconds to wait for start")
    stop = sub.add_parser("stop", help="stop the broker recorded in the pid file")
    with_state(stop)
    stop.add_argument("--timeout", type=float, default=30, help="seconds before SIGKILL")
    status = sub.add_parser("status", help="print the address if the broker runs")
    with_state(status)
    sub.add_parser("fetch", help="only download the jars into the cache")

    args = parser.parse_args(argv)
    if getattr(args, "state_dir", "unset") is None:
        args.state_dir = (args.cache_dir or default_cache_dir()) / "run"
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "start": _cmd_start,
        "stop": _cmd_stop,
        "status": _cmd_status,
        "fetch": _cmd_fetch,
    }
    try:
        return handlers[args.command](args)
    except KafkaBrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
