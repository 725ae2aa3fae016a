"""Benchmarks: cdc-tracker against PostgreSQL's own decoding speed (``./dev bench``)."""
