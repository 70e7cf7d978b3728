"""Slow per-event reference for ``ServedModels``: one call at a time, plain dicts, the rule
of ``stream/core/model_changes.py`` as written in its docstring. Returns what it would
alert as tuples, so tests compare behaviour rather than objects."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple


class Call(NamedTuple):
    tenant: str
    provider: str
    model: str
    served: str
    ts: int
    clock: int


class Emitted(NamedTuple):
    """(status, tenant, provider, model, old, new, first_ms, emitted clock)."""

    status: str
    tenant: str
    provider: str
    model: str
    old: str
    new: str
    first_ms: int
    clock: int


def reference_alerts(
    calls: Iterable[Call], *, min_calls: int, settle_ms: int, final_clock: int | None = None
) -> list[Emitted]:
    """Every firing/resolved the rule gives for ``calls`` in order; ``final_clock`` (if
    given) lets the clock run to that time at the end, resolving settled episodes. (The
    engine also settles between batches; compare with it under a ``settle_ms`` no episode
    reaches before the end.)"""
    current: dict[tuple[str, str], str] = {}
    # challengers: pair -> served -> [first_ms, calls, current_calls, {tenant: first}]
    challengers: dict[tuple[str, str], dict[str, list]] = {}
    # open episode: pair -> (old, new, first_ms, takeover_clock, [tenants in alert order])
    episodes: dict[tuple[str, str], tuple[str, str, int, int, list[str]]] = {}
    out: list[Emitted] = []
    provider_of: dict[str, str] = {}  # model -> last provider sent with it

    def settle(now: int) -> None:
        for pair, (old, new, first, clock, tenants) in list(episodes.items()):
            if now >= clock + settle_ms:
                out.extend(
                    Emitted("resolved", t, *pair, old, new, first, clock + settle_ms)
                    for t in tenants
                )
                del episodes[pair]

    for call in calls:
        if not call.served:
            continue
        if call.provider:
            provider_of[call.model] = call.provider
        pair = (provider_of.get(call.model, ""), call.model)
        if pair not in current:
            current[pair] = call.served
            challengers[pair] = {}
        chs = challengers[pair]
        if call.served == current[pair]:
            for ch in chs.values():
                ch[2] += 1
            ep = episodes.get(pair)
            if ep is not None and call.tenant not in ep[4]:
                ep[4].append(call.tenant)
                out.append(Emitted("firing", call.tenant, *pair, ep[0], ep[1], ep[2], ep[3]))
            continue
        ch = chs.setdefault(call.served, [call.ts, 0, 0, {}])
        ch[1] += 1
        ch[3].setdefault(call.tenant, call.ts)
        new, old = ch[1], ch[2]
        if new >= min_calls and new - old > 0 and new - old >= 3.0 * math.sqrt(new + old):
            if pair in episodes:
                old, new, first, _, tenants = episodes.pop(pair)
                out.extend(
                    Emitted("resolved", t, *pair, old, new, first, call.clock) for t in tenants
                )
            episodes[pair] = (current[pair], call.served, ch[0], call.clock, list(ch[3]))
            out.extend(
                Emitted("firing", t, *pair, current[pair], call.served, ch[0], call.clock)
                for t in ch[3]
            )
            current[pair] = call.served
            challengers[pair] = {}
    if final_clock is not None:
        settle(final_clock)
    return out
