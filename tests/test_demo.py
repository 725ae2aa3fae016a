"""``cdc-tracker demo`` with a rulebook of one's own: refused early and cleanly."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from cdc_tracker import demo
from tests.harness import cli_main


def _must_not_start(*args: object, **kwargs: object) -> None:
    raise AssertionError("PostgreSQL was started for a rulebook that cannot be read")


def test_a_missing_rulebook_is_refused_before_postgres_starts(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(demo, "ThrowawayPostgres", _must_not_start)
    missing = tmp_path / "missing.yaml"

    assert cli_main(["demo", "--rulebook", str(missing)]) == 2

    captured = capsys.readouterr()
    assert f"{missing}: cannot read rulebook: No such file or directory" in (
        captured.err
    )
    assert "Traceback" not in captured.err
    assert "PostgreSQL" not in captured.out


def test_a_rulebook_that_does_not_fit_the_example_schema_exits_2_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The daemon's start-up refusal is told once, as file:line: problem."""
    rulebook = tmp_path / "bign.yaml"
    rulebook.write_text(
        "version: 1\n"
        "tables:\n"
        "  public.bign:\n"
        "    user_id: id\n"
        "identify:\n"
        "  - table: public.bign\n"
        "    traits:\n"
        "      name: name\n"
    )
    started = time.monotonic()

    assert cli_main(["demo", "--rulebook", str(rulebook)]) == 2

    assert time.monotonic() - started < 15  # the daemon's wait is 30 s
    err = capsys.readouterr().err
    problem = f"{rulebook}:3: table 'public.bign' does not exist"
    assert err.count(problem) == 1
    assert "Traceback" not in err
    assert "timed out" not in err


def test_demo_help_describes_the_rulebook_option(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        cli_main(["demo", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--rulebook PATH a rulebook to run instead of the example one" in help_text


class _DaemonFailingAtStop:
    """Runs until stopped, then fails as it stops (e.g. its last status lost)."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    def run(self) -> None:
        self.stop.wait(10)
        raise RuntimeError("could not send the last status")


def test_an_error_while_the_daemon_stops_fails_the_demo() -> None:
    stop = threading.Event()
    running = demo._Running(_DaemonFailingAtStop(stop))  # type: ignore[arg-type]
    stop.set()
    running.thread.join(timeout=10)
    with pytest.raises(RuntimeError, match="last status"):
        running.check_stopped()


def test_a_daemon_that_does_not_stop_fails_the_demo() -> None:
    stop = threading.Event()
    running = demo._Running(_DaemonFailingAtStop(stop))  # type: ignore[arg-type]
    with pytest.raises(TimeoutError, match="daemon to stop"):
        running.check_stopped()
    stop.set()
    running.thread.join(timeout=10)
