"""How findings add up and print."""

from __future__ import annotations

import orjson
import pytest

from cdc_tracker import compiled
from cdc_tracker.ops.doctor import Finding, exit_code, render_json, render_text
from cdc_tracker.ops.doctor.run import compiled_hot_path

PASS = Finding("pass", "wal_level", "logical")
WARN = Finding("warn", "slot", "not created yet", "nothing to do")
FAIL = Finding("fail", "write key", "refused", "check RUDDERSTACK_WRITE_KEY")


def test_exit_code_is_the_worst_status() -> None:
    assert exit_code([PASS]) == 0
    assert exit_code([PASS, WARN]) == 1
    assert exit_code([WARN, FAIL, PASS]) == 2


def test_text_has_one_line_per_check_and_a_fix_under_warnings_and_failures() -> None:
    lines = render_text([PASS, WARN, FAIL]).splitlines()

    assert lines[0].split() == ["pass", "wal_level", "logical"]
    assert lines[1].startswith("warn  slot ")
    assert lines[2].strip() == "fix: nothing to do"
    assert lines[3].startswith("fail  write key ")
    assert lines[4].strip() == "fix: check RUDDERSTACK_WRITE_KEY"
    assert lines[-1] == "1 passed, 1 warning, 1 failed"


def test_multi_line_details_are_indented_under_the_first() -> None:
    finding = Finding("fail", "rulebook schema", "a.yaml:3: one\na.yaml:9: two", "x")

    lines = render_text([finding]).splitlines()

    assert lines[1].strip() == "a.yaml:9: two"
    assert lines[1].index("a.yaml") == lines[0].index("a.yaml")


def test_json_carries_every_check_and_the_exit_code() -> None:
    document = orjson.loads(render_json([PASS, WARN]))

    assert document["exit_code"] == 1
    assert document["checks"][1] == {
        "status": "warn",
        "name": "slot",
        "detail": "not created yet",
        "fix": "nothing to do",
    }


def test_the_compiled_hot_path_passes_when_built_and_warns_when_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built = compiled_hot_path()
    monkeypatch.setattr(
        compiled, "MODULES", (*compiled.MODULES, "cdc_tracker.no_such_module")
    )
    missing = compiled_hot_path()

    assert built.status == "pass"
    assert missing.status == "warn"
    assert "cdc_tracker.no_such_module" in missing.detail
    assert "three times the CPU" in missing.detail
    assert missing.fix is not None
    assert "apt-get install gcc" in missing.fix
