"""Numba kernels of the budget tracker, on the record tables of :mod:`.budget_layout`.

Every kernel works on plain arrays and never allocates per event. The public entry points
are :func:`apply_events` (a batch of priced events, in stream order) and :func:`advance_all`
(every budget brought up to the stream clock: time alone expires sliding spend and ends
calendar periods). Both stop early when a buffer lacks room and return where they stopped,
so the caller can grow it and call again.

Per (tenant, budget) and event, in this order: the slot is brought up to the event's
stream clock (:func:`_bring_up`: buckets that left the window expire, a calendar period
that ended rolls over; firing levels the spend fell below resolve), then the event's
units are added to its own minute/hour bucket or calendar period (:func:`_add`); levels
the spend reached fire. Lazy bring-up per touched slot plus :func:`advance_all` give the
same spend at every read as an eager sweep on every clock move, since expiry depends only
on the clock.
"""

import numpy as np
import numpy.typing as npt

from ._numba import njit
from .budget_config import CAP_UNITS
from .budget_layout import (
    FIRE,
    KIND_DAY,
    KIND_SLIDING,
    META_LATE,
    META_NA,
    META_NSLOTS,
    META_USED,
    REASON_BELOW,
    REASON_CROSSED,
    REASON_PERIOD_END,
    RESOLVE,
)
from .budget_queues import (  # noqa: F401 - re-exported: the tracker calls them from here
    _bucket_add,
    gather_buckets,
    queue_cap_for,
    repack,
    scatter_buckets,
)

Arr = npt.NDArray[np.int64]
Rec = npt.NDArray[np.void]

_DAY = 86_400_000


@njit
def month_bounds(ts: int) -> tuple[int, int]:
    """UTC calendar month of epoch-ms ``ts``: (start ms, end ms exclusive).

    Days-to-civil conversion on a March-based year (Feb last, so leap days fall at the end).
    """
    days = ts // _DAY
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097  # day of era, [0, 146096]
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365  # year of era
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)  # day of March-based year
    mp = (5 * doy + 2) // 153  # month, 0 = March
    first = (153 * mp + 2) // 5  # day of year of that month's 1st
    start_day = days - (doy - first)
    if mp == 11:
        year = yoe + era * 400 + 1  # February belongs to the next civil year
        leap = (year % 4 == 0 and year % 100 != 0) or year % 400 == 0
        length = 29 if leap else 28
    else:
        length = (153 * (mp + 1) + 2) // 5 - first
    return start_day * _DAY, (start_day + length) * _DAY


@njit
def _period(kind: int, ts: int) -> tuple[int, int]:
    """Calendar period (start, end) ms of ``ts`` for a day or month rule."""
    if kind == KIND_DAY:
        start = (ts // _DAY) * _DAY
        return start, start + _DAY
    return month_bounds(ts)


@njit
def _emit(  # noqa: PLR0917 - one alert record, field by field
    alerts: Rec,
    meta: Arr,
    event: int,
    s: int,
    k: int,
    status: int,
    reason: int,
    hi: int,
    lo: int,
    episode: int,
    pstart: int,
    pend: int,
    clock: int,
) -> None:
    a = alerts[meta[META_NA]]
    a.event = event
    a.slot = s
    a.level = k
    a.status = status
    a.reason = reason
    a.hi = hi
    a.lo = lo
    a.episode = episode
    a.pstart = pstart
    a.pend = pend
    a.clock = clock
    meta[META_NA] += 1


@njit
def _bring_up(  # noqa: PLR0917 - numba kernels take plain positional arrays
    s: int,
    clock: int,
    event: int,
    slots: Rec,
    rules: Rec,
    pool: Arr,
    lev_res: Arr,
    episodes: Arr,
    alerts: Rec,
    meta: Arr,
) -> None:
    """Move slot ``s`` up to stream clock ``clock``; resolve the levels that time ended."""
    slot = slots[s]
    if slot.init == 0 or clock <= slot.clock:
        return
    slot.clock = clock
    rule = rules[slot.rule]
    if rule.kind == KIND_SLIDING:
        b = clock // rule.res
        if b <= slot.cb:
            return
        slot.cb = b
        cutoff = b - rule.nb  # buckets <= cutoff left the window (cutoff, b]
        mask = slot.q_cap - 1
        expired = False
        while slot.q_cnt > 0 and slot.q_first <= cutoff:
            lo = slot.lo - pool[slot.q_off + slot.q_head, 1]
            if lo < 0:
                lo += CAP_UNITS
                slot.hi -= 1
            slot.lo = lo
            slot.q_head = (slot.q_head + 1) & mask
            slot.q_cnt -= 1
            if slot.q_cnt > 0:
                slot.q_first = pool[slot.q_off + slot.q_head, 0]
            expired = True
        if not expired:
            return
        slot.dirty = 1
        if slot.fired != 0 and slot.hi == 0:
            for k in range(rule.nlev):
                bit = 1 << k
                if (slot.fired & bit) != 0 and slot.lo < lev_res[rule.lev0 + k]:
                    slot.fired &= ~bit
                    _emit(
                        alerts,
                        meta,
                        event,
                        s,
                        k,
                        RESOLVE,
                        REASON_BELOW,
                        slot.hi,
                        slot.lo,
                        episodes[s, k],
                        0,
                        0,
                        clock,
                    )
        return
    if clock < slot.pend:
        return
    # The current period ended: its firing levels resolve; it becomes the previous period
    # when the clock is in the one right after it (else the previous one had no spend).
    for k in range(rule.nlev):
        if (slot.fired & (1 << k)) != 0:
            _emit(
                alerts,
                meta,
                event,
                s,
                k,
                RESOLVE,
                REASON_PERIOD_END,
                slot.hi,
                slot.lo,
                episodes[s, k],
                slot.pstart,
                slot.pend,
                clock,
            )
    ps, pe = _period(rule.kind, clock)
    if ps == slot.pend:
        slot.prev_start, slot.prev_end = slot.pstart, slot.pend
        slot.prev_hi, slot.prev_lo, slot.prev_fired = slot.hi, slot.lo, slot.fired
    else:
        slot.prev_start, slot.prev_end = _period(rule.kind, ps - 1)
        slot.prev_hi, slot.prev_lo, slot.prev_fired = 0, 0, 0
    slot.pstart, slot.pend = ps, pe
    slot.hi, slot.lo, slot.fired = 0, 0, 0
    slot.dirty = 1
    slot.prev_dirty = 1


@njit
def _init(s: int, clock: int, slots: Rec, rules: Rec) -> None:
    """A budget's first event: its window or period starts at the stream clock."""
    slot = slots[s]
    rule = rules[slot.rule]
    slot.init = 1
    slot.clock = clock
    if rule.kind == KIND_SLIDING:
        slot.cb = clock // rule.res
    else:
        slot.pstart, slot.pend = _period(rule.kind, clock)
        slot.prev_start, slot.prev_end = _period(rule.kind, slot.pstart - 1)


@njit
def _add(  # noqa: PLR0917 - numba kernels take plain positional arrays
    s: int,
    i: int,
    ts: int,
    units: int,
    clock: int,
    slots: Rec,
    rules: Rec,
    pool: Arr,
    meta: Arr,
    lev_thr: Arr,
    episodes: Arr,
    prev_episodes: Arr,
    alerts: Rec,
) -> None:
    """Count event ``i`` (``units`` at time ``ts``) in slot ``s``, already brought up to
    ``clock``; fire the levels the spend reached."""
    slot = slots[s]
    rule = rules[slot.rule]
    slot.dirty = 1  # its tenant was active: publish the state even if nothing was added
    if rule.kind == KIND_SLIDING:
        b = ts // rule.res
        if b <= slot.cb - rule.nb:
            meta[META_LATE] += 1  # older than the window: in the totals, not in the budget
            return
        if units == 0:
            return
        grew = _bucket_add(s, b, units, slots, pool, meta)
        pstart, pend = 0, 0
    elif slot.pstart <= ts < slot.pend:
        grew = units
        pstart, pend = slot.pstart, slot.pend
    elif slot.prev_start <= ts < slot.prev_end:
        # A late event of the previous period counts there. A level it makes that period
        # reach fires, and resolves at once: the period is over.
        lo = slot.prev_lo + units
        if lo >= CAP_UNITS:
            lo -= CAP_UNITS
            slot.prev_hi += 1
        slot.prev_lo = lo
        slot.prev_dirty = 1
        for k in range(rule.nlev):
            bit = 1 << k
            if (slot.prev_fired & bit) == 0 and (
                slot.prev_hi > 0 or slot.prev_lo >= lev_thr[rule.lev0 + k]
            ):
                slot.prev_fired |= bit
                prev_episodes[s, k] = clock
                _emit(
                    alerts,
                    meta,
                    i,
                    s,
                    k,
                    FIRE,
                    REASON_CROSSED,
                    slot.prev_hi,
                    slot.prev_lo,
                    clock,
                    slot.prev_start,
                    slot.prev_end,
                    clock,
                )
                _emit(
                    alerts,
                    meta,
                    i,
                    s,
                    k,
                    RESOLVE,
                    REASON_PERIOD_END,
                    slot.prev_hi,
                    slot.prev_lo,
                    clock,
                    slot.prev_start,
                    slot.prev_end,
                    clock,
                )
        return
    else:
        meta[META_LATE] += 1  # older than the previous period
        return
    if grew == 0:
        return
    lo = slot.lo + grew  # < 2**63: lo < 2**62 and grew <= 2**62
    if lo >= CAP_UNITS:
        lo -= CAP_UNITS
        slot.hi += 1
    slot.lo = lo
    for k in range(rule.nlev):
        bit = 1 << k
        if (slot.fired & bit) == 0 and (slot.hi > 0 or slot.lo >= lev_thr[rule.lev0 + k]):
            slot.fired |= bit
            episodes[s, k] = clock
            _emit(
                alerts,
                meta,
                i,
                s,
                k,
                FIRE,
                REASON_CROSSED,
                slot.hi,
                slot.lo,
                clock,
                pstart,
                pend,
                clock,
            )


@njit
def apply_events(  # noqa: PLR0917 - numba kernels take plain positional arrays
    codes: Arr,
    ts: Arr,
    at: Arr,
    units: Arr,
    start: int,
    tenant_slot0: Arr,
    tenant_nslot: Arr,
    slots: Rec,
    rules: Rec,
    pool: Arr,
    meta: Arr,
    lev_thr: Arr,
    lev_res: Arr,
    episodes: Arr,
    prev_episodes: Arr,
    alerts: Rec,
    headroom: int,
    alert_room: int,
) -> int:
    """Run events ``start..n`` through every budget of their tenant, in stream order.

    Per event ``i``: ``codes[i]`` tenant index (-1: no budgets), ``ts[i]`` event time ms,
    ``at[i]`` the stream clock after it (ms, non-decreasing, >= ts[i]), ``units[i]`` cost
    in 1e-10 USD (0 <= units <= 2**62). Tenant ``t`` owns slot rows
    ``tenant_slot0[t] .. + tenant_nslot[t]``. Before each event it checks that ``pool`` has
    ``headroom`` free rows and ``alerts`` room for ``alert_room`` records; if not it stops
    and returns that event's index. Returns ``n`` when done.
    """
    n = codes.shape[0]
    for i in range(start, n):
        t = codes[i]
        if t < 0 or tenant_nslot[t] == 0:
            continue
        if pool.shape[0] - meta[META_USED] < headroom or (
            alerts.shape[0] - meta[META_NA] < alert_room
        ):
            return i
        s0 = tenant_slot0[t]
        for s in range(s0, s0 + tenant_nslot[t]):
            if slots[s].init == 0:
                _init(s, at[i], slots, rules)
            else:
                _bring_up(s, at[i], i, slots, rules, pool, lev_res, episodes, alerts, meta)
            _add(
                s,
                i,
                ts[i],
                units[i],
                at[i],
                slots,
                rules,
                pool,
                meta,
                lev_thr,
                episodes,
                prev_episodes,
                alerts,
            )
    return n


@njit
def advance_all(  # noqa: PLR0917 - numba kernels take plain positional arrays
    clock: int,
    start: int,
    slots: Rec,
    rules: Rec,
    pool: Arr,
    meta: Arr,
    lev_res: Arr,
    episodes: Arr,
    alerts: Rec,
    alert_room: int,
) -> int:
    """Bring slots ``start..`` up to ``clock``; stops (returning the slot index) when
    ``alerts`` has less than ``alert_room`` free records. Returns the slot count when done."""
    nslots = meta[META_NSLOTS]
    for s in range(start, nslots):
        if alerts.shape[0] - meta[META_NA] < alert_room:
            return s
        _bring_up(s, clock, -1, slots, rules, pool, lev_res, episodes, alerts, meta)
    return nslots
