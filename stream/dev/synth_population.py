"""The setup of a synthetic run: its knobs, the model mix, the tenants and their apps.

Job
---
:class:`SynthConfig` holds the knobs of :func:`~llmops_stream.stream.dev.synth.generate_events`.
The model table gives real model ids priced by genai-prices (:data:`SYNTH_MODELS`) plus one
unknown model (:data:`UNKNOWN_MODEL`), with each model's provider, cache style, served
snapshots and speed. :func:`_build_population` draws the tenants (Zipf volumes) and their
1-4 apps (model mix, prompt and index versions, router) for one run.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import numpy as np

from llmops_stream.stream.core.errors import ConfigError

__all__ = ["DEFAULT_START_MS", "SYNTH_MODELS", "UNKNOWN_MODEL", "SynthConfig"]

DEFAULT_START_MS = 1_793_491_200_000
"""2026-11-01T00:00:00Z, the default event time of the first synthetic event."""

_DAY_MS = 86_400_000
_HOUR_MS = 3_600_000


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
