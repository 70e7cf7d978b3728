"""A test-only ClickHouse HTTP front over one embedded chDB engine.

chDB serves one process. Tests where several processes must write to one ClickHouse (two
workers sharing a consumer group) start this front in a process of its own and point every
client at ``http://127.0.0.1:PORT``: clickhouse-connect's ordinary HTTP client then speaks
to it unmodified, which also exercises the worker's ``http://`` sink path.

It speaks the part of ClickHouse's HTTP interface that clickhouse-connect uses:

* ``GET /ping`` → ``Ok.``;
* ``GET|POST /`` with the statement in the ``query`` URL parameter, in the body, or split
  between them (the parameter first, then the body, as the server joins them); multipart
  form bodies carry ``query`` and ``param_*`` fields;
* ``param_<name>`` URL parameters bind ``{name:Type}`` placeholders server-side;
* every other URL parameter that is not a transport option (``database``, ``session_id``,
  ``query_id``, ``default_format``, ``client_protocol_version``, ``http_*``, …) is a
  ClickHouse setting for this one statement (``insert_deduplication_token`` among them);
* ``INSERT INTO t [(cols)] FORMAT F`` followed by data (in the body, after the statement or
  as the whole body when the statement is in the URL; ``Content-Encoding`` lz4, zstd, gzip,
  deflate or br) is written to a temporary file and ingested with
  ``INSERT INTO t [(cols)] FROM INFILE 'file' FORMAT F``;
* results come back in the statement's trailing ``FORMAT`` (clickhouse-connect asks for
  Native), else ``default_format``, else TabSeparated, uncompressed, with the headers the
  client reads (``X-ClickHouse-Format``, ``-Timezone``, ``-Query-Id``, ``-Summary``);
  engine errors answer 500 with ``X-ClickHouse-Exception-Code`` and the engine's message.

Requests are served by threads and run on the engine one at a time (a lock): the engine's
session settings and current database are adjusted per request (``SET``/``USE``) and
nothing else can run in between.

``pause()`` makes ClickHouse unreachable: the listening socket is closed and open
connections are cut, so clients see "connection refused" exactly as for a server that is
down; ``resume()`` listens again on the same port.

Run it as a process: ``python tests/chdb_front.py PATH PORT`` (``PORT`` 0 = any free port)
prints ``READY http://127.0.0.1:PORT`` once it serves; SIGUSR1 pauses, SIGUSR2 resumes,
SIGTERM or SIGINT stops it. :class:`FrontProcess` drives that from a test.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import gzip
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

HOST = "127.0.0.1"

# URL parameters the HTTP layer consumes itself; they are never engine settings.
_TRANSPORT_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "user",
        "password",
        "quota_key",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "compress",
        "decompress",
        "buffer_size",
        "wait_end_of_query",
        "client_protocol_version",
        "role",
        "send_progress_in_http_headers",
        "enable_http_compression",
        "cancel_http_readonly_queries_on_client_close",
        "add_http_cors_header",
    }
)
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CODE = re.compile(r"Code:\s*(\d+)")
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
# "INSERT INTO <target> FORMAT <fmt>" and the data after it (one optional newline between)
_INSERT_WITH_DATA = re.compile(
    rb"^\s*(INSERT\s+INTO\s+.+?)\s+FORMAT\s+(\w+)[ \t]*(?:\r?\n)?", re.IGNORECASE | re.DOTALL
)
_LEADING_NOISE = re.compile(r"^(?:\s+|--[^\n]*\n?|/\*.*?\*/|\()*", re.DOTALL)
_RESULT_STATEMENTS = frozenset(
    {
        "SELECT",
        "WITH",
        "SHOW",
        "DESCRIBE",
        "DESC",
        "EXISTS",
        "EXPLAIN",
        "CHECK",
    }
)


class FrontError(Exception):
    """A request the front answers with an error status (code and message as ClickHouse)."""

    def __init__(self, message: str, code: int = 0, status: int = 500) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass
class Statement:
    """One request, parsed: what to run, with which settings, on which database."""

    sql: str
    fmt: str
    params: dict[str, str]
    settings: dict[str, str]
    database: str
    returns_result: bool
    insert_data: bytes | None = None  # set for INSERT ... FORMAT with data to ingest


@dataclass
class Outcome:
    """What the engine produced for one statement."""

    body: bytes
    summary: dict[str, str]


def _sql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _first_keyword(sql: str) -> str:
    rest = _LEADING_NOISE.sub("", sql, count=1)
    match = re.match(r"[A-Za-z]+", rest)
    return match.group(0).upper() if match else ""


def _decompress(body: bytes, encoding: str) -> bytes:
    """The request body without its ``Content-Encoding``."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "lz4":
        import lz4.frame

        return bytes(lz4.frame.decompress(body))
    if encoding == "zstd":
        from clickhouse_connect.driver.compression import _zstd_decompress

        return bytes(_zstd_decompress(body))
    if encoding == "br":
        import brotli

        return bytes(brotli.decompress(body))
    raise FrontError(f"Unknown Content-Encoding {encoding!r}", code=1, status=400)


def _multipart_fields(body: bytes, content_type: str) -> dict[str, str]:
    """Plain fields of a multipart/form-data body (external data tables are refused)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_filename() is not None:
            raise FrontError("external data is not supported by this front", code=48)
        payload = part.get_payload(decode=True)
        fields[str(name)] = payload.decode() if isinstance(payload, bytes) else ""
    return fields


def parse_request(url: str, body: bytes, headers: Any) -> Statement:
    """Turn one HTTP request (URL, decoded body, headers) into a :class:`Statement`."""
    url_params = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    content_type = headers.get("Content-Type") or ""
    if content_type.startswith("multipart/form-data"):
        url_params.update(_multipart_fields(body, content_type))
        body = b""
    params = {k[len("param_") :]: v for k, v in url_params.items() if k.startswith("param_")}
    settings = {
        k: v
        for k, v in url_params.items()
        if not k.startswith(("param_", "http_")) and k not in _TRANSPORT_PARAMS
    }
    for name in settings:
        if not _SETTING_NAME.match(name):
            raise FrontError(f"Bad setting name {name!r}", code=115, status=400)
    query = url_params.get("query", "").encode()
    # ClickHouse reads the statement from the URL parameter, then continues into the body.
    text = query + b"\n" + body if query and body else query or body
    insert_data = None
    match = _INSERT_WITH_DATA.match(text)
    if match:
        sql = match.group(1).decode() + " FORMAT " + match.group(2).decode()
        insert_data = text[match.end() :]
    else:
        try:
            sql = text.decode()
        except UnicodeDecodeError:
            raise FrontError("The query is not valid UTF-8", code=62, status=400) from None
    if not sql.strip():
        raise FrontError("Empty query", code=62, status=400)
    trailing = _TRAILING_FORMAT.search(sql) if insert_data is None else None
    fmt = trailing.group(1) if trailing else url_params.get("default_format") or "TabSeparated"
    return Statement(
        sql=sql,
        fmt=fmt,
        params=params,
        settings=settings,
        database=url_params.get("database") or "default",
        returns_result=insert_data is None and _first_keyword(sql) in _RESULT_STATEMENTS,
        insert_data=insert_data,
    )


class ChdbEngine:
    """One chDB connection; statements run one at a time with their own settings."""

    def __init__(self, path: str | Path) -> None:
        import chdb  # only in the process that serves: chDB opens one path per process

        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._conn: Any = chdb.connect(str(self.path))
        self._lock = threading.Lock()
        self._database = "default"
        self._applied: dict[str, str] = {}  # settings SET on the session, by name
        version, tz = (
            self._raw("SELECT version(), timezone()", "TabSeparated")
            .bytes()
            .decode()
            .strip()
            .split("\t")
        )
        self.version, self.timezone = version, tz

    def _raw(
        self, sql: str, fmt: str = "TabSeparated", params: dict[str, str] | None = None
    ) -> Any:
        try:
            return self._conn.query(sql, fmt, params=params or {})
        except Exception as exc:  # chDB raises its own error type with ClickHouse's text
            text = str(exc)
            code = _CODE.search(text)
            raise FrontError(text, code=int(code.group(1)) if code else 1001) from None

    def _use(self, database: str) -> None:
        if database != self._database:
            self._raw(f"USE `{database.replace('`', '')}`")
            self._database = database

    def _set(self, settings: dict[str, str]) -> None:
        """Make the session's settings exactly ``settings`` (on top of the defaults)."""
        for name in [n for n in self._applied if n not in settings]:
            self._raw(f"SET {name} = DEFAULT")
            del self._applied[name]
        for name, value in settings.items():
            if self._applied.get(name) != value:
                self._raw(f"SET {name} = {_sql_string(value)}")  # on error: unchanged
                self._applied[name] = value

    def execute(self, st: Statement) -> Outcome:
        """Run one statement; raises :class:`FrontError` with the engine's message."""
        tmp: str | None = None
        try:
            sql = st.sql
            if st.insert_data is not None:
                fd, tmp = tempfile.mkstemp(prefix="chdb-front-", suffix=".in")
                with os.fdopen(fd, "wb") as f:
                    f.write(st.insert_data)
                head, fmt = sql.rsplit(" FORMAT ", 1)
                sql = f"{head} FROM INFILE {_sql_string(tmp)} FORMAT {fmt}"
            with self._lock:
                self._use(st.database)
                self._set(st.settings)
                result = self._raw(sql, st.fmt, st.params)
            return Outcome(
                body=result.bytes() if st.returns_result else b"",
                summary=_summary(result, insert=st.insert_data is not None),
            )
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _summary(result: Any, *, insert: bool) -> dict[str, str]:
    """The ``X-ClickHouse-Summary`` of a result (values as strings, as the server sends)."""
    rows, nbytes = int(result.rows_read()), int(result.bytes_read())
    written_rows = int(result.rows_written()) or (rows if insert else 0)
    written_bytes = int(result.bytes_written()) or (nbytes if insert else 0)
    return {
        "read_rows": str(rows),
        "read_bytes": str(nbytes),
        "written_rows": str(written_rows),
        "written_bytes": str(written_bytes),
        "total_rows_to_read": str(rows),
        "result_rows": "0",
        "result_bytes": "0",
        "elapsed_ns": str(int(float(result.elapsed()) * 1e9)),
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clickhouse-connect's pool expects
    timeout = 300
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        return  # quiet: tests read the clients' logs, not ours

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _serve(self) -> None:
        engine = self.server.front.engine
        body = self._read_body()
        path = urlsplit(self.path).path
        if path in ("/ping", "/replicas_status"):
            self._reply(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
            return
        if path != "/" or engine is None:
            self._reply(404, b"There is no handle " + path.encode() + b"\n", {})
            return
        query_id = dict(parse_qsl(urlsplit(self.path).query)).get("query_id") or str(uuid.uuid4())
        headers = {
            "X-ClickHouse-Server-Display-Name": "chdb-front",
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": engine.timezone,
        }
        try:
            decoded = _decompress(body, self.headers.get("Content-Encoding") or "")
            st = parse_request(self.path, decoded, self.headers)
            outcome = engine.execute(st)
        except FrontError as exc:
            headers["X-ClickHouse-Exception-Code"] = str(exc.code)
            headers["Content-Type"] = "text/plain; charset=UTF-8"
            message = f"{exc}".rstrip() + f" (version {engine.version})\n"
            self._reply(exc.status, message.encode(), headers)
            return
        headers["X-ClickHouse-Summary"] = json.dumps(outcome.summary)
        if st.returns_result:
            headers["X-ClickHouse-Format"] = st.fmt
            headers["Content-Type"] = (
                "text/tab-separated-values; charset=UTF-8"
                if st.fmt.startswith(("TabSeparated", "TSV"))
                else "application/octet-stream"
            )
        self._reply(200, outcome.body, headers)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, front: ChdbFront, port: int) -> None:
        self.front = front
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__((front.host, port), _Handler)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.sockets_lock:
                self.open_sockets.discard(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # the client went away, or pause() cut the connection
        super().handle_error(request, client_address)

    def cut_connections(self) -> None:
        with self.sockets_lock:
            sockets = list(self.open_sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class ChdbFront:
    """ClickHouse's HTTP interface over the chDB engine at ``path``, on ``host``:``port``."""

    def __init__(self, path: str | Path, port: int = 0, host: str = HOST) -> None:
        self.path = Path(path)
        self.host = host
        self.port = port
        self.engine: ChdbEngine | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def paused(self) -> bool:
        return self.engine is not None and self._server is None

    def start(self) -> ChdbFront:
        """Open the engine and start serving; returns ``self``."""
        if self.engine is None:
            self.engine = ChdbEngine(self.path)
        self._listen()
        return self

    def _listen(self) -> None:
        self._server = _Server(self, self.port)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="chdb-front",
            daemon=True,
        )
        self._thread.start()

    def pause(self) -> None:
        """Stop listening and cut open connections: clients find ClickHouse unreachable."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.cut_connections()
        if self._thread is not None:
            self._thread.join(10)

    def resume(self) -> None:
        """Listen again on the same port."""
        if self._server is None and self.engine is not None:
            self._listen()

    def stop(self) -> None:
        """Stop serving and close the engine."""
        self.pause()
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def __enter__(self) -> ChdbFront:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def reachable(url: str, timeout_s: float = 1.0) -> bool:
    """Whether something accepts TCP connections at ``url``'s host and port."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s):
            return True
    except OSError:
        return False


class FrontProcess:
    """``python tests/chdb_front.py PATH 0`` as a child process, with the front's controls.

    The child is the only process that opens chDB at ``path``; its output goes to ``log``.
    """

    def __init__(self, path: str | Path, log: str | Path) -> None:
        self.path = Path(path)
        self.log = Path(log)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout_s: float = 60) -> FrontProcess:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), str(self.path), "0"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = re.search(rb"READY (http://\S+)", self.log.read_bytes())
            if match:
                self.url = match.group(1).decode()
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("the chDB front did not start:\n" + self.log.read_text(errors="replace"))

    def _signal(self, sig: int, want_reachable: bool, timeout_s: float) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError("the chDB front is not running")
        self.proc.send_signal(sig)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if reachable(self.url, 0.5) == want_reachable:
                return
            time.sleep(0.05)
        raise RuntimeError(f"the chDB front did not {'resume' if want_reachable else 'pause'}")

    def pause(self, timeout_s: float = 10) -> None:
        """Make ClickHouse unreachable (returns once connections are refused)."""
        self._signal(signal.SIGUSR1, False, timeout_s)

    def resume(self, timeout_s: float = 10) -> None:
        """Serve again (returns once connections are accepted)."""
        self._signal(signal.SIGUSR2, True, timeout_s)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)

    def __enter__(self) -> FrontProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    """``chdb_front.py PATH PORT``: serve until SIGTERM/SIGINT; SIGUSR1 pauses, SIGUSR2 resumes."""
    if len(argv) != 2 or not argv[1].isdigit():
        sys.stderr.write("usage: chdb_front.py PATH PORT (0 = any free port)\n")
        return 2
    signals = {signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT}
    # Blocked before any thread starts, so every thread inherits the mask and only
    # sigwait below receives them.
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    front = ChdbFront(argv[0], int(argv[1])).start()
    print(f"READY {front.url}", flush=True)
    try:
        while True:
            sig = signal.sigwait(signals)
            if sig == signal.SIGUSR1:
                front.pause()
                print("PAUSED", flush=True)
            elif sig == signal.SIGUSR2:
                front.resume()
                print("RESUMED", flush=True)
            else:
                return 0
    finally:
        front.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
