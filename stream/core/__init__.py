"""The pure engine: columnar micro-batches and a clock in, results out.

No I/O, no Kafka, no ClickHouse, no clock but the one it is given: decode, dedup, pricing,
budgets, drift, freshness, windows and per-minute aggregation.
"""
