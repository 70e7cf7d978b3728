"""Kafka adapter: the worker (consumer group → engine → ClickHouse + topics), the output
records it publishes, and the producer apps use to send call events."""
