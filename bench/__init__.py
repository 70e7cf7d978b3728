"""Benchmarks (run as scripts: ``python bench/engine.py``)."""
