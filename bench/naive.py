"""A straightforward per-event Python implementation of the engine's logic.

It is the baseline (b) of SPEC §6: what one would write first — ``orjson.loads`` per event,
dicts, a deque per budget, ``numpy`` per embedding — doing the same work as the engine
(validate, dedup, price, budgets, drift, freshness, per-minute aggregation). Used only by
the benchmarks.
"""

from __future__ import annotations

import base64
from collections import deque
from datetime import datetime
from typing import Any

import numpy as np
import orjson

from llmops_stream.stream.core.budgets import BudgetConfig
from llmops_stream.stream.core.evalset import EvalSet
from llmops_stream.stream.core.pricing import PriceSchedule, PriceTable, cost_formula

_WINDOW_MS = {"1h": 3_600_000, "24h": 86_400_000, "7d": 7 * 86_400_000, "30d": 30 * 86_400_000}


def _ms(v: Any) -> int:
    if isinstance(v, int):
        return v
    return int(datetime.fromisoformat(v).timestamp() * 1000)


class NaiveProcessor:
    """Per-event processor; ``process(messages)`` returns the number of valid events."""

    def __init__(
        self, prices: PriceTable, budgets: BudgetConfig, eval_set: EvalSet | None = None
    ) -> None:
        self.prices = prices
        self.price_cache: dict[tuple[str, str], PriceSchedule | None] = {}
        self.budgets = budgets
        self.eval_set = eval_set
        self.seen: set[tuple[str, str]] = set()
        self.spend: dict[tuple[str, int], list[Any]] = {}
        self.usage: dict[tuple[Any, ...], list[float]] = {}
        self.rejected = 0
        self.alerts = 0

    def process(self, messages: list[bytes]) -> int:
        valid = 0
        for m in messages:
            try:
                e = orjson.loads(m)
                usage = e["usage"]
                tenant, event_id, model = e["tenant_id"], e["event_id"], e["model"]
                inp, out = int(usage["input_tokens"]), int(usage["output_tokens"])
                cr, cw = usage.get("cache_read_tokens") or 0, usage.get("cache_write_tokens") or 0
                cw1h, rs = (
                    usage.get("cache_write_1h_tokens") or 0,
                    usage.get("reasoning_tokens") or 0,
                )
                ts = _ms(e["ts"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                self.rejected += 1
                continue
            if inp < 0 or out < 0 or cr + cw > inp:
                self.rejected += 1
                continue
            if (tenant, event_id) in self.seen:
                continue
            self.seen.add((tenant, event_id))
            valid += 1
            key = (model, e.get("provider") or "")
            if key not in self.price_cache:
                self.price_cache[key] = self.prices.schedule(*key)
            schedule = self.price_cache[key]
            p = schedule.price_at(ts) if schedule is not None else None  # as of the event
            cost = 0.0
            if p is not None and e.get("status") != "cache_hit":
                cost = cost_formula(
                    p, inp, out, cr, cw, cache_write_1h_tokens=cw1h, reasoning_tokens=rs
                )
            self._budget(tenant, ts, cost)
            uncovered = scored = 0
            if self.eval_set is not None and e.get("embedding"):
                v = np.frombuffer(base64.b64decode(e["embedding"]), dtype="<f4")
                v = v / np.linalg.norm(v)
                sims = self.eval_set.vectors @ v
                scored = 1
                uncovered = int(sims.max() < self.eval_set.threshold)
            stale = 0
            retrieval = e.get("retrieval") or {}
            for c in retrieval.get("chunks") or ():
                emb = _ms(c["embedded_at"])
                src = c.get("source_updated_at")
                if (src is not None and _ms(src) > emb) or ts - emb > 30 * 86_400_000:
                    stale = 1
            k = (
                ts // 60_000,
                tenant,
                e.get("app"),
                model,
                e.get("prompt_version"),
                retrieval.get("index_version"),
            )
            acc = self.usage.setdefault(k, [0, 0, 0, 0, 0.0, 0, 0, 0])
            acc[0] += 1
            acc[1] += inp
            acc[2] += out
            acc[3] += cr
            acc[4] += cost
            acc[5] += scored
            acc[6] += uncovered
            acc[7] += stale
        return valid

    def _budget(self, tenant: str, ts: int, cost: float) -> None:
        for i, rule in enumerate(self.budgets.rules_for(tenant)):
            state = self.spend.setdefault((tenant, i), [0.0, deque(), set()])
            width = _WINDOW_MS.get(rule.window, 86_400_000)
            state[1].append((ts, cost))
            state[0] += cost
            while state[1] and state[1][0][0] <= ts - width:
                state[0] -= state[1].popleft()[1]
            for level in [*rule.soft, rule.hard]:
                if state[0] >= level * rule.limit_usd and level not in state[2]:
                    state[2].add(level)
                    self.alerts += 1
