"""How the local Kafka broker is configured and launched: KRaft config, storage, Java.

Job
---
:func:`write_config` writes ``server.properties`` for a single node that is broker and
controller at once on 127.0.0.1, plus its ``log4j2.properties``; :func:`format_storage`
formats the KRaft log directory with a cluster id; :func:`jvm_args` builds the Java command
line and :func:`_find_java` finds a Java recent enough for the broker.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

from .kafka_fetch import KAFKA_VERSION, KafkaBrokerError

__all__ = ["NODE_ID", "format_storage", "jvm_args", "write_config"]

NODE_ID = 1
MIN_JAVA_MAJOR = 17

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


def write_config(base: Path, port: int | None, cport: int | None, log_level: str) -> None:
    """``server.properties`` (broker + controller on 127.0.0.1, listener ``port``,
    controller ``cport``) and ``log4j2.properties`` (at ``log_level``) into ``base``."""
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
        LOG4J2_TEMPLATE.format(level=log_level), encoding="utf-8"
    )


def jvm_args(java: str, libs: Path, base: Path, heap: str) -> list[str]:
    """``java`` and its options, up to the main class, for the broker and its tools."""
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


def format_storage(java: str, libs: Path, base: Path) -> str:
    """Format the KRaft log directory under ``base`` (kept if already formatted); return
    its cluster id. The storage tool's output is appended to ``base/broker.log``."""
    meta = base / "kraft-logs" / "meta.properties"
    if meta.is_file():  # a data dir kept from an earlier run
        cluster_id = _read_properties(meta).get("cluster.id")
        if cluster_id:
            return cluster_id
    cluster_id = _new_cluster_id()
    # The storage tool is a short JVM run; a small heap starts it faster.
    cmd = jvm_args(java, libs, base, "256m") + [
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
