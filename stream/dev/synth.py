"""Realistic synthetic LLM call traffic, eval sets and bad events (demo, tests, benchmarks).

Job
---
:func:`generate_events` yields call events (SPEC §3, v1) as UTF-8 JSON bytes, deterministic
for a seed, fast enough to feed benchmarks (events are drawn in blocks with numpy and
serialised with orjson). :func:`generate_eval_set` yields eval-set lines from the same
embedding distribution as the early traffic. :func:`generate_bad_events` yields one or more
events of every rejection class with the reason code the decoder must give
(:data:`REJECT_REASONS`).

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

import base64
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import orjson

from llmops_stream.stream.core._numba import njit
from llmops_stream.stream.core.decode import MAX_MESSAGE_BYTES, REJECT_REASONS
from llmops_stream.stream.core.errors import ConfigError

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


"""Size limit behind ``too_large`` (1 MiB)."""

DEFAULT_START_MS = 1_793_491_200_000
"""2026-11-01T00:00:00Z, the default event time of the first synthetic event."""

_DAY_MS = 86_400_000
_HOUR_MS = 3_600_000
_BLOCK = 4096
_N_BASE = 24
_N_NEW = 12
_DUP_WINDOW = 64  # a retry re-sends one of the previous 63 events of its block


@dataclass(frozen=True)
class _Model:
    """One model of the synthetic mix (weights are relative)."""

    model: str
    provider: str
    weight: float
    tier: str  # route tier: "small" or "frontier"
    reasoning: float  # share of calls that carry reasoning tokens
    cache_style: str  # "openai" | "anthropic" | "google" | "none"
    served: str  # what the provider reports back
    served_later: str  # silently served from `change_at` (fraction of the run) on, or ""
    change_at: float
    context_window: int
    ttft_ms: float  # median time to first token
    tokens_per_s: float  # median output throughput


# fmt: off
_MODELS: tuple[_Model, ...] = tuple(_Model(*row) for row in (
    # model, provider, weight, route tier, reasoning share, cache style,
    #     served, served later, from run fraction, context window, ttft ms, tokens/s
    ("gpt-4o-mini", "openai", 0.26, "small", 0.0, "openai",
        "gpt-4o-mini-2024-07-18", "", 1.0, 128_000, 350.0, 110.0),
    ("gpt-4o", "openai", 0.14, "frontier", 0.0, "openai",
        "gpt-4o-2024-08-06", "gpt-4o-2024-11-20", 0.55, 128_000, 550.0, 70.0),
    ("o4-mini", "openai", 0.07, "frontier", 1.0, "openai",
        "o4-mini-2025-04-16", "", 1.0, 200_000, 1800.0, 120.0),
    ("o3-mini", "openai", 0.04, "frontier", 1.0, "openai",
        "o3-mini-2025-01-31", "", 1.0, 200_000, 1500.0, 110.0),
    ("claude-sonnet-4-20250514", "anthropic", 0.13, "frontier", 0.15, "anthropic",
        "claude-sonnet-4-20250514", "", 1.0, 200_000, 900.0, 60.0),
    ("claude-3-5-haiku-20241022", "anthropic", 0.10, "small", 0.0, "anthropic",
        "claude-3-5-haiku-20241022", "", 1.0, 200_000, 450.0, 90.0),
    ("gemini-2.5-flash", "google", 0.15, "small", 0.3, "google",
        "gemini-2.5-flash", "gemini-2.5-flash-preview-09-2025", 0.7, 1_048_576, 400.0, 160.0),
    ("gemini-2.5-pro", "google", 0.06, "frontier", 1.0, "google",
        "gemini-2.5-pro", "", 1.0, 1_048_576, 1600.0, 80.0),
    # Last: the unknown model (kept at its global share in every app's mix).
    ("acme-llm-7b-ft", "self-hosted", 0.01, "small", 0.0, "none",
        "acme-llm-7b-ft", "", 1.0, 32_000, 200.0, 50.0),
))
# fmt: on

SYNTH_MODELS: tuple[str, ...] = tuple(m.model for m in _MODELS[:-1])
"""Requested model ids of the synthetic traffic that genai-prices prices."""

UNKNOWN_MODEL = _MODELS[-1].model
"""A fine-tuned self-hosted model no price list knows (~1 % of calls)."""

_TENANT_NAMES = (
    "acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka", "tyrell",
    "cyberdyne", "soylent", "aperture", "massive-dynamic", "vandelay", "gringotts", "oscorp",
)  # fmt: skip
_APP_NAMES = (
    "support-bot", "doc-qa", "search", "summarizer", "code-review", "sales-assistant",
    "email-drafter", "sql-copilot", "triage", "translator",
)  # fmt: skip
_STATUSES = ("ok", "error", "rate_limited", "timeout", "cache_hit")
_STATUS_P = (0.95, 0.015, 0.01, 0.005, 0.02)
_EXTRA_FIELDS = ("trace_id", "request_id", "user_id")


class SynthConfig(msgspec.Struct, kw_only=True):
    """Knobs of :func:`generate_events`. Shares are probabilities in [0, 1].

    ``n_events`` counts every item yielded, duplicates included. ``start_ms`` is the event
    time (epoch ms) of the first event; events are ``1000 / rate_per_s`` ms apart plus normal
    jitter of ``jitter_ms``. ``stale_share`` is the share of retrieving queries with at least
    one stale chunk. ``drift_start``/``drift_end``: share of embedded events drawn from
    clusters the eval set does not cover, at the first/last event.
    """

    n_events: int
    seed: int = 0
    start_ms: int = DEFAULT_START_MS
    rate_per_s: float = 2000.0
    jitter_ms: float = 200.0
    n_tenants: int = 50
    zipf_s: float = 1.1
    embedding_share: float = 0.5
    dim: int = 384
    embedding_model: str = "text-embedding-3-small"
    retrieval_share: float = 0.4
    stale_share: float = 0.1
    duplicate_share: float = 0.005
    array_embedding_share: float = 0.0
    drift_start: float = 0.05
    drift_end: float = 0.40
    world_seed: int = 0

    def __post_init__(self) -> None:
        if self.n_events < 0:
            raise ConfigError(f"synthetic traffic: n_events must be >= 0, got {self.n_events}")
        if not self.rate_per_s > 0:
            raise ConfigError(f"synthetic traffic: rate_per_s must be > 0, got {self.rate_per_s}")
        if self.n_tenants < 1 or self.dim < 1:
            raise ConfigError("synthetic traffic: n_tenants and dim must be >= 1")
        for name in (
            "embedding_share", "retrieval_share", "stale_share", "duplicate_share",
            "array_embedding_share", "drift_start", "drift_end",
        ):  # fmt: skip
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"synthetic traffic: {name} must be in [0, 1], got {value}")


# --------------------------------------------------------------------------- embedding world


class _World:
    """Cluster centres on the unit sphere: rows ``[0, _N_BASE)`` are covered by eval sets,
    ``[_N_BASE, _N_BASE + _N_NEW)`` are the drift clusters. ``centres`` float64[k, dim]."""

    def __init__(self, world_seed: int, dim: int, embedding_model: str) -> None:
        rng = np.random.default_rng([world_seed, dim, zlib.crc32(embedding_model.encode())])
        k = _N_BASE + _N_NEW
        shared = rng.standard_normal(dim)
        shared /= np.linalg.norm(shared)
        own = rng.standard_normal((k, dim))
        own /= np.linalg.norm(own, axis=1, keepdims=True)
        # cos(centre_a, centre_b) ~ 0.3: the common direction carries 30 % of the energy.
        centres = np.sqrt(0.3) * shared + np.sqrt(0.7) * own
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        # Noise per dimension so that |noise|^2 ~ 0.2..0.4: cos(sample, centre) ~ 0.85..0.9.
        self.sigma = np.sqrt(rng.uniform(0.2, 0.4, k) / dim)
        popularity = 1.0 / np.arange(1, _N_BASE + 1) ** 0.7
        self.base_p = popularity / popularity.sum()
        self.dim = dim

    def sample(self, clusters: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Unit vectors ``float32[len(clusters), dim]`` around the given cluster centres."""
        noise = rng.standard_normal((len(clusters), self.dim), dtype=np.float32)
        vectors = self.centres[clusters].astype(np.float32)
        vectors += noise * self.sigma[clusters, None].astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors

    def clusters(self, new: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A cluster per event: a new (drift) cluster where ``new`` is true, else a base one."""
        base = rng.choice(_N_BASE, size=len(new), p=self.base_p)
        fresh = _N_BASE + rng.integers(0, _N_NEW, size=len(new))
        return np.where(new, fresh, base)


def _b64_rows(vectors: np.ndarray) -> list[str]:
    """Base64 of each row's little-endian float32 bytes, as ``str``."""
    raw = np.ascontiguousarray(vectors, dtype="<f4")
    row_bytes = raw.shape[1] * 4
    if row_bytes % 3 == 0:
        # Rows of a multiple of 3 bytes encode without padding, so one call encodes them
        # all and the text splits at fixed offsets (much faster than a call per row).
        text = base64.b64encode(raw.tobytes()).decode("ascii")
        step = row_bytes // 3 * 4
        return [text[i : i + step] for i in range(0, len(text), step)]
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in raw]


# --------------------------------------------------------------------------- tenants and apps


@dataclass
class _Apps:
    """Per-app attributes, arrays indexed by a global app number."""

    name: list[str]
    model_cdf: np.ndarray  # float64[a, n_models], cumulative model mix
    prompt_id: list[str]
    has_prompt: np.ndarray  # bool[a]
    prompt_changes: np.ndarray  # float64[a, 3] run fractions of version bumps (inf = none)
    prompt_base: np.ndarray  # int64[a]
    index_changes: np.ndarray  # float64[a, 3]
    index_base: np.ndarray  # int64[a]
    routed: np.ndarray  # bool[a]
    input_median: np.ndarray  # float64[a]


@dataclass
class _Tenants:
    """Tenants by volume rank (rank 0 sends the most)."""

    ids: list[str]
    p: np.ndarray  # float64[t], Zipf volume shares
    app_offset: np.ndarray  # int64[t], first global app of the tenant
    app_count: np.ndarray  # int64[t]


def _tenant_name(rank: int) -> str:
    if rank < len(_TENANT_NAMES):
        return _TENANT_NAMES[rank]
    return f"tenant-{rank:03d}"


def _build_population(cfg: SynthConfig, rng: np.random.Generator) -> tuple[_Tenants, _Apps]:
    n_t = cfg.n_tenants
    weights = 1.0 / np.arange(1, n_t + 1) ** cfg.zipf_s
    app_count = rng.integers(1, 5, size=n_t)
    app_offset = np.concatenate(([0], np.cumsum(app_count)[:-1])).astype(np.int64)
    n_apps = int(app_count.sum())
    names: list[str] = []
    for count in app_count.tolist():
        names.extend(rng.choice(_APP_NAMES, size=count, replace=False).tolist())
    # Each app leans on a few models: the global mix reshaped by a Dirichlet draw; the
    # unknown model keeps its global share everywhere so ~1 % of all calls are unpriced.
    global_w = np.array([m.weight for m in _MODELS])
    mix = rng.dirichlet(global_w[:-1] * 8.0, size=n_apps) * (1.0 - global_w[-1])
    mix = np.concatenate([mix, np.full((n_apps, 1), global_w[-1])], axis=1)
    prompt_changes = np.sort(
        np.where(rng.random((n_apps, 3)) < 0.6, rng.uniform(0.05, 0.95, (n_apps, 3)), np.inf),
        axis=1,
    )
    index_changes = np.sort(
        np.where(rng.random((n_apps, 3)) < 0.5, rng.uniform(0.05, 0.95, (n_apps, 3)), np.inf),
        axis=1,
    )
    apps = _Apps(
        name=names,
        model_cdf=np.cumsum(mix, axis=1),
        prompt_id=[
            f"{name}/{rng.choice(['answer', 'classify', 'draft', 'rewrite'])}" for name in names
        ],
        has_prompt=rng.random(n_apps) < 0.85,
        prompt_changes=prompt_changes,
        prompt_base=rng.integers(1, 12, size=n_apps),
        index_changes=index_changes,
        index_base=rng.integers(1, 30, size=n_apps),
        routed=rng.random(n_apps) < 0.5,
        input_median=np.exp(rng.uniform(np.log(300), np.log(6000), n_apps)),
    )
    tenants = _Tenants(
        ids=[_tenant_name(r) for r in range(n_t)],
        p=weights / weights.sum(),
        app_offset=app_offset,
        app_count=app_count,
    )
    return tenants, apps


# --------------------------------------------------------------------------- time formatting


_SUFFIXES = (b"Z", b"+00:00", b"+02:00")
_SUFFIX_BYTES = np.frombuffer(b"Z\0\0\0\0\0+00:00+02:00", dtype=np.uint8).reshape(3, 6)
_SUFFIX_LEN = np.array([len(x) for x in _SUFFIXES], dtype=np.int64)
_TIME_BYTES = 32  # room for one quoted time token and its separator


@njit
def _put_padded(out: np.ndarray, pos: int, value: int, width: int) -> int:
    """Write ``value`` >= 0 as exactly ``width`` zero-padded digits; return the new end."""
    for k in range(width - 1, -1, -1):
        out[pos + k] = 48 + value % 10
        value //= 10
    return pos + width


@njit
def _put_int(out: np.ndarray, pos: int, value: int) -> int:
    """Write an integer in decimal; return the new end."""
    if value < 0:
        out[pos] = 45
        pos += 1
        value = -value
    width = 1
    probe = value
    while probe >= 10:
        probe //= 10
        width += 1
    return _put_padded(out, pos, value, width)


@njit
def _put_bytes(out: np.ndarray, pos: int, src: np.ndarray, start: int, stop: int) -> int:
    for k in range(start, stop):
        out[pos] = src[k]
        pos += 1
    return pos


@njit
def _put_time(  # noqa: PLR0917 - numba kernels take plain positional arrays
    out: np.ndarray,
    pos: int,
    t: int,
    style: int,
    quoted: bool,
    suffix: np.ndarray,
    suffix_len: np.ndarray,
) -> int:
    """Write one event time: ``YYYY-MM-DDTHH:MM:SS.mmm<suffix>`` (in double quotes if
    ``quoted``: a JSON token), or for style 3 the integer epoch ms (only if ``quoted``;
    otherwise nothing, the caller supplies the int). Returns the new end.

    Civil date from days since 1970-01-01 after H. Hinnant's ``civil_from_days``."""
    if style == 3:
        return _put_int(out, pos, t) if quoted else pos
    if quoted:
        out[pos] = 34
        pos += 1
    if style == 2:
        t += 7_200_000  # "+02:00" shows the local wall time
    days = t // 86_400_000
    rem = t - days * 86_400_000
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    pos = _put_padded(out, pos, year, 4)
    out[pos] = 45  # -
    pos = _put_padded(out, pos + 1, month, 2)
    out[pos] = 45
    pos = _put_padded(out, pos + 1, day, 2)
    out[pos] = 84  # T
    pos = _put_padded(out, pos + 1, rem // 3_600_000, 2)
    out[pos] = 58  # :
    pos = _put_padded(out, pos + 1, rem // 60_000 % 60, 2)
    out[pos] = 58
    pos = _put_padded(out, pos + 1, rem // 1000 % 60, 2)
    out[pos] = 46  # .
    pos = _put_padded(out, pos + 1, rem % 1000, 3)
    pos = _put_bytes(out, pos, suffix[style], 0, suffix_len[style])
    if quoted:
        out[pos] = 34
        pos += 1
    return pos


@njit
def _format_times_kernel(  # noqa: PLR0917 - numba kernels take plain positional arrays
    ms: np.ndarray,
    style: np.ndarray,
    suffix: np.ndarray,
    suffix_len: np.ndarray,
    quoted: bool,
    out: np.ndarray,
) -> int:
    """One time per line (see :func:`_put_time`) into ``out``; returns bytes written."""
    pos = 0
    for i in range(ms.shape[0]):
        pos = _put_time(out, pos, ms[i], style[i], quoted, suffix, suffix_len)
        out[pos] = 10
        pos += 1
    return pos


def _time_lines(ms: np.ndarray, style: np.ndarray, *, quoted: bool) -> list[str]:
    """Kernel output split into one string per time (see :func:`_put_time`)."""
    if len(ms) == 0:
        return []
    ms = np.ascontiguousarray(ms, dtype=np.int64)
    style = np.ascontiguousarray(style, dtype=np.int64)
    buf = np.empty(len(ms) * _TIME_BYTES, dtype=np.uint8)
    used = _format_times_kernel(ms, style, _SUFFIX_BYTES, _SUFFIX_LEN, quoted, buf)
    # One decode and one split instead of a Python string operation per event.
    return buf[: used - 1].tobytes().decode("ascii").split("\n")


def _format_times(ms: np.ndarray, style: np.ndarray) -> list[str | int]:
    """Event times in mixed wire formats, one per element of ``ms`` (int64 epoch ms).

    ``style``: 0 RFC 3339 ``Z``, 1 ``+00:00``, 2 ``+02:00`` (local wall time), 3 integer
    epoch ms. All RFC 3339 forms carry milliseconds."""
    out: list[str | int] = list(_time_lines(ms, style, quoted=False))
    for i in np.flatnonzero(style == 3).tolist():
        out[i] = int(ms[i])
    return out


_CHUNK_PIECES = (
    b'{"chunk_id":"', b"-doc-", b"#", b'","doc_id":"', b'","embedded_at":',
    b',"source_updated_at":', b',"score":0.', b"}",
)  # fmt: skip
_CHUNK_LIT = np.frombuffer(b"".join(_CHUNK_PIECES), dtype=np.uint8)
_CHUNK_LIT_OFF = np.cumsum([0] + [len(p) for p in _CHUNK_PIECES]).astype(np.int64)


@njit
def _chunks_kernel(  # noqa: PLR0917, PLR0914 - numba kernels take plain positional arrays
    count: np.ndarray,
    app: np.ndarray,
    names: np.ndarray,
    names_off: np.ndarray,
    doc: np.ndarray,
    part: np.ndarray,
    embedded: np.ndarray,
    source: np.ndarray,
    style: np.ndarray,
    score_e4: np.ndarray,
    lit: np.ndarray,
    lit_off: np.ndarray,
    suffix: np.ndarray,
    suffix_len: np.ndarray,
    out: np.ndarray,
) -> int:
    """The ``retrieval.chunks`` JSON array of each query, one per line.

    ``count[q]`` chunks per query, flat chunk columns in query order; ``app[q]`` indexes the
    app names (``names`` bytes, ``names_off`` offsets). Every value is ASCII without quotes
    or backslashes, so nothing needs escaping. Returns bytes written."""
    pos = 0
    k = 0
    for q in range(count.shape[0]):
        a0 = names_off[app[q]]
        a1 = names_off[app[q] + 1]
        out[pos] = 91  # [
        pos += 1
        for c in range(count[q]):
            if c:
                out[pos] = 44  # ,
                pos += 1
            pos = _put_bytes(out, pos, lit, lit_off[0], lit_off[1])
            doc_start = pos
            pos = _put_bytes(out, pos, names, a0, a1)
            pos = _put_bytes(out, pos, lit, lit_off[1], lit_off[2])
            pos = _put_padded(out, pos, doc[k], 5)
            doc_stop = pos
            pos = _put_bytes(out, pos, lit, lit_off[2], lit_off[3])
            pos = _put_int(out, pos, part[k])
            pos = _put_bytes(out, pos, lit, lit_off[3], lit_off[4])
            pos = _put_bytes(out, pos, out, doc_start, doc_stop)
            pos = _put_bytes(out, pos, lit, lit_off[4], lit_off[5])
            pos = _put_time(out, pos, embedded[k], style[k], True, suffix, suffix_len)
            pos = _put_bytes(out, pos, lit, lit_off[5], lit_off[6])
            pos = _put_time(out, pos, source[k], style[k], True, suffix, suffix_len)
            pos = _put_bytes(out, pos, lit, lit_off[6], lit_off[7])
            pos = _put_padded(out, pos, score_e4[k], 4)
            pos = _put_bytes(out, pos, lit, lit_off[7], lit_off[8])
            k += 1
        out[pos] = 93  # ]
        out[pos + 1] = 10
        pos += 2
    return pos


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


# --------------------------------------------------------------------------- bad events


def _iso_z(ms: int) -> str:
    """One epoch-ms instant as RFC 3339 UTC with ``Z``."""
    return str(_format_times(np.array([ms]), np.array([0]))[0])


def _base_event(rng: np.random.Generator, seq: int, world: _World) -> dict[str, Any]:
    """A fully populated valid event (every optional field), to be broken one way."""
    ts = DEFAULT_START_MS + int(rng.integers(0, _DAY_MS))
    vector = world.sample(np.array([int(rng.integers(0, _N_BASE))]), rng)
    return {
        "schema_version": 1,
        "event_id": f"bad-{seq:04d}-{rng.bytes(4).hex()}",
        "ts": _iso_z(ts),
        "tenant_id": "acme",
        "app": "doc-qa",
        "model": "gpt-4o-mini",
        "provider": "openai",
        "served_model": "gpt-4o-mini-2024-07-18",
        "usage": {
            "input_tokens": 1200,
            "output_tokens": 300,
            "cache_read_tokens": 512,
            "cache_write_tokens": 0,
            "reasoning_tokens": 0,
        },
        "status": "ok",
        "latency_ms": 812.5,
        "ttft_ms": 240.0,
        "prompt_id": "doc-qa/answer",
        "prompt_version": "v3",
        "route": {"tier": "small", "escalated": False},
        "context_window": 128000,
        "embedding": _b64_rows(vector)[0],
        "embedding_model": "text-embedding-3-small",
        "retrieval": {
            "index_version": "doc-qa-kb-v7",
            "chunks": [
                {
                    "chunk_id": f"doc-qa-doc-{k:05d}#0",
                    "doc_id": f"doc-qa-doc-{k:05d}",
                    "embedded_at": _iso_z(ts - 3 * _DAY_MS),
                    "source_updated_at": _iso_z(ts - 9 * _DAY_MS),
                    "score": round(0.9 - 0.1 * k, 2),
                }
                for k in range(3)
            ],
        },
    }


def generate_bad_events(seed: int = 0) -> list[tuple[bytes, str]]:
    """Events that must be rejected, each broken exactly one way, with the expected reason
    code (a key of :data:`REJECT_REASONS`). Every code appears at least once."""
    rng = np.random.default_rng([seed, 0xBAD])
    world = _World(0, 384, "text-embedding-3-small")
    cases: list[tuple[bytes, str]] = []
    seq = 0

    def base() -> dict[str, Any]:
        nonlocal seq
        seq += 1
        return _base_event(rng, seq, world)

    def mutated(reason: str, path: str, value: Any = ..., *, delete: bool = False) -> None:
        """Set (or delete) a dotted path of a fresh base event and record the case."""
        ev = base()
        *parents, leaf = path.split(".")
        node = ev
        for key in parents:
            node = node[key]
        if delete:
            del node[leaf]
        else:
            node[leaf] = value
        cases.append((orjson.dumps(ev), reason))

    # invalid_json
    good = orjson.dumps(base())
    cases.append((good[: len(good) // 2], "invalid_json"))  # truncated
    cases.append((b"not json at all", "invalid_json"))
    cases.append((good + b" trailing", "invalid_json"))
    cases.append((b"", "invalid_json"))
    cases.append((b"[" + orjson.dumps(base()) + b"]", "invalid_json"))  # not an object
    cases.append((orjson.dumps(base()).replace(b'"status":"ok"', b'"status":ok'), "invalid_json"))

    # invalid_utf8: well-formed JSON structure, bytes that are not UTF-8 inside strings.
    raw = orjson.dumps(base())
    cases.append((raw.replace(b'"app":"doc-qa"', b'"app":"doc-\xff\xfeqa"'), "invalid_utf8"))
    raw = orjson.dumps(base())
    cases.append(
        (raw.replace(b'"tenant_id":"acme"', b'"tenant_id":"ac\xc3\x28me"'), "invalid_utf8")
    )

    # missing_field
    for path in ("event_id", "ts", "tenant_id", "model", "usage", "usage.input_tokens",
                 "usage.output_tokens"):  # fmt: skip
        mutated("missing_field", path, delete=True)

    # wrong_type
    mutated("wrong_type", "usage.input_tokens", "1200")
    mutated("wrong_type", "usage.output_tokens", 300.5)
    mutated("wrong_type", "tenant_id", 42)
    mutated("wrong_type", "model", ["gpt-4o-mini"])
    mutated("wrong_type", "usage", [1200, 300])
    mutated("wrong_type", "latency_ms", "812ms")
    mutated("wrong_type", "route", "small")
    mutated("wrong_type", "ts", True)  # neither a string nor an integer

    # negative_tokens (subsets dropped where a negative total would also break them)
    mutated("negative_tokens", "usage", {"input_tokens": -7, "output_tokens": 300})
    mutated("negative_tokens", "usage", {"input_tokens": 1200, "output_tokens": -1})
    mutated("negative_tokens", "usage.cache_read_tokens", -int(rng.integers(1, 500)))
    mutated("negative_tokens", "usage.reasoning_tokens", -int(rng.integers(1, 500)))

    # inconsistent_tokens
    mutated("inconsistent_tokens", "usage.cache_read_tokens", 1201)
    ev = base()
    ev["usage"].update(cache_read_tokens=800, cache_write_tokens=600)  # 1400 > 1200
    cases.append((orjson.dumps(ev), "inconsistent_tokens"))
    mutated("inconsistent_tokens", "usage.reasoning_tokens", 301)

    # bad_embedding
    mutated("bad_embedding", "embedding", "@@not*base64@@")
    ev = base()
    ev["embedding"] = ev["embedding"][:-8]  # cut mid-way: invalid length/padding
    cases.append((orjson.dumps(ev), "bad_embedding"))
    # valid base64 of 1537 bytes: not a whole number of float32
    mutated("bad_embedding", "embedding", base64.b64encode(bytes(1537)).decode())
    mutated("bad_embedding", "embedding", [0.1, "x", 0.3])

    # embedding_not_finite: float32 NaN / inf bytes in base64, and a JSON array with a number
    # that overflows float32 (JSON has no NaN literal).
    for bad_value in (np.nan, np.inf, -np.inf):
        vec = world.sample(np.array([0]), rng)[0]
        vec[int(rng.integers(0, 384))] = bad_value
        mutated("embedding_not_finite", "embedding", _b64_rows(vec[None, :])[0])
    vec_list = world.sample(np.array([1]), rng)[0].tolist()
    vec_list[7] = 1e39
    mutated("embedding_not_finite", "embedding", vec_list)

    # too_large
    mutated("too_large", "notes", "x" * (MAX_MESSAGE_BYTES + 1024))

    # bad_timestamp
    mutated("bad_timestamp", "ts", "1970-01-01T00:00:01Z")
    mutated("bad_timestamp", "ts", "2200-01-01T00:00:00Z")
    mutated("bad_timestamp", "ts", DEFAULT_START_MS // 1000)  # epoch seconds, not ms
    mutated("bad_timestamp", "ts", 7_258_118_400_000)  # 2200-01-01 in ms
    mutated("bad_timestamp", "ts", "yesterday at noon")
    mutated("bad_timestamp", "ts", "2026-11-01T10:00:00")  # no offset
    # ts_in_future: a valid instant, but beyond the wall clock plus the allowed skew
    mutated("ts_in_future", "ts", "2099-01-01T00:00:00Z")

    # invalid_value
    mutated("invalid_value", "status", "success")
    mutated("invalid_value", "event_id", "e" * 129)
    mutated("invalid_value", "tenant_id", "t" * 129)
    mutated("invalid_value", "tenant_id", "")
    mutated("invalid_value", "latency_ms", -5.0)
    return cases
