-- llmops-stream ClickHouse schema. Applied at start, idempotently (CREATE ... IF NOT EXISTS);
-- statements are separated by lines holding only ';'. {db} is replaced by the database name.
--
-- Exactness: every insert carries a deterministic insert_deduplication_token, so a batch
-- written twice (retry, crash before the offset commit) is stored once. Plain MergeTree keeps
-- that deduplication (non_replicated_deduplication_window) and keeps sums exact; dashboards
-- and `report` aggregate with sum() ... GROUP BY.

CREATE TABLE IF NOT EXISTS {db}.llm_calls
(
    event_id            String,
    ts                  DateTime64(3, 'UTC'),
    tenant_id           LowCardinality(String),
    app                 LowCardinality(String),
    provider            LowCardinality(String),
    model               LowCardinality(String),
    served_model        LowCardinality(String),
    model_mismatch      UInt8,
    prompt_id           LowCardinality(String),
    prompt_version      LowCardinality(String),
    status              LowCardinality(String),
    route_tier          LowCardinality(String),
    route_escalated     UInt8,
    input_tokens        UInt64,
    output_tokens       UInt64,
    cache_read_tokens   UInt64,
    cache_write_tokens  UInt64,
    reasoning_tokens    UInt64,
    cost_usd            Float64,
    unpriced            UInt8,
    latency_ms          Float32,   -- NaN when the event had none
    ttft_ms             Float32,   -- NaN when the event had none
    context_window      UInt32,    -- 0 when unknown
    embedding_model     LowCardinality(String),
    eval_set_version    LowCardinality(String),
    scored              UInt8,
    uncovered           UInt8,
    centroid_sim        Float32,   -- NaN when not scored
    nn_sim              Float32,   -- NaN when not scored
    index_version       LowCardinality(String),
    retrieval_chunks    UInt16,
    stale_chunks        UInt16,
    outdated_chunks     UInt16,
    stale               UInt8,
    source              LowCardinality(String),  -- topic name, or file for replay
    kafka_partition     Int32,
    kafka_offset        Int64,
    ingested_at         DateTime64(3, 'UTC')
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (tenant_id, ts, event_id)
SETTINGS non_replicated_deduplication_window = 100000
;
CREATE TABLE IF NOT EXISTS {db}.llm_usage_1m
(
    minute              DateTime('UTC'),
    tenant_id           LowCardinality(String),
    app                 LowCardinality(String),
    model               LowCardinality(String),
    prompt_version      LowCardinality(String),
    index_version       LowCardinality(String),
    calls               UInt64,
    errors              UInt64,
    rate_limited        UInt64,
    timeouts            UInt64,
    cache_hits          UInt64,
    unpriced            UInt64,
    model_mismatch      UInt64,
    escalated           UInt64,
    input_tokens        UInt64,
    output_tokens       UInt64,
    cache_read_tokens   UInt64,
    cache_write_tokens  UInt64,
    reasoning_tokens    UInt64,
    cost_usd            Float64,
    latency_hist        Array(UInt64),  -- counts per bin of stream/histograms.py (merge: sumForEach)
    scored              UInt64,
    uncovered           UInt64,
    retrieval_calls     UInt64,
    stale_calls         UInt64,
    stale_chunks        UInt64,
    outdated_chunks     UInt64,
    stale_lag_hist      Array(UInt64),  -- ts - source_updated_at of outdated chunks, ms bins
    duplicates          UInt64          -- repeats of an event_id within the dedup horizon
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (tenant_id, minute, app, model, prompt_version, index_version)
SETTINGS non_replicated_deduplication_window = 100000
;
-- One row per (tenant, budget) for sliding windows (period = ''), one per calendar period
-- ('2026-11-29' for day, '2026-11' for month): the previous period stays readable, late
-- events included. as_of is the stream clock the state is at.
CREATE TABLE IF NOT EXISTS {db}.llm_budget_state
(
    tenant_id       LowCardinality(String),
    budget_id       String,
    window          LowCardinality(String),
    period          LowCardinality(String),
    limit_usd       Float64,
    spend_usd       Float64,
    remaining_usd   Float64,
    status          LowCardinality(String),
    as_of           DateTime64(3, 'UTC'),
    period_start    DateTime64(3, 'UTC'),
    updated_at      DateTime64(3, 'UTC'),
    version         UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (tenant_id, budget_id, period)
SETTINGS non_replicated_deduplication_window = 100000
;
-- Every alert message: (alert_id, status) is one message, 'firing' then 'resolved'.
CREATE TABLE IF NOT EXISTS {db}.llm_alerts
(
    alert_id        String,
    status          LowCardinality(String),
    type            LowCardinality(String),
    severity        LowCardinality(String),
    tenant_id       LowCardinality(String),
    app             LowCardinality(String),
    metric          LowCardinality(String),
    value           Float64,
    threshold       Float64,
    window_start    DateTime64(3, 'UTC'),
    window_end      DateTime64(3, 'UTC'),
    emitted_at      DateTime64(3, 'UTC'),
    details         String   -- JSON object
)
ENGINE = ReplacingMergeTree
ORDER BY (alert_id, status)
SETTINGS non_replicated_deduplication_window = 100000
;
CREATE TABLE IF NOT EXISTS {db}.llm_rejected
(
    received_at     DateTime64(3, 'UTC'),
    reason          LowCardinality(String),
    detail          String,
    tenant_id       String,   -- empty when the event was unreadable
    event_id        String,
    source          LowCardinality(String),
    kafka_partition Int32,
    kafka_offset    Int64,
    raw             String    -- the original bytes, unchanged
)
ENGINE = MergeTree
ORDER BY (reason, received_at)
SETTINGS non_replicated_deduplication_window = 100000
;
CREATE TABLE IF NOT EXISTS {db}.llm_eval_candidates
(
    event_id         String,
    ts               DateTime64(3, 'UTC'),
    tenant_id        LowCardinality(String),
    app              LowCardinality(String),
    embedding_model  LowCardinality(String),
    eval_set_version LowCardinality(String),
    nn_sim           Float32,
    centroid_sim     Float32,
    nearest_eval_id  String,
    embedding        Array(Float32)
)
ENGINE = ReplacingMergeTree
ORDER BY (embedding_model, event_id)
SETTINGS non_replicated_deduplication_window = 100000
;
-- Worker bookkeeping. A segment is the offset range [start_offset, end_offset) of one
-- partition written by one flush; it is recorded before the data, so that a flush
-- interrupted by a crash is redone over exactly the same range (same deduplication tokens).
--
-- Bounded by a rollup TTL: on merges, the rows of a partition older than 7 days become one
-- row (per part), the newest of them (greatest start_offset, its end_offset). A segment row
-- is read only right after its insert (the claim is read back) and when its partition is
-- assigned, at the committed offset. At most one segment per partition is claimed and not
-- committed (flushes never overlap): the one starting at the committed offset, which is
-- then the partition's newest row. The rollup keeps it however long the partition stays
-- unowned after a crash (a plain DELETE TTL would drop it: the segment would then be redone
-- over another range, counting twice the rows the interrupted flush had already written).
-- Every older row is history, never read. toDateTime(): ClickHouse < 25.7 refuses a
-- DateTime64 TTL.
CREATE TABLE IF NOT EXISTS {db}.llm_segments
(
    group_id        String,
    topic           String,
    partition       Int32,
    start_offset    Int64,
    end_offset      Int64,
    created_at      DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (group_id, topic, partition, start_offset)
TTL toDateTime(created_at) + toIntervalDay(7) GROUP BY group_id, topic, partition SET start_offset = max(start_offset), end_offset = argMax(end_offset, start_offset), created_at = max(created_at)
SETTINGS non_replicated_deduplication_window = 100000
;
-- Engine state (dedup, budgets, windows) of one partition as of `offset` (the next offset
-- to process), written periodically after the offsets up to there were committed.
--
-- Bounded by a rollup TTL: on merges, the checkpoints of a partition older than 1 day
-- become one row (per part), the newest of them (greatest offset, its state). The worker
-- reads only the newest checkpoint at or before the committed offset; checkpoints are
-- written at committed offsets, every checkpoint_interval_s (30 s) while the partition
-- moves, so that is the partition's newest row, which the rollup keeps however long the
-- partition stays idle. (A plain DELETE TTL would drop an idle partition's only checkpoint:
-- the partition would be replayed from the topic's earliest retained offset, and the spend
-- its open 30d/month budgets owe to events the topic's retention had already dropped would
-- be lost.) The day of full history (a snapshot can weigh hundreds of KB) serves consumer
-- offsets reset backwards by up to a day; a reset further back than the rolled-up row
-- replays from the partition's beginning.
CREATE TABLE IF NOT EXISTS {db}.llm_engine_state
(
    group_id        String,
    topic           String,
    partition       Int32,
    offset          Int64,
    state           String,   -- base64 of the engine snapshot
    created_at      DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (group_id, topic, partition, offset)
TTL toDateTime(created_at) + toIntervalDay(1) GROUP BY group_id, topic, partition SET offset = max(offset), state = argMax(state, offset), created_at = max(created_at)
SETTINGS non_replicated_deduplication_window = 100000
;
-- The same TTLs for tables created before them (CREATE ... IF NOT EXISTS leaves an existing
-- table as it is). apply_schema skips an ALTER ... MODIFY TTL when the table already has
-- exactly this TTL, so keep each one identical to its CREATE's and written the way ClickHouse
-- prints it (SHOW CREATE TABLE); an ALTER that runs anyway is harmless (idempotent). The
-- aggregates of a SET take plain columns only: an expression there is accepted by CREATE and
-- ALTER but makes every later merge of the table fail.
ALTER TABLE {db}.llm_segments MODIFY TTL toDateTime(created_at) + toIntervalDay(7) GROUP BY group_id, topic, partition SET start_offset = max(start_offset), end_offset = argMax(end_offset, start_offset), created_at = max(created_at)
;
ALTER TABLE {db}.llm_engine_state MODIFY TTL toDateTime(created_at) + toIntervalDay(1) GROUP BY group_id, topic, partition SET offset = max(offset), state = argMax(state, offset), created_at = max(created_at)
