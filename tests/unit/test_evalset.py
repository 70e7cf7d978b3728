"""Eval-set files: decoding, grouping, versions, threshold calibration, errors, hot reload."""

import base64
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmops_stream.stream.core import evalset as ev
from llmops_stream.stream.core.errors import ConfigError
from llmops_stream.stream.core.evalset import (
    EvalSetWatcher,
    calibration_rows,
    decode_embedding,
    load_eval_sets,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference_drift import ref_threshold  # noqa: E402


def b64(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


def write_set(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def rows_for(model: str, vectors: np.ndarray, *, as_list: bool = False) -> list[dict[str, Any]]:
    return [
        {
            "id": f"{model}-{i}",
            "embedding": v.tolist() if as_list else b64(v),
            "embedding_model": model,
        }
        for i, v in enumerate(vectors)
    ]


# ----------------------------------------------------------------------- decode_embedding


@settings(deadline=None, max_examples=60)
@given(st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=40))
def test_decode_embedding_round_trips(values: list[float]) -> None:
    vec = np.array(values, dtype=np.float32)
    got = decode_embedding(b64(vec))
    assert got.dtype == np.float32 and np.array_equal(got, vec)
    assert np.array_equal(decode_embedding([float(v) for v in vec]), vec)


@pytest.mark.parametrize(
    "value",
    [
        "not base64!",
        "AAAA" + "A",
        base64.b64encode(b"\x00" * 6).decode(),
        "",
        [],
        ["1.0"],
        [True],
        [[1.0]],
        {"a": 1},
        None,
        3.0,
        [10**400],
    ],
)
def test_decode_embedding_rejects(value: Any) -> None:
    with pytest.raises(ValueError):
        decode_embedding(value)


def test_decode_embedding_is_little_endian_and_writable() -> None:
    raw = np.array([1.5, -2.0], dtype=">f4").astype("<f4").tobytes()
    got = decode_embedding(base64.b64encode(raw).decode())
    assert got.tolist() == [1.5, -2.0]
    got[0] = 0  # a copy, not a read-only view of the bytes


# ----------------------------------------------------------------------- loading


def test_load_groups_by_model_and_normalises(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((6, 8)).astype(np.float32) * 5
    b = rng.standard_normal((4, 8)).astype(np.float32)
    rows = rows_for("model-a", a) + rows_for("model-b", b, as_list=True)
    rows.insert(2, rows.pop())  # interleave models
    path = write_set(tmp_path / "eval.jsonl", rows)
    sets = load_eval_sets(path)
    assert set(sets) == {"model-a", "model-b"}
    sa = sets["model-a"]
    assert sa.ids == [f"model-a-{i}" for i in range(6)]
    assert sa.dim == 8 and sa.size == 6 and sa.vectors.dtype == np.float32
    assert sa.vectors.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(sa.vectors, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(sa.vectors, a / np.linalg.norm(a, axis=1, keepdims=True), atol=1e-6)
    mean = sa.vectors.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(sa.centroid, mean / np.linalg.norm(mean), atol=1e-6)
    assert len(sa.version) == 16 and int(sa.version, 16) >= 0
    assert sets["model-b"].version != sa.version


def test_version_is_per_model_content(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    a = rows_for("a", rng.standard_normal((3, 4)).astype(np.float32))
    b = rows_for("b", rng.standard_normal((3, 4)).astype(np.float32))
    v1 = load_eval_sets(write_set(tmp_path / "1.jsonl", a + b))
    v2 = load_eval_sets(write_set(tmp_path / "2.jsonl", a + b[:2]))
    v3 = load_eval_sets(write_set(tmp_path / "3.jsonl", a + b))
    assert v1["a"].version == v2["a"].version == v3["a"].version
    assert v1["b"].version == v3["b"].version != v2["b"].version


@settings(deadline=None, max_examples=25)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(2, 60),
    st.sampled_from([0.0, 1.0, 5.0, 37.5, 100.0]),
)
def test_threshold_is_loo_percentile(seed: int, m: int, percentile: float) -> None:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((m, 5)).astype(np.float32)
    if m > 3:
        vectors[3] = vectors[1]  # a duplicate: its LOO neighbour has similarity 1
    unit = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    got = ev.calibrate_threshold(np.ascontiguousarray(unit), percentile)
    assert got == pytest.approx(ref_threshold(unit, percentile), abs=2e-6)


def test_threshold_of_large_set_uses_deterministic_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ev, "CALIBRATION_SAMPLE", 40)
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((150, 6)).astype(np.float32)
    path = write_set(tmp_path / "e.jsonl", rows_for("m", vectors))
    es = load_eval_sets(path, percentile=10)["m"]
    rows = calibration_rows(150)
    assert rows.shape == (40,) and np.all(np.diff(rows) > 0)
    assert np.array_equal(rows, calibration_rows(150))
    assert es.threshold == pytest.approx(ref_threshold(es.vectors, 10, rows), abs=2e-6)
    assert load_eval_sets(path, percentile=10)["m"].threshold == es.threshold


def test_threshold_override_and_single_vector(tmp_path: Path) -> None:
    path = write_set(tmp_path / "one.jsonl", rows_for("m", np.ones((1, 3), np.float32)))
    assert load_eval_sets(path, threshold=0.42)["m"].threshold == 0.42
    with pytest.raises(ConfigError, match="explicit threshold"):
        load_eval_sets(path)


def nan_b64() -> str:
    return b64(np.array([1.0, np.nan, 0.0], dtype=np.float32))


@pytest.mark.parametrize(
    ("lines", "needle"),
    [
        ([b'{"id":"a","embedding":[1,0,0],"embedding_model":"m"}', b"{oops"], ":2: bad JSON"),
        ([b'{"id":"a","embedding":"%%%","embedding_model":"m"}'], ":1: bad base64"),
        ([b'{"id":"a","embedding":"AAAAAAAA","embedding_model":"m"}'], ":1: embedding has 6"),
        ([b'{"id":"a","embedding":"' + nan_b64().encode() + b'","embedding_model":"m"}'], ":1: "),
        ([b'{"id":"a","embedding":[1e39,0],"embedding_model":"m"}'], "NaN or infinity"),
        ([b'{"id":"a","embedding":[0,0],"embedding_model":"m"}'], "zero vector"),
        (
            [
                b'{"id":"a","embedding":[1,0],"embedding_model":"m"}',
                b"",
                b'{"id":"b","embedding":[1,0,0],"embedding_model":"m"}',
            ],
            ":3: embedding has dimension 3, line 1 has 2",
        ),
        ([b'{"id":"a","embedding":[1,0]}'], "embedding_model"),
        ([b'{"embedding":[1,0],"embedding_model":"m"}'], '"id"'),
        ([b'{"id":"a","embedding_model":"m"}'], 'missing "embedding"'),
        ([b"[1,2]"], "JSON object"),
        (
            [
                b'{"id":"a","embedding":[1,0],"embedding_model":"m"}',
                b'{"id":"a","embedding":[0,1],"embedding_model":"m"}',
            ],
            ":2: duplicate id",
        ),
        ([b"", b"  "], "no eval items"),
    ],
)
def test_errors_are_one_line_config_errors(tmp_path: Path, lines: list[bytes], needle: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(ConfigError) as info:
        load_eval_sets(path, threshold=0.5)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and needle in message


def test_missing_file_and_bad_parameters(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_eval_sets(tmp_path / "nope.jsonl")
    path = write_set(tmp_path / "ok.jsonl", rows_for("m", np.eye(3, dtype=np.float32)))
    with pytest.raises(ConfigError, match="percentile"):
        load_eval_sets(path, percentile=101)
    with pytest.raises(ConfigError, match="threshold"):
        load_eval_sets(path, threshold=float("nan"))


# ----------------------------------------------------------------------- hot reload


def bump_mtime(path: Path, step_ns: int) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + step_ns))


def test_watcher_reloads_on_content_change_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(9)
    a = rows_for("a", rng.standard_normal((5, 4)).astype(np.float32))
    b = rows_for("b", rng.standard_normal((5, 4)).astype(np.float32))
    path = write_set(tmp_path / "eval.jsonl", a + b)
    watcher = EvalSetWatcher(path, percentile=5.0)
    first = watcher.current
    assert not watcher.maybe_reload()

    bump_mtime(path, 10**9)  # touched, same bytes
    assert not watcher.maybe_reload()
    assert watcher.current is first

    write_set(path, a + b[:4])
    bump_mtime(path, 2 * 10**9)
    assert watcher.maybe_reload()
    assert watcher.current["a"] is first["a"]  # unchanged set kept as is
    assert watcher.current["b"].version != first["b"].version
    assert watcher.current["b"].size == 4
    second = watcher.current

    path.write_bytes(b'{"id": broken\n')
    bump_mtime(path, 3 * 10**9)
    with caplog.at_level(logging.WARNING, logger="llmops_stream.stream.core.evalset"):
        assert not watcher.maybe_reload()
    assert watcher.current is second
    assert any("bad JSON" in r.getMessage() for r in caplog.records)
    assert not watcher.maybe_reload()  # same broken file: not parsed again

    path.unlink()
    assert not watcher.maybe_reload()
    assert watcher.current is second

    write_set(path, a)
    assert watcher.maybe_reload()
    assert set(watcher.current) == {"a"}


def test_watcher_start_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        EvalSetWatcher(tmp_path / "missing.jsonl")
    path = write_set(tmp_path / "e.jsonl", rows_for("m", np.eye(3, dtype=np.float32)))
    with pytest.raises(TypeError):
        EvalSetWatcher(path, percentil=3)
    assert EvalSetWatcher(path, threshold=0.1).current["m"].threshold == 0.1
