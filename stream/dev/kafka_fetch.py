"""The Apache Kafka broker's jars: fetched once from Maven Central, kept in a local cache.

Job
---
:func:`fetch_jars` runs ``mvn dependency:copy-dependencies`` on the repository's
``kafka/pom.xml`` (or, outside a source checkout, on :data:`POM_TEMPLATE`) and leaves the
jars in ``<cache>/<version>/libs``; :func:`default_cache_dir` says where the cache is.
:class:`KafkaBrokerError` is the error of every step of running a local broker.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = [
    "KAFKA_VERSION",
    "LOG4J_VERSION",
    "POM_TEMPLATE",
    "KafkaBrokerError",
    "default_cache_dir",
    "fetch_jars",
    "repo_pom",
]

log = logging.getLogger(__name__)

# Keep in step with kafka/pom.xml (tests/unit/test_deploy_files.py checks it); the pom there
# explains the choice of version.
KAFKA_VERSION = "4.2.2"
LOG4J_VERSION = "2.25.4"

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

_POM_VERSION = re.compile(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>")


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
