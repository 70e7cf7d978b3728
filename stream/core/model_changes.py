"""Upstream model changes: which model actually answers a requested model, and when it changes.

Job
---
A provider may serve a requested alias (``gpt-4o``) with one dated snapshot for weeks, then
silently switch to another. Nobody on the app's side changed anything, yet the behaviour
did. For every (provider, requested model) seen by one engine, :class:`ServedModels` keeps
the served model in production (the event's ``served_model``) and raises an alert of type
``model`` when another one **takes over** — one per tenant that was served the new model.

Rule (exact, sequential in arrival order, the same whatever the batch boundaries):

* The first served model seen for a (provider, model) is its baseline: no alert.
* Any other served model is a *challenger*; it counts its calls from its first appearance,
  and so does the current model over the same span.
* A challenger **takes over** once it has at least ``min_calls`` calls and a clear majority
  over the current model since the challenger first appeared: ahead by at least
  :data:`MARGIN_SIGMAS` standard deviations of a fair coin (``new − old >= 3·sqrt(new +
  old)``). So a canary or a stray answer does not alert, a full switch alerts after
  ``min_calls`` calls, a partial rollout (say 60 % new) alerts once the evidence is clear
  (a few hundred calls), and the 40 % left on the old model does not take back over by
  chance. The other challengers are dropped; the old model, if it comes back, is a
  challenger again (a rollback is a change too).
* Events without ``provider`` count under the provider last seen with the same requested
  model (apps that send it on some calls only are one population, not two).
* At a takeover, every tenant that was served the challenger gets one ``firing`` alert;
  a tenant first served the new model later in the same episode gets its own then.
* The episode ends (each of its alerts ``resolved``, same ``alert_id``) when the new model
  has been in production for ``settle_ms`` of stream-clock time — it is the baseline now —
  or when yet another model takes over first.

``alert_id`` is built from (tenant, provider, model, old, new, first time the new model was
seen), so a redo after a crash gives the same ids. Events without ``served_model`` are
ignored. Work per batch is vectorised for the usual case (every call served by the current
model and no open episode); only (provider, model) pairs with another served model in the
batch are walked event by event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .alerts import FIRING, RESOLVED, Alert, make_alert

__all__ = ["ServedModels"]

MARGIN_SIGMAS = 3.0
"""How far ahead of the current model a challenger must be, in standard deviations of a
fair coin over the calls since it first appeared."""

MAX_CHALLENGERS = 16
"""Challengers kept per (provider, model); beyond it the one seen least is dropped (a
provider answering with dozens of ids at once is not one model being replaced)."""


@dataclass
class _Challenger:
    first_ms: int  # event time of its first call
    calls: int = 0  # its calls since first_ms
    current_calls: int = 0  # the current model's calls since first_ms
    tenants: dict[str, int] = field(default_factory=dict)  # tenant -> first event time


@dataclass
class _Episode:
    """An open change: alerts fired for ``tenants``, resolved together when it ends."""

    old: str
    new: str
    first_ms: int  # first event time of the new model
    takeover_ms: int  # event time of the call that made it take over
    takeover_clock: int  # stream clock then; the episode ends settle_ms later
    share: float  # the new model's share of calls since first_ms, at the takeover
    tenants: dict[str, int] = field(default_factory=dict)  # alerted tenant -> its first time


@dataclass
class _Pair:
    """State of one (provider, requested model)."""

    current: str
    challengers: dict[str, _Challenger] = field(default_factory=dict)
    episode: _Episode | None = None


class ServedModels:
    """Served model per (provider, requested model) and its changes (see module doc).

    ``min_calls``: calls a new served model needs before it can take over (>= 1).
    ``settle_ms``: stream-clock time after a takeover when its alerts resolve.
    """

    def __init__(self, *, min_calls: int = 20, settle_ms: int = 24 * 3_600_000) -> None:
        if min_calls < 1:
            raise ValueError("min_calls must be >= 1")
        if settle_ms <= 0:
            raise ValueError("settle_ms must be > 0")
        self.min_calls = int(min_calls)
        self.settle_ms = int(settle_ms)
        self._pairs: dict[tuple[str, str], _Pair] = {}
        self._provider_of: dict[str, str] = {}  # requested model -> last provider seen

    # ------------------------------------------------------------------ batches
    def add(  # noqa: PLR0917 - the columns of a batch
        self,
        tenant_id: np.ndarray,
        provider: np.ndarray,
        model: np.ndarray,
        served_model: np.ndarray,
        ts_ms: np.ndarray,
        clock_at: np.ndarray,
    ) -> list[Alert]:
        """Take a batch in arrival order; returns the ``firing`` alerts it caused.

        ``tenant_id``/``provider``/``model``/``served_model``: object[n] of str (``""`` when
        absent); ``ts_ms``: int64[n] event time; ``clock_at``: int64[n] stream clock at each
        event (:meth:`.clock.StreamClock.advance`).
        """
        rows = np.flatnonzero(served_model != "")
        if rows.size == 0:
            return []
        provider = self._fill_providers(provider[rows], model[rows])
        p_codes, p_labels = pd.factorize(provider)
        m_codes, m_labels = pd.factorize(model[rows])
        pair_code = p_codes.astype(np.int64) * len(m_labels) + m_codes
        alerts: list[Alert] = []
        order = np.argsort(pair_code, kind="stable")  # arrival order kept within a pair
        bounds = np.flatnonzero(np.diff(pair_code[order])) + 1
        for group in np.split(order, bounds):
            code = int(pair_code[group[0]])
            key = (str(p_labels[code // len(m_labels)]), str(m_labels[code % len(m_labels)]))
            idx = rows[group]
            served = served_model[idx]
            pair = self._pairs.get(key)
            if pair is None:
                pair = self._pairs[key] = _Pair(current=str(served[0]))
            if not pair.challengers and bool((served == pair.current).all()):
                alerts += self._same_model(key, pair, tenant_id[idx], ts_ms[idx])
            else:
                for i in idx.tolist():
                    alerts += self._one(
                        key, pair, str(tenant_id[i]), str(served_model[i]),
                        int(ts_ms[i]), int(clock_at[i]),
                    )  # fmt: skip
        return alerts

    def advance(self, now_ms: int) -> list[Alert]:
        """Resolve the episodes whose new model has been in production for ``settle_ms``
        by stream-clock time ``now_ms``."""
        alerts: list[Alert] = []
        for key, pair in self._pairs.items():
            ep = pair.episode
            if ep is not None and now_ms >= ep.takeover_clock + self.settle_ms:
                alerts += self._resolve(key, ep, ep.takeover_clock + self.settle_ms)
                pair.episode = None
        return alerts

    def _fill_providers(self, provider: np.ndarray, model: np.ndarray) -> np.ndarray:
        """``provider`` (object[k]) with each ``""`` replaced by the provider last seen with
        the same model, in arrival order (before this batch: the remembered one)."""
        known = provider != ""
        if not known.all():
            # rows grouped by model, arrival order kept within a group (stable sort); a
            # running maximum of the known rows' sorted positions then points every row at
            # the last known row before it, which counts only if it is in the same group
            m_codes, m_labels = pd.factorize(model, sort=False)
            order = np.argsort(m_codes, kind="stable")
            sorted_codes = m_codes[order]
            pos = np.arange(len(order))
            group_start = np.zeros(len(order), dtype=np.int64)
            starts = np.flatnonzero(np.diff(sorted_codes)) + 1
            group_start[starts] = starts
            np.maximum.accumulate(group_start, out=group_start)
            last = np.maximum.accumulate(np.where(known[order], pos, -1))
            found = last >= group_start
            remembered = np.array(
                [self._provider_of.get(m, "") for m in m_labels.tolist()], dtype=object
            )
            filled_sorted = np.where(
                found, provider[order][np.maximum(last, 0)], remembered[sorted_codes]
            )
            out = np.empty(len(order), dtype=object)
            out[order] = filled_sorted
        else:
            out = provider
        # later rows overwrite earlier ones: the last provider seen per model is kept
        self._provider_of.update(zip(model[known].tolist(), provider[known].tolist(), strict=True))
        return out

    # ------------------------------------------------------------------ per event
    def _same_model(
        self, key: tuple[str, str], pair: _Pair, tenants: np.ndarray, ts: np.ndarray
    ) -> list[Alert]:
        """A pair's calls all served by its current model: only new tenants of an open
        episode need anything."""
        ep = pair.episode
        if ep is None:
            return []
        alerts = []
        codes, labels = pd.factorize(tenants)
        first_rows = np.unique(codes, return_index=True)[1]  # first call of each tenant
        for row in np.sort(first_rows).tolist():
            tenant = str(labels[codes[row]])
            if tenant not in ep.tenants:
                ep.tenants[tenant] = int(ts[row])
                alerts.append(self._alert(key, ep, tenant, FIRING, ep.takeover_clock))
        return alerts

    def _one(  # noqa: PLR0917
        self, key: tuple[str, str], pair: _Pair, tenant: str, served: str, ts: int, clock: int
    ) -> list[Alert]:
        """One call, in arrival order."""
        if served == pair.current:
            for ch in pair.challengers.values():
                ch.current_calls += 1
            ep = pair.episode
            if ep is not None and tenant not in ep.tenants:
                ep.tenants[tenant] = ts
                return [self._alert(key, ep, tenant, FIRING, ep.takeover_clock)]
            return []
        if served not in pair.challengers:
            if len(pair.challengers) >= MAX_CHALLENGERS:
                least = min(pair.challengers, key=lambda s: pair.challengers[s].calls)
                del pair.challengers[least]
            pair.challengers[served] = _Challenger(first_ms=ts)
        ch = pair.challengers[served]
        ch.calls += 1
        ch.tenants.setdefault(tenant, ts)
        lead = ch.calls - ch.current_calls
        if (
            ch.calls < self.min_calls
            or lead * lead < (MARGIN_SIGMAS**2) * (ch.calls + ch.current_calls)
            or lead <= 0
        ):
            return []
        # Takeover: the challenger is the served model now.
        alerts: list[Alert] = []
        if pair.episode is not None:  # superseded before it settled
            alerts += self._resolve(key, pair.episode, clock)
        ep = _Episode(
            old=pair.current,
            new=served,
            first_ms=ch.first_ms,
            takeover_ms=ts,
            takeover_clock=clock,
            share=ch.calls / (ch.calls + ch.current_calls),
            tenants=dict(ch.tenants),
        )
        pair.current, pair.challengers, pair.episode = served, {}, ep
        alerts += [self._alert(key, ep, t, FIRING, clock) for t in ep.tenants]
        return alerts

    def _resolve(self, key: tuple[str, str], ep: _Episode, clock: int) -> list[Alert]:
        return [self._alert(key, ep, t, RESOLVED, clock) for t in ep.tenants]

    def _alert(
        self, key: tuple[str, str], ep: _Episode, tenant: str, status: str, clock: int
    ) -> Alert:
        provider, model = key
        return make_alert(
            type="model",
            severity="warning",
            tenant_id=tenant,
            app="",
            metric="served_model_share",
            value=ep.share,
            threshold=0.5,
            window_start_ms=ep.first_ms,
            window_end_ms=ep.takeover_ms,
            id_parts=(tenant, provider, model, ep.old, ep.new, ep.first_ms),
            details={
                "provider": provider,
                "model": model,
                "old_served_model": ep.old,
                "new_served_model": ep.new,
                "first_seen": ep.first_ms,
                "tenant_first_seen": ep.tenants[tenant],
                "min_calls": self.min_calls,
            },
            status=status,
            emitted_at_ms=clock,
        )

    # ------------------------------------------------------------------ state
    def snapshot(self) -> dict[str, Any]:
        """Plain lists and dicts (msgpack-able) of the whole state."""
        out: list[Any] = []
        for (provider, model), pair in self._pairs.items():
            ep = pair.episode
            out.append(
                [
                    provider,
                    model,
                    pair.current,
                    [
                        [s, c.first_ms, c.calls, c.current_calls, c.tenants]
                        for s, c in pair.challengers.items()
                    ],
                    None
                    if ep is None
                    else [
                        ep.old,
                        ep.new,
                        ep.first_ms,
                        ep.takeover_ms,
                        ep.takeover_clock,
                        ep.share,
                        ep.tenants,
                    ],  # fmt: skip
                ]
            )
        return {"pairs": out, "providers": dict(self._provider_of)}

    @classmethod
    def restore(
        cls, data: dict[str, Any], *, min_calls: int = 20, settle_ms: int = 24 * 3_600_000
    ) -> ServedModels:
        """The state of :meth:`snapshot` ``data``, under (possibly new) settings."""
        models = cls(min_calls=min_calls, settle_ms=settle_ms)
        models._provider_of = dict(data.get("providers", {}))
        for provider, model, current, challengers, ep in data.get("pairs", []):
            pair = _Pair(current=current)
            for served, first_ms, calls, current_calls, tenants in challengers:
                pair.challengers[served] = _Challenger(first_ms, calls, current_calls, tenants)
            if ep is not None:
                old, new, first_ms, takeover_ms, takeover_clock, share, tenants = ep
                pair.episode = _Episode(
                    old, new, first_ms, takeover_ms, takeover_clock, share, tenants
                )
            models._pairs[(provider, model)] = pair
        return models

    def __len__(self) -> int:
        """(provider, model) pairs tracked."""
        return len(self._pairs)
