"""ClickHouse adapter: the sink the engine's outputs are written to, and report queries."""
