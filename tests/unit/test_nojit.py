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
