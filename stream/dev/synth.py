"""Realistic synthetic LLM call traffic, eval sets and bad events (demo, tests, benchmarks).

Job
---
:func:`generate_events` yields call events (SPEC §3, v1) as UTF-8 JSON bytes, deterministic
for a seed, fast enough to feed benchmarks (events are drawn in blocks with numpy and
serialised with orjson). :func:`generate_eval_set` yields eval-set lines from the same
embedding distribution as the early traffic. :func:`generate_bad_events` yields one or more
events of every rejection class with the reason code the decoder must give
(:data:`REJECT_REASONS`).

This module holds the traffic generator and re-exports the rest: the knobs, model table,
tenants and apps are in ``synth_population.py``, the embedding world in ``synth_world.py``,
the numba writers of times and retrieval chunks in ``synth_format.py`` and the bad events in
``synth_bad.py``.

What the traffic looks like
---------------------------
* Tenants with Zipf volumes (rank ``k`` gets weight ``1/k**zipf_s``), 1-4 apps each; every app
  has its own model mix, prompt (``prompt_id`` + ``prompt_version`` bumped at a few points of
  the run), retrieval index version (re-indexed at a few points) and maybe a router.
* Real model ids priced by genai-prices (:data:`SYNTH_MODELS`) plus ~1 % of an unknown model
  (:data:`UNKNOWN_MODEL`, exercises ``unpriced``). ``served_model`` is the dated snapshot the
  provider reports; for ``gpt-4o`` and ``gemini-2.5-flash`` the provider silently starts
  serving a newer snapshot part-way through the run.
* Prompt caching per provider style: OpenAI reads in 128-token steps (no writes reported),
  Anthropic reads and writes, Gemini implicit reads. Reasoning tokens (inside output) on
  reasoning models. Status mix ~95 % ok, error, rate_limited, timeout, ~2 % cache_hit.
  Log-normal time-to-first-token and throughput give ``ttft_ms``/``latency_ms``.
* ``ts``: RFC 3339 with ``Z`` (most), ``+00:00``, ``+02:00`` (local time) or integer epoch ms;
  events are spaced ``1/rate_per_s`` apart with a little jitter (slightly out of order, as
  many producers interleave). ``duplicate_share`` of the items re-send an earlier event
  byte for byte (an app retry: same ``event_id``).
* Embeddings: a Gaussian mixture on the unit sphere. ``_N_BASE`` clusters are what the eval
  set covers; ``_N_NEW`` further clusters are absent from it. The share of embedded events
  drawn from the new clusters grows linearly over the run from ``drift_start`` to
  ``drift_end`` (eval-set drift). Clusters share a common direction (real embedding spaces
  are anisotropic): cosine ~0.77 within a cluster, ~0.25 across clusters.
* Retrieval (``retrieval_share`` of events): 3-8 chunks; ``stale_share`` of the retrieving
  queries carry stale chunks: ~3/4 of those are *outdated* (source updated after embedding),
  the rest *too old* (embedded 31-90 days before the query). Fresh chunks are 2 h-25 days old.

The embedding world (cluster centres) depends only on ``world_seed``, ``dim`` and
``embedding_model``, not on the traffic ``seed``: an eval set drawn with any seed covers the
traffic of any seed with the same world.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from llmops_stream.stream.core.decode import REJECT_REASONS

from .synth_bad import generate_bad_events
from .synth_format import (
    _CHUNK_LIT,
    _CHUNK_LIT_OFF,
    _SUFFIX_BYTES,
    _SUFFIX_LEN,
    _chunks_kernel,
    _format_times,
)
from .synth_population import (
    _DAY_MS,
    _HOUR_MS,
    _MODELS,
    SYNTH_MODELS,
    UNKNOWN_MODEL,
    SynthConfig,
    _build_population,
)
from .synth_world import _b64_rows, _World

__all__ = [
    "REJECT_REASONS",
    "SYNTH_MODELS",
    "UNKNOWN_MODEL",
    "SynthConfig",
    "generate_bad_events",
    "generate_eval_set",
    "generate_events",
    "write_jsonl",
]

"""Reason codes of rejected events (``llm.calls.dlq``, ``llm_rejected``) -> description."""

_BLOCK = 4096
_DUP_WINDOW = 64  # a retry re-sends one of the previous 63 events of its block

_STATUSES = ("ok", "error", "rate_limited", "timeout", "cache_hit")
_STATUS_P = (0.95, 0.015, 0.01, 0.005, 0.02)
_EXTRA_FIELDS = ("trace_id", "request_id", "user_id")


def _lognormal(
    rng: np.random.Generator, median: np.ndarray | float, sigma: float, n: int
) -> np.ndarray:
    return np.asarray(median) * np.exp(sigma * rng.standard_normal(n))


# --------------------------------------------------------------------------- traffic


class _Generator:
    """State shared by the blocks of one :func:`generate_events` run."""

    def __init__(self, cfg: SynthConfig) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng([cfg.seed, 0x5EED])
        self.world = _World(cfg.world_seed, cfg.dim, cfg.embedding_model)
        self.tenants, self.apps = _build_population(cfg, self.rng)
        self.models = _MODELS
        self.model_tier = np.array([m.tier == "frontier" for m in _MODELS])
        self.reasoning_p = np.array([m.reasoning for m in _MODELS])
        styles = {"openai": 0, "anthropic": 1, "google": 2, "none": 3}
        self.cache_style_code = np.array([styles[m.cache_style] for m in _MODELS])
        self.ctx = np.array([m.context_window for m in _MODELS], dtype=np.int64)
        self.ttft = np.array([m.ttft_ms for m in _MODELS])
        self.tps = np.array([m.tokens_per_s for m in _MODELS])
        self.change_at = np.array([m.change_at for m in _MODELS])
        self.spacing_ms = 1000.0 / cfg.rate_per_s
        encoded = [name.encode("ascii") for name in self.apps.name]
        self.app_name_bytes = np.frombuffer(b"".join(encoded) or b"\0", dtype=np.uint8)
        self.app_name_off = np.cumsum([0] + [len(e) for e in encoded]).astype(np.int64)
        self.app_name_max = max(len(e) for e in encoded)

    def block(self, i0: int, m: int) -> Iterator[bytes]:  # noqa: PLR0914 - one flat recipe
        """Events ``i0 .. i0+m-1`` of the run, serialised."""
        cfg, rng, apps, tenants = self.cfg, self.rng, self.apps, self.tenants
        idx = np.arange(i0, i0 + m)
        frac = idx / max(cfg.n_events - 1, 1)

        # Who and what.
        tenant = rng.choice(len(tenants.ids), size=m, p=tenants.p)
        app = tenants.app_offset[tenant] + (rng.random(m) * tenants.app_count[tenant]).astype(
            np.int64
        )
        model = (rng.random(m)[:, None] > apps.model_cdf[app]).sum(axis=1)
        model = np.minimum(model, len(_MODELS) - 1)
        status = rng.choice(len(_STATUSES), size=m, p=_STATUS_P)

        # Tokens. A few calls to the long-context Gemini model cross its 200k price tier.
        input_tokens = _lognormal(rng, apps.input_median[app], 0.9, m)
        long_ctx = (self.ctx[model] > 500_000) & (rng.random(m) < 0.02)
        input_tokens = np.where(long_ctx, rng.uniform(150_000, 600_000, m), input_tokens)
        input_tokens = np.clip(input_tokens, 1, self.ctx[model] * 0.95).astype(np.int64)
        visible = np.clip(_lognormal(rng, 260.0, 0.8, m), 1, 16_000).astype(np.int64)
        reasons = rng.random(m) < self.reasoning_p[model]
        reasoning = np.where(
            reasons, np.clip(_lognormal(rng, 700.0, 0.9, m), 16, 30_000), 0
        ).astype(np.int64)
        output_tokens = visible + reasoning

        style = self.cache_style_code[model]
        u_read, u_write, f_read, f_write = (rng.random(m) for _ in range(4))
        read_frac = 0.3 + 0.65 * f_read
        cache_read = np.zeros(m, dtype=np.int64)
        openai_read = (style == 0) & (input_tokens >= 1024) & (u_read < 0.35)
        cache_read = np.where(
            openai_read, (input_tokens * read_frac).astype(np.int64) // 128 * 128, cache_read
        )
        anthropic_read = (style == 1) & (u_read < 0.4)
        google_read = (style == 2) & (u_read < 0.25)
        cache_read = np.where(
            anthropic_read | google_read,
            (input_tokens * read_frac * 0.9).astype(np.int64),
            cache_read,
        )
        cache_write = np.where(
            (style == 1) & (u_write < 0.15),
            ((input_tokens - cache_read) * (0.2 + 0.7 * f_write)).astype(np.int64),
            0,
        )

        # Failures: rate-limited calls never reached the model, errors and timeouts
        # produced no output.
        limited = status == 2
        failed = (status == 1) | (status == 3) | limited
        output_tokens = np.where(failed, 0, output_tokens)
        reasoning = np.where(failed, 0, reasoning)
        input_tokens = np.where(limited, 0, input_tokens)
        cache_read = np.where(limited, 0, cache_read)
        cache_write = np.where(limited, 0, cache_write)

        # Latency: time to first token, then output at the model's throughput.
        ttft = _lognormal(rng, self.ttft[model], 0.45, m)
        gen = output_tokens / _lognormal(rng, self.tps[model], 0.3, m) * 1000.0
        latency = ttft + gen
        latency = np.where(status == 1, _lognormal(rng, 400.0, 0.8, m), latency)
        latency = np.where(limited, _lognormal(rng, 60.0, 0.5, m), latency)
        latency = np.where(status == 3, rng.uniform(30_000, 60_000, m), latency)
        latency = np.where(status == 4, _lognormal(rng, 15.0, 0.5, m), latency)
        latency = np.round(latency, 1)
        ttft = np.round(ttft, 1)

        # Time.
        ts_ms = (
            cfg.start_ms + np.round(idx * self.spacing_ms + rng.normal(0.0, cfg.jitter_ms, m))
        ).astype(np.int64)
        # Jitter never moves an event before the start; the first event is at start_ms.
        ts_ms = np.maximum(ts_ms, cfg.start_ms)
        ts_ms[idx == 0] = cfg.start_ms
        ts_style = rng.choice(4, size=m, p=(0.7, 0.15, 0.05, 0.1))
        ts_values = _format_times(ts_ms, ts_style)

        # Versions move at per-app points of the run.
        prompt_version = apps.prompt_base[app] + (frac[:, None] >= apps.prompt_changes[app]).sum(1)
        index_version = apps.index_base[app] + (frac[:, None] >= apps.index_changes[app]).sum(1)
        served_later = (frac >= self.change_at[model]) & (rng.random(m) < 0.6)

        # Optional-field presence.
        u_opt = rng.random((m, 7))
        has_provider = u_opt[:, 0] < 0.9
        has_served = (u_opt[:, 1] < 0.85) & ((status == 0) | (status == 3))
        has_version = u_opt[:, 2] < 0.8
        has_ctx = u_opt[:, 3] < 0.05
        has_extra = u_opt[:, 4] < 0.03
        explicit_zero = u_opt[:, 5] < 0.3
        has_status = (status != 0) | (u_opt[:, 6] < 0.9)  # "ok" is the default
        escalated = self.model_tier[model] & (rng.random(m) < 0.3)
        has_ttft = (status == 0) & (rng.random(m) < 0.9)

        # Embeddings.
        has_emb = rng.random(m) < cfg.embedding_share
        emb_rows = np.flatnonzero(has_emb)
        emb_text: dict[int, Any] = {}
        if len(emb_rows):
            drift_p = cfg.drift_start + (cfg.drift_end - cfg.drift_start) * frac[emb_rows]
            new = rng.random(len(emb_rows)) < drift_p
            vectors = self.world.sample(self.world.clusters(new, rng), rng)
            as_array = rng.random(len(emb_rows)) < cfg.array_embedding_share
            encoded = _b64_rows(vectors)
            for k, row in enumerate(emb_rows.tolist()):
                emb_text[row] = vectors[k] if as_array[k] else encoded[k]

        # Retrieval.
        has_ret = rng.random(m) < cfg.retrieval_share
        chunks = self._chunks(np.flatnonzero(has_ret), ts_ms, app)

        # Duplicates: a retry re-sends an earlier event of this block unchanged.
        dup_of = np.where(
            rng.random(m) < cfg.duplicate_share,
            idx - i0 - rng.integers(1, _DUP_WINDOW, size=m),
            -1,
        )
        event_ids = rng.bytes(16 * m).hex()
        extra_ids = rng.bytes(8 * m).hex()

        # Serialise. Lists of Python scalars are much cheaper to index than numpy arrays.
        L = lambda a: a.tolist()  # noqa: E731 - local shorthand in a long recipe
        tenant_l, app_l, model_l, status_l = L(tenant), L(app), L(model), L(status)
        inp_l, out_l, cr_l, cw_l, rs_l = (
            L(input_tokens), L(output_tokens), L(cache_read), L(cache_write), L(reasoning),
        )  # fmt: skip
        lat_l, ttft_l = L(latency), L(ttft)
        pv_l, iv_l, later_l = L(prompt_version), L(index_version), L(served_later)
        hp_l, hs_l, hv_l, hc_l, hx_l, ez_l = (
            L(has_provider), L(has_served), L(has_version), L(has_ctx), L(has_extra),
            L(explicit_zero),
        )  # fmt: skip
        esc_l, ht_l, dup_l, hst_l = L(escalated), L(has_ttft), L(dup_of), L(has_status)
        routed_l, has_prompt_l = L(apps.routed), L(apps.has_prompt)
        app_names, prompt_ids, tenant_ids = apps.name, apps.prompt_id, tenants.ids
        models = self.models
        emb_model = cfg.embedding_model
        dumps = orjson.dumps
        numpy_opt = orjson.OPT_SERIALIZE_NUMPY
        fragment = orjson.Fragment

        # Only recent events are kept for retries: holding a whole block of bytes objects
        # costs more in fresh-memory allocation than generating them.
        recent: list[bytes] = [b""] * _DUP_WINDOW
        for j in range(m):
            d = dup_l[j]
            if d >= 0:
                data = recent[j % _DUP_WINDOW] = recent[d % _DUP_WINDOW]
                yield data
                continue
            spec = models[model_l[j]]
            a = app_l[j]
            h = event_ids[32 * j : 32 * j + 32]
            ev: dict[str, Any] = {}
            if hv_l[j]:
                ev["schema_version"] = 1
            ev["event_id"] = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
            ev["ts"] = ts_values[j]
            ev["tenant_id"] = tenant_ids[tenant_l[j]]
            ev["app"] = app_names[a]
            ev["model"] = spec.model
            if hp_l[j]:
                ev["provider"] = spec.provider
            if hs_l[j]:
                ev["served_model"] = (
                    spec.served_later if later_l[j] and spec.served_later else spec.served
                )
            usage: dict[str, int] = {"input_tokens": inp_l[j], "output_tokens": out_l[j]}
            if cr_l[j] or (ez_l[j] and spec.cache_style != "none"):
                usage["cache_read_tokens"] = cr_l[j]
            if cw_l[j] or (ez_l[j] and spec.cache_style == "anthropic"):
                usage["cache_write_tokens"] = cw_l[j]
            if rs_l[j] or (ez_l[j] and spec.reasoning > 0):
                usage["reasoning_tokens"] = rs_l[j]
            ev["usage"] = usage
            if hst_l[j]:
                ev["status"] = _STATUSES[status_l[j]]
            ev["latency_ms"] = lat_l[j]
            if ht_l[j]:
                ev["ttft_ms"] = ttft_l[j]
            if has_prompt_l[a]:
                ev["prompt_id"] = prompt_ids[a]
                ev["prompt_version"] = f"v{pv_l[j]}"
            if routed_l[a]:
                ev["route"] = {"tier": spec.tier, "escalated": esc_l[j]}
            if hc_l[j]:
                ev["context_window"] = spec.context_window
            emb = emb_text.get(j)
            if emb is not None:
                ev["embedding"] = emb
                ev["embedding_model"] = emb_model
            chunk_text = chunks[j]
            if chunk_text is not None:
                ev["retrieval"] = {
                    "index_version": f"{app_names[a]}-kb-v{iv_l[j]}",
                    "chunks": fragment(chunk_text),
                }
            if hx_l[j]:
                ev[_EXTRA_FIELDS[j % 3]] = extra_ids[16 * j : 16 * j + 16]
            data = dumps(ev, option=numpy_opt) if emb is not None else dumps(ev)
            recent[j % _DUP_WINDOW] = data
            yield data

    def _chunks(self, rows: np.ndarray, ts_ms: np.ndarray, app: np.ndarray) -> list[str | None]:
        """JSON text of ``retrieval.chunks`` per block position (None where no retrieval) for
        the events at ``rows``; ``ts_ms``/``app`` are the block's columns."""
        if not len(rows):
            return [None] * len(ts_ms)
        rng = self.rng
        count = rng.integers(3, 9, size=len(rows))
        total = int(count.sum())
        owner = np.repeat(np.arange(len(rows)), count)
        q_ts = ts_ms[rows][owner]
        # Fresh chunks: embedded 2 h .. 25 days before the query, source last changed before.
        age = rng.uniform(2 * _HOUR_MS, 25 * _DAY_MS, total).astype(np.int64)
        embedded = q_ts - age
        source = embedded - rng.uniform(0, 60 * _DAY_MS, total).astype(np.int64)
        # Stale queries: one or two chunks outdated (~3/4) or older than 30 days (~1/4).
        stale_query = rng.random(len(rows)) < self.cfg.stale_share
        position = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
        n_stale = rng.integers(1, 3, size=len(rows))
        stale_chunk = stale_query[owner] & (position >= count[owner] - n_stale[owner])
        outdated = stale_chunk & (rng.random(total) < 0.75)
        too_old = stale_chunk & ~outdated
        source = np.where(
            outdated, embedded + (age * rng.uniform(0.1, 0.9, total)).astype(np.int64), source
        )
        old_age = rng.uniform(31 * _DAY_MS, 90 * _DAY_MS, total).astype(np.int64)
        embedded = np.where(too_old, q_ts - old_age, embedded)
        source = np.where(too_old, embedded - _DAY_MS, source)
        score_e4 = rng.integers(4500, 9501, size=total)  # score 0.4500 .. 0.9500
        # List each query's chunks best first (retrievers return top-k by score).
        order = np.lexsort((-score_e4, owner))
        embedded, source, score_e4 = embedded[order], source[order], score_e4[order]
        styles = rng.choice(4, size=total, p=(0.8, 0.05, 0.05, 0.1))
        doc = rng.integers(0, 20_000, size=total)
        part = rng.integers(0, 40, size=total)
        buf = np.empty(total * (200 + 2 * self.app_name_max) + 3 * len(rows), dtype=np.uint8)
        used = _chunks_kernel(
            count, app[rows], self.app_name_bytes, self.app_name_off, doc, part, embedded,
            source, styles, score_e4, _CHUNK_LIT, _CHUNK_LIT_OFF, _SUFFIX_BYTES, _SUFFIX_LEN, buf,
        )  # fmt: skip
        texts = buf[: used - 1].tobytes().decode("ascii").split("\n")
        by_row: list[str | None] = [None] * len(ts_ms)
        for q, row in enumerate(rows.tolist()):
            by_row[row] = texts[q]
        return by_row


def generate_events(cfg: SynthConfig) -> Iterator[bytes]:
    """Yield ``cfg.n_events`` call events (UTF-8 JSON, no trailing newline), deterministic for
    ``cfg`` (same config, same bytes)."""
    gen = _Generator(cfg)
    for i0 in range(0, cfg.n_events, _BLOCK):
        yield from gen.block(i0, min(_BLOCK, cfg.n_events - i0))


def generate_eval_set(
    *,
    n: int,
    dim: int = 384,
    seed: int = 0,
    embedding_model: str = "text-embedding-3-small",
    world_seed: int = 0,
) -> Iterator[bytes]:
    """Yield ``n`` eval-set lines ``{"id", "embedding", "embedding_model"}`` (no newline),
    drawn from the clusters the traffic starts on (the covered ones, never the drift ones)."""
    world = _World(world_seed, dim, embedding_model)
    rng = np.random.default_rng([seed, 0xE7A1])
    for i0 in range(0, n, _BLOCK):
        m = min(_BLOCK, n - i0)
        vectors = world.sample(world.clusters(np.zeros(m, dtype=np.bool_), rng), rng)
        for k, text in enumerate(_b64_rows(vectors)):
            yield orjson.dumps(
                {"id": f"eval-{i0 + k:06d}", "embedding": text, "embedding_model": embedding_model}
            )


def write_jsonl(path: str | Path, events: Iterable[bytes]) -> int:
    """Write one item per line to ``path``; returns the number of lines written."""
    count = 0
    with Path(path).open("wb", buffering=1 << 20) as fh:
        for item in events:
            fh.write(item)
            fh.write(b"\n")
            count += 1
    return count
