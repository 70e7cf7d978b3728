"""The event contract (JSON Schema) and the ClickHouse DDL, shipped as package data."""

from importlib.resources import files


def read_text(name: str) -> str:
    """Return the text of a schema file shipped in this package (e.g. ``clickhouse.sql``)."""
    return files(__name__).joinpath(name).read_text(encoding="utf-8")
