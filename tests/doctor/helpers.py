"""Run the doctor against test servers and pick findings by name."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from cdc_tracker.ops.doctor import Finding, run_doctor
from cdc_tracker.settings import Settings
from cdc_tracker.testing.rudderstack import FakeRudderStack
from tests.harness import EXAMPLES, settings_for


def doctor_settings(dsn: str, receiver: FakeRudderStack, **extra: Any) -> Settings:
    return settings_for(dsn, receiver, EXAMPLES / "rulebook.yaml", **extra)


def findings(settings: Settings) -> dict[str, Finding]:
    """Every finding of one run, by check name (names are unique)."""
    found = run_doctor(settings)
    by_name = {finding.name: finding for finding in found}
    assert len(by_name) == len(found), "check names must be unique"
    return by_name


def with_rulebook(settings: Settings, path: Path, text: str) -> Settings:
    path.write_text(text)
    return replace(settings, rulebook=path)
