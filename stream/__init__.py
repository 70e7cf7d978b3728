"""The llmops-stream engine: decode, pricing, budgets, drift, freshness, aggregation,
sources and sinks, the worker and the CLI.

The engine is pure: it takes columnar micro-batches (numpy arrays) and returns results.
Kafka, ClickHouse and files are thin adapters around it.
"""
