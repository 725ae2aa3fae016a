"""``cdc-tracker check`` and the help texts, run as the real console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from psycopg.conninfo import make_conninfo

from tests.harness import cli_main, sql

CLI = Path(sys.executable).parent / "cdc-tracker"

BROKEN = """\
version: 1
tables:
  public.merchants:
    user_id: id
track:
  - table: merchants
    on: insert
  - event: Plan Changed
    table: merchants
    on: upsert
"""


def cdc_tracker(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_of_the_example_exits_0_with_a_summary(example_rulebook: Path) -> None:
    done = cdc_tracker("check", example_rulebook)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"{example_rulebook}: ok (structure and expressions): 2 tables, 5 rules\n"
    )


def test_check_of_a_broken_rulebook_exits_2_with_file_and_line(
    tmp_path: Path,
) -> None:
    """Every problem is one ``file:line: message`` line on stderr; stdout is empty."""
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    done = cdc_tracker("check", path)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines == [
        f"{path}:6: a track rule needs 'event': a non-empty name",
        f"{path}:10: 'on' takes insert, update and delete; got upsert",
    ]


def test_check_and_docs_take_the_rulebook_as_run_does(
    example_rulebook: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ok = f"{example_rulebook}: ok (structure and expressions): 2 tables, 5 rules\n"
    assert cli_main(["check", "--rulebook", str(example_rulebook)]) == 0
    assert capsys.readouterr().out == ok
    monkeypatch.setenv("CDC_TRACKER_RULEBOOK", str(example_rulebook))
    assert cli_main(["check"]) == 0
    assert capsys.readouterr().out == ok
    assert cli_main(["docs"]) == 0
    assert capsys.readouterr().out.startswith("# Tracking plan")

    assert cli_main(["check", "a.yaml", "--rulebook", "b.yaml"]) == 2
    assert "two rulebooks given, a.yaml and b.yaml" in capsys.readouterr().err
    monkeypatch.delenv("CDC_TRACKER_RULEBOOK")
    monkeypatch.chdir(tmp_path)
    assert cli_main(["check"]) == 2
    assert "config/rulebook.yaml: cannot read rulebook" in capsys.readouterr().err
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"rulebook: {example_rulebook}\n")
    assert cli_main(["check", "--config", str(settings)]) == 0
    assert capsys.readouterr().out == ok


def test_check_of_a_missing_file_exits_2(tmp_path: Path) -> None:
    done = cdc_tracker("check", tmp_path / "absent.yaml")
    assert done.returncode == 2
    assert "absent.yaml: cannot read rulebook" in done.stderr


def test_check_with_dsn_of_the_example_schema_exits_0(
    db: str, example_rulebook: Path
) -> None:
    done = cdc_tracker("check", example_rulebook, "--dsn", db)
    assert done.returncode == 0, done.stderr
    assert "ok (structure, expressions and the live schema): 2 tables, 5 rules" in (
        done.stdout
    )


def test_check_with_dsn_names_the_missing_column(
    db: str, example_rulebook: Path
) -> None:
    """The example against a schema lacking one column: exit 2, file:line, column."""
    sql(db, "alter table merchants drop column xero_connection_ok")
    done = cdc_tracker("check", example_rulebook, "--dsn", db)
    assert done.returncode == 2
    assert done.stdout == ""
    problems = done.stderr.splitlines()
    assert problems
    assert all(line.startswith(f"{example_rulebook}:") for line in problems)
    assert any(
        "traits.xero_connection_ok: unknown column 'xero_connection_ok'" in line
        for line in problems
    )
    assert any("when: unknown column 'xero_connection_ok'" in line for line in problems)


def test_check_with_dsn_refuses_ordering_types_by_their_text(
    db: str, tmp_path: Path
) -> None:
    """An enum, an interval or a time of day would be compared as the text
    PostgreSQL prints: '<' on one is refused; on text, and == on any, is not."""
    sql(
        db,
        "create type tier as enum ('free', 'pro', 'enterprise')",
        "create table plans (id int primary key, name text, tier tier,"
        " trial interval, opens time, code varchar(8), other int)",
    )
    path = tmp_path / "rulebook.yaml"
    path.write_text(
        "version: 1\ntables:\n  plans:\n    user_id: id\n    lookups:\n"
        "      peer: {table: plans, key: {id: other}}\ntrack:\n"
        "  - event: Big\n    table: plans\n    on: insert\n"
        "    when: tier >= 'pro'\n"
        "  - event: Long\n    table: plans\n    on: insert\n"
        "    when: \"'P1D' < trial\"\n"
        "  - event: Late\n    table: plans\n    on: insert\n"
        "    when: opens > '09:00'\n"
        "  - event: Fine\n    table: plans\n    on: insert\n"
        "    when: tier == 'pro' and name < 'm' and code >= 'A'"
        " and opens in ('10:00:00') and peer.name > 'a'\n"
        "  - event: Through\n    table: plans\n    on: insert\n"
        "    when: peer.tier >= 'pro'\n"
        "  - event: Merged\n    table: plans\n    on: insert\n"
        "    when: coalesce(name, tier) > 'free'\n"
    )
    done = cdc_tracker("check", path, "--dsn", db)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert [line.split(": ")[0] for line in lines] == [
        f"{path}:11",
        f"{path}:15",
        f"{path}:19",
        f"{path}:27",
        f"{path}:31",
    ], lines
    assert "'>=' would order column 'tier'" in lines[0]
    assert "by the text PostgreSQL prints" in lines[0]
    assert "compare it with == or in (...)" in lines[0]
    assert "'>=' would order column 'peer.tier'" in lines[3]
    assert "'>' would order column 'tier'" in lines[4]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(
            ["--help"], ["exit codes:", "  2    bad usage", "run", "check"], id="top"
        ),
        pytest.param(
            ["run", "--help"],
            ["exit codes:", "examples:", "cdc-tracker run --dry-run", "--dsn"],
            id="run",
        ),
        pytest.param(
            ["check", "--help"],
            ["exit codes:", "examples:", "cdc-tracker check config/rulebook.yaml"],
            id="check",
        ),
    ],
)
def test_help_shows_exit_codes_and_examples(
    args: list[str], expected: list[str]
) -> None:
    done = cdc_tracker(*args)
    assert done.returncode == 0
    for text in expected:
        assert text in done.stdout


def test_no_command_prints_help_and_exits_2() -> None:
    done = cdc_tracker()
    assert done.returncode == 2
    assert "commands:" in done.stdout


def test_check_with_dsn_notes_a_cursor_replay_would_refuse(
    db: str, example_rulebook: Path, tmp_path: Path
) -> None:
    rulebook = tmp_path / "rulebook.yaml"
    rulebook.write_text(
        example_rulebook.read_text().replace("cursor: created_at", "cursor: amount")
    )
    done = cdc_tracker("check", rulebook, "--dsn", db)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:] == [
        f"{rulebook}:8: note: cursor column 'amount' of public.payouts is "
        "numeric(12,2), not a timestamp: 'replay' will refuse this table"
    ]


def test_check_with_dsn_notes_a_table_without_a_primary_key(
    db: str, tmp_path: Path
) -> None:
    """The daemon reads it (FULL identity), names its inserts by position;
    replay, which pages by the key, would refuse it: check says so first."""
    sql(
        db,
        "create table visits (shop text, seen_at timestamptz default now())",
        "alter table visits replica identity full",
    )
    rulebook = tmp_path / "rulebook.yaml"
    rulebook.write_text(
        "version: 1\n"
        "tables:\n"
        "  public.visits:\n"
        "    user_id: shop\n"
        "    cursor: seen_at\n"
        "track:\n"
        "  - event: Visited\n"
        "    table: visits\n"
        "    on: [insert, update]\n"
    )
    done = cdc_tracker("check", rulebook, "--dsn", db)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1:] == [
        f"{rulebook}:3: note: public.visits has no primary key: 'replay' will "
        "refuse this table (it pages by one), and its insert calls are named by "
        "WAL position"
    ]


def test_check_with_dsn_notes_a_tracked_table_the_role_may_not_read(
    db: str, example_rulebook: Path
) -> None:
    """The daemon reads changes from the slot, not the table; replay pages the
    table itself and would be refused: check says so, with the grant."""
    sql(
        db,
        "create role check_tracker login",
        "grant select on merchants to check_tracker",
    )
    try:
        done = cdc_tracker(
            "check", example_rulebook, "--dsn", make_conninfo(db, user="check_tracker")
        )
    finally:
        sql(db, "drop owned by check_tracker", "drop role check_tracker")
    assert done.returncode == 0, done.stderr
    line = next(
        n
        for n, text in enumerate(example_rulebook.read_text().splitlines(), 1)
        if text.strip() == "public.payouts:"
    )
    assert done.stdout.splitlines()[1:] == [
        f"{example_rulebook}:{line}: note: this role may not read public.payouts: "
        "'replay' will refuse this table; fix: "
        'GRANT SELECT ON public.payouts TO "check_tracker";'
    ]
