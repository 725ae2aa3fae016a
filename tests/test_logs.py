"""Log lines: what libraries log comes out in our format too."""

from __future__ import annotations

import json
import logging

import pytest

from cdc_tracker import logs


def test_a_librarys_warning_is_a_json_line_like_ours(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure("json", "info")
    logs.configure("json", "info")  # configured again: still one line per record
    pool = logging.getLogger("psycopg.pool")

    pool.warning("error connecting in %r: %s", "pool-1", "connection refused")
    pool.info("below the library's level: not shown")

    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["event"] == "error connecting in 'pool-1': connection refused"
    assert (record["level"], record["logger"]) == ("warning", "psycopg.pool")
    assert record["timestamp"].endswith("Z")
