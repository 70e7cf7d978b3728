"""Per-tenant totals computed from raw events by a plain reading of SPEC §3.

Independent of the engine (stdlib JSON, per-event Python), used by integration tests to
check what the engine wrote to ClickHouse.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from llmops_stream.stream.core.pricing import PriceTable

MAX_AGE_MS = 30 * 86_400_000
FIELDS = (
    "calls",
    "cost_usd",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "scored_calls",
    "uncovered_calls",
    "retrieval_calls",
    "stale_calls",
    "rejected",
)


def ms(v: Any) -> int:
    if isinstance(v, int):
        return v
    dt = datetime.fromisoformat(v)
    return int(dt.timestamp()) * 1000 + dt.microsecond // 1000


def expected_totals(
    lines: list[bytes], eval_path: Path | None = None, model: str = "", threshold: float = 0.0
) -> dict[str, dict[str, Any]]:
    """Per-tenant totals of valid ``lines`` (retries counted once); scoring against the
    eval set at ``eval_path`` for embeddings of ``model`` with ``threshold``."""
    mat = np.zeros((0, 1))
    if eval_path is not None:
        ev = [json.loads(x) for x in eval_path.read_text().splitlines()]
        mat = np.array([np.frombuffer(base64.b64decode(e["embedding"]), "<f4") for e in ev], float)
        mat /= np.linalg.norm(mat, axis=1, keepdims=True)
    prices = PriceTable()
    seen: set[tuple[str, str]] = set()
    out: dict[str, dict[str, Any]] = {}
    for raw in lines:
        e = json.loads(raw)
        key = (e["tenant_id"], e["event_id"])
        if key in seen:
            continue
        seen.add(key)
        t = out.setdefault(e["tenant_id"], dict.fromkeys(FIELDS, 0))
        u = e["usage"]
        inp, outp = u["input_tokens"], u["output_tokens"]
        cr, cw = u.get("cache_read_tokens") or 0, u.get("cache_write_tokens") or 0
        cw1h, rs = u.get("cache_write_1h_tokens") or 0, u.get("reasoning_tokens") or 0
        # the price in force at the call's own time (SPEC §3), not today's
        p = prices.resolve(e["model"], e.get("provider") or "", at=ms(e["ts"]))
        if p is not None and e.get("status") != "cache_hit":
            r = p.all_rates_for(inp)
            t["cost_usd"] += (
                (inp - cr - cw) * r.input
                + cr * r.cache_read
                + (cw - cw1h) * r.cache_write
                + cw1h * r.cache_write_1h
                + (outp - rs) * r.output
                + rs * r.reasoning
            ) / 1e6
        t["calls"] += 1
        t["input_tokens"] += inp
        t["output_tokens"] += outp
        t["cache_read_tokens"] += cr
        t["cache_write_tokens"] += cw
        if eval_path is not None and e.get("embedding") and e.get("embedding_model") == model:
            v = e["embedding"]
            vec = (
                np.frombuffer(base64.b64decode(v), "<f4")
                if isinstance(v, str)
                else np.array(v, "<f4")
            ).astype(float)
            t["scored_calls"] += 1
            t["uncovered_calls"] += int((mat @ (vec / np.linalg.norm(vec))).max() < threshold)
        chunks = (e.get("retrieval") or {}).get("chunks") or []
        if chunks:
            t["retrieval_calls"] += 1
            ts = ms(e["ts"])
            t["stale_calls"] += int(
                any(
                    (
                        c.get("source_updated_at") is not None
                        and ms(c["source_updated_at"]) > ms(c["embedded_at"])
                    )
                    or ts - ms(c["embedded_at"]) > MAX_AGE_MS
                    for c in chunks
                )
            )
    return out
