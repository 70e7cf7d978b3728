"""Every numba kernel, run once as plain Python (NUMBA_DISABLE_JIT=1), gives the compiled
results: the whole engine over a fixed workload is compared column by column."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from engine_fingerprint import fingerprint


def test_engine_without_jit_equals_compiled(tmp_path: Path) -> None:
    compiled = fingerprint()
    out = tmp_path / "nojit.npz"
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    script = Path(__file__).resolve().parents[1] / "engine_fingerprint.py"
    run = subprocess.run(
        [sys.executable, str(script), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    plain = dict(np.load(out))
    assert plain.keys() == compiled.keys()
    assert len(compiled["calls.event_id"]) > 500 and len(compiled["alerts"]) > 0
    for name, value in compiled.items():
        np.testing.assert_array_equal(plain[name], value, err_msg=name)


_SCAN_SCRIPT = """
import sys
import numpy as np
from llmops_stream.stream.core.json_scan import scan_calls
from llmops_stream.stream.core.span_codes import span_labels, span_strs
from llmops_stream.stream.dev.synth import SynthConfig, generate_bad_events, generate_events

msgs = list(generate_events(SynthConfig(n_events=60, seed=4, embedding_share=0.5)))
msgs += [raw for raw, _ in generate_bad_events(seed=4)][:25]
msgs += [m[:-1] + b',"x":[{"a":"\\\\u00e9\\\\n"},-1.5e3,true,null]}' for m in msgs[:5]]
offsets = np.zeros(len(msgs) + 1, dtype=np.int64)
np.cumsum([len(m) for m in msgs], out=offsets[1:])
data = b"".join(msgs)
buf = np.frombuffer(data, dtype=np.uint8)
s = scan_calls(buf, offsets, 1 << 20)
rows = np.flatnonzero(s.ok)
out = {"ok": s.ok, "ints": s.ints[:, rows], "floats": s.floats[:, rows],
       "starts": s.starts[:, rows], "ends": s.ends[:, rows],
       "emb": s.chunk_embedded_at_ms, "src": s.chunk_source_updated_at_ms,
       "ids": span_strs(buf, s.starts[0, rows], s.ends[0, rows]).astype(str)}
for k, (codes, values) in enumerate(span_labels(data, buf, s.starts[1:11], s.ends[1:11], rows)):
    out[f"codes{k}"] = codes
    out[f"values{k}"] = values.astype(str)
np.savez(sys.argv[1], **out)
"""


def test_decode_scanner_without_jit_equals_compiled(tmp_path: Path) -> None:
    results = []
    for flag in ("0", "1"):
        out = tmp_path / f"scan{flag}.npz"
        run = subprocess.run(
            [sys.executable, "-c", _SCAN_SCRIPT, str(out)],
            env={**os.environ, "NUMBA_DISABLE_JIT": flag},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        results.append(dict(np.load(out)))
    compiled, plain = results
    assert compiled.keys() == plain.keys()
    assert compiled["ok"].sum() >= 60 and not compiled["ok"].all()
    for name, value in compiled.items():
        np.testing.assert_array_equal(plain[name], value, err_msg=name)
