"""File adapter: JSONL replay through the engine into a sink, no Kafka."""
