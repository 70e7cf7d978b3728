"""How the test-only ClickHouse HTTP front reads requests (no engine, no server needed).

The front itself is exercised end to end, with clickhouse-connect, in
``tests/integration/test_chdb_front.py``; here only its request parsing: where the
statement, the insert data, the settings and the bind parameters come from.
"""

from __future__ import annotations

import gzip

import pytest
from chdb_front import FrontError, _decompress, parse_request


def test_insert_statement_in_the_url_data_in_the_body() -> None:
    st = parse_request(
        "/?query=INSERT+INTO+db.t+%28a%29+FORMAT+Arrow&database=db"
        "&insert_deduplication_token=k&session_id=s&param_x=1",
        b"ARROW1\x00\n",
        {},
    )
    assert (st.sql, st.insert_data) == ("INSERT INTO db.t (a) FORMAT Arrow", b"ARROW1\x00\n")
    assert st.settings == {"insert_deduplication_token": "k"}  # session_id is transport
    assert st.params == {"x": "1"}
    assert st.database == "db" and not st.returns_result


def test_insert_statement_and_data_in_the_body() -> None:
    st = parse_request("/?default_format=JSON", b"INSERT INTO t FORMAT Native\n\x01\n\x02", {})
    assert (st.sql, st.insert_data) == ("INSERT INTO t FORMAT Native", b"\x01\n\x02")
    assert st.database == "default"


def test_result_format_comes_from_the_statement_then_default_format() -> None:
    st = parse_request(
        "/?enable_http_compression=1&http_headers_progress_interval_ms=9",
        b"  -- note\n(SELECT 1)\n FORMAT Native",
        {},
    )
    assert (st.fmt, st.returns_result, st.settings) == ("Native", True, {})
    st = parse_request("/?default_format=JSONEachRow&query=SELECT+1", b"", {})
    assert st.fmt == "JSONEachRow" and st.returns_result
    st = parse_request("/?query=SELECT+1", b"", {})
    assert st.fmt == "TabSeparated"


def test_statements_without_result_and_inline_values() -> None:
    st = parse_request("/?query=CREATE+TABLE+t+%28a+UInt8%29+ENGINE%3DLog", b"", {})
    assert st.insert_data is None and not st.returns_result
    st = parse_request("/", b"INSERT INTO t VALUES (1), (2)", {})
    assert st.insert_data is None and st.sql == "INSERT INTO t VALUES (1), (2)"


def test_multipart_form_fields_carry_query_and_parameters() -> None:
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="query"\r\n\r\n'
        "SELECT {s:String}\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="param_s"\r\n\r\n'
        "it's\r\n"
        f"--{boundary}--\r\n"
    ).encode()
    st = parse_request(
        "/?max_threads=2", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert (st.sql, st.params, st.settings) == (
        "SELECT {s:String}",
        {"s": "it's"},
        {"max_threads": "2"},
    )


def test_bad_requests_are_refused() -> None:
    with pytest.raises(FrontError):
        parse_request("/", b"", {})
    with pytest.raises(FrontError):
        parse_request("/?bad-name=1&query=SELECT+1", b"", {})
    with pytest.raises(FrontError):
        _decompress(b"x", "snappy")
    assert _decompress(gzip.compress(b"data"), "gzip") == b"data"
