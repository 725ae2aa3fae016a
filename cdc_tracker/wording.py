"""Small helpers for what cdc-tracker says to people."""

from __future__ import annotations


def counted(number: int, noun: str, plural: str = "") -> str:
    """``1 row``, ``2 rows``, ``1,234 rows``: a count and its noun, singular for one
    (``plural`` when adding an s will not do: ``batches``)."""
    return f"{number:,} {noun if number == 1 else plural or noun + 's'}"
