"""A real single-node Apache Kafka broker (KRaft, combined broker + controller) on 127.0.0.1.

Tests, benchmarks and a local try of llmops-stream run against a genuine Kafka broker, not
a mock. :class:`KafkaBroker` fetches the broker's jars from Maven Central with
``mvn dependency:copy-dependencies`` (once; they are cached between runs), formats a KRaft
log directory, starts ``kafka.Kafka`` with Java in its own process group and waits until
the broker answers a Metadata request carrying the cluster id it was formatted with.

This module holds the broker's lifecycle and the command line; its steps live next to it in
``kafka_fetch.py`` (jars), ``kafka_config.py`` (KRaft config, storage, Java),
``kafka_admin.py`` (readiness probe, topics) and ``kafka_process.py`` (ports, pid file).

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
import atexit
import contextlib
import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from .kafka_admin import _create_topics, _metadata_probe, _run_coro
from .kafka_config import _find_java, format_storage, jvm_args, write_config
from .kafka_fetch import (
    KAFKA_VERSION,
    LOG4J_VERSION,
    POM_TEMPLATE,
    KafkaBrokerError,
    default_cache_dir,
    fetch_jars,
)
from .kafka_process import (
    _alive,
    _clear_state,
    _free_ports,
    _load_state,
    _port_is_free,
    _process_fingerprint,
    _signal_group,
    _state_paths,
    _tail,
)

__all__ = [
    "KAFKA_VERSION",
    "LOG4J_VERSION",
    "POM_TEMPLATE",
    "KafkaBroker",
    "KafkaBrokerError",
    "default_cache_dir",
    "fetch_jars",
    "main",
]

log = logging.getLogger(__name__)

_BIND_FAILURE = re.compile(r"BindException|Address already in use")


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
        write_config(base, self._port, self._controller_port, self.log_level)

    def _jvm_args(self, java: str, libs: Path, base: Path, heap: str) -> list[str]:
        return jvm_args(java, libs, base, heap)

    def _format_storage(self, java: str, libs: Path, base: Path) -> str:
        return format_storage(java, libs, base)

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


# -- command line -----------------------------------------------------------------------------


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
